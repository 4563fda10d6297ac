#!/usr/bin/env bash
# Start or stop a Docker daemon for the image stage: `dockerd.sh start` (idempotent: returns at once when
# the socket already answers) and `dockerd.sh stop` (stops only the daemon this script started, by the
# pid it recorded). No systemd here; logs go to $STATE/dockerd.log.
set -euo pipefail
STATE=${DOCKERD_STATE_DIR:-/tmp/ray-serve-image-dockerd}
DOCKER=${DOCKER:-/usr/bin/docker}
mkdir -p "$STATE"

answers() { timeout 10 "$DOCKER" version >/dev/null 2>&1; }

case "${1:-start}" in
  start)
    if answers; then echo "dockerd: already running"; exit 0; fi
    command -v dockerd >/dev/null || { echo "dockerd.sh: run scripts/tools/docker.sh first" >&2; exit 1; }
    # The image is run with --network host and built with --network host, so no bridge (and no
    # iptables rules) is needed; this also works in VMs whose kernel lacks bridge netfilter.
    setsid dockerd --bridge=none --iptables=false --ip-masq=false --storage-driver=overlay2 \
      >"$STATE/dockerd.log" 2>&1 < /dev/null &
    echo $! >"$STATE/dockerd.pid"
    for _ in $(seq 60); do
      if answers; then echo "dockerd: started (pid $(cat "$STATE/dockerd.pid"))"; exit 0; fi
      sleep 1
    done
    echo "dockerd did not answer within 60 s; log:" >&2
    tail -30 "$STATE/dockerd.log" >&2
    exit 1
    ;;
  stop)
    [ -f "$STATE/dockerd.pid" ] || { echo "dockerd: not started by this script"; exit 0; }
    pid=$(cat "$STATE/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    rm -f "$STATE/dockerd.pid"
    # dockerd leaves its default network namespace bind-mounted after it exits; with no daemon left,
    # nothing uses it.
    netns=/run/docker/netns/default
    if ! kill -0 "$pid" 2>/dev/null && ! pgrep -x dockerd >/dev/null && mountpoint -q "$netns"; then
      umount "$netns" && rm -f "$netns"
    fi
    echo "dockerd: stopped"
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
