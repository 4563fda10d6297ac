# shellcheck shell=bash
# Shared by cluster/*.sh: paths, settings, daemons started and stopped by pid, waiting.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=cluster.env
source cluster/cluster.env

# Everything a running cluster owns lives under .cluster/ (git-ignored); make cluster-down removes it
# but for logs/. Built binaries and the node's image store are caches outside the repo, keyed by what
# built them, so a second clone or a fresh cluster on the same machine reuses them.
STATE=$ROOT/.cluster
CACHE=${CLUSTER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ray-serve-image-classifier/cluster}
BIN=$STATE/bin
LOGS=$STATE/logs
PIDS=$STATE/pids
PKI=$STATE/pki
ETC=$STATE/etc
KUBECONFIG_ADMIN=$STATE/kubeconfig
CONTAINERD_SOCK=$STATE/run/containerd/containerd.sock
# The node's image store: kept between clusters (importing the app image takes minutes), removed
# by `make cluster-clean`.
CONTAINERD_ROOT=$CACHE/containerd
SHARED_DIR=${SHARED_DIR:-$ROOT/../shared}
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"

log() { printf '%s cluster: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Run a command in the node's network namespace (only the network: mounts and cgroups stay shared,
# which the kubelet and containerd need; `ip netns exec` would give each its own mount namespace).
netx() { nsenter --net="/run/netns/$NETNS" -- "$@"; }

kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
ctr_node() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# The image reference the chart uses when no value overrides it: image.repository:appVersion.
chart_default_image() {
  local repo tag
  repo=$(sed -n '/^image:/,/^[^ #]/s/^  repository: *//p' kuberay/chart/values.yaml)
  tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' kuberay/chart/Chart.yaml)
  [ -n "$repo" ] && [ -n "$tag" ] || die "cannot read the chart's default image"
  echo "$repo:$tag"
}

# Module version of a dependency pinned in cluster/go/<dir>/go.mod.
module_version() { (cd "cluster/go/$1" && go list -m -f '{{.Version}}' "$2"); }
module_dir() { (cd "cluster/go/$1" && go mod download -json "$2" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'); }

# --- daemons, tracked by pid file; a pid only counts while /proc says it is still that binary ----
pid_of() {
  local f=$PIDS/$1.pid pid
  [ -f "$f" ] || return 1
  read -r pid _ < "$f"
  [ -d "/proc/$pid" ] || return 1
  grep -qF -- "$(sed -n 2p "$f")" "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

# daemon_start NAME [--host] CMD...: start CMD (in the node namespace unless --host) unless it runs.
daemon_start() {
  local name=$1; shift
  local where=node
  if [ "$1" = --host ]; then where=host; shift; fi
  if pid_of "$name" >/dev/null; then return 0; fi
  mkdir -p "$PIDS" "$LOGS"
  # The cluster's own daemons run ahead of the pods: on 2 cores, Ray pods loading models otherwise
  # starve the API server and the kubelet until the node's lease lapses and it turns NotReady (seen
  # here). A real node reserves CPU for them (systemReserved/kubeReserved cgroups); nice does it here.
  # Not containerd: its shims, and so every container, would inherit the priority.
  local priority=-10
  if [ "$name" = containerd ]; then priority=0; fi
  if [ "$where" = node ]; then
    setsid nsenter --net="/run/netns/$NETNS" -- nice -n "$priority" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  else
    setsid nice -n "$priority" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  fi
  printf '%s\n%s\n' "$!" "$1" > "$PIDS/$name.pid"
  log "started $name (pid $!)"
}

# daemon_stop NAME [SECONDS]: TERM, wait, then KILL; only the pid this cluster recorded.
daemon_stop() {
  local name=$1 wait=${2:-20} pid
  if pid=$(pid_of "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq "$((wait * 5))"); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    if [ -d "/proc/$pid" ]; then log "$name did not stop on TERM; KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid"
}

# wait_until SECONDS WHAT CMD...: poll CMD every second.
wait_until() {
  local limit=$1 what=$2; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$limit" ]; then
      log "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 1
  done
}

# write_config PATH < content: replace PATH only when the content differs, so a second `make cluster`
# leaves running daemons alone (kube-proxy exits when its configuration file is rewritten).
write_config() {
  local tmp; tmp=$(mktemp "$1.XXXXXX")
  cat > "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

# Seconds since the epoch with a decimal, for the timings the scripts print.
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
