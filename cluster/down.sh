#!/usr/bin/env bash
# make cluster-down: stop what cluster/up.sh started, by the pids it recorded, and remove the
# cluster's state: pods (through the kubelet, so CNI releases their network namespaces), mounts under
# .cluster, the kubelet's cgroups, the node's network namespace (its veth pair, bridge and iptables
# rules go with it) and the host's unreachable routes. Logs stay in .cluster/logs; the binary and
# image caches stay too (`make cluster-clean` removes them). Safe to run when nothing is up.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "needs root"

# 1. Pods: no controller may replace them, then the kubelet stops them and tears their sandboxes down.
daemon_stop kube-controller-manager
daemon_stop kube-scheduler
if pid_of kube-apiserver >/dev/null && pid_of kubelet >/dev/null && [ -f "$KUBECONFIG_ADMIN" ]; then
  kc delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  wait_until 120 "the kubelet to stop every pod" sh -c \
    "[ -z \"\$(ctr --address '$CONTAINERD_SOCK' -n k8s.io tasks ls -q 2>/dev/null)\" ]" || true
fi
daemon_stop kube-proxy
daemon_stop kubelet

# 2. Whatever is still running in containerd (a kubelet that was already gone): kill, remove.
if pid_of containerd >/dev/null; then
  for task in $(ctr_node tasks ls -q 2>/dev/null); do
    ctr_node tasks kill -s KILL "$task" >/dev/null 2>&1 || true
  done
  sleep 1
  for task in $(ctr_node tasks ls -q 2>/dev/null); do ctr_node tasks rm -f "$task" >/dev/null 2>&1 || true; done
  for c in $(ctr_node containers ls -q 2>/dev/null); do ctr_node containers rm "$c" >/dev/null 2>&1 || true; done
fi
daemon_stop containerd 30
daemon_stop kube-apiserver
daemon_stop etcd

# 3. Pod network namespaces CNI did not get to release (they did not exist before containerd ran).
if [ -d /run/netns ]; then
  for ns in /run/netns/cni-*; do
    [ -e "$ns" ] || continue
    grep -qxF "$(basename "$ns")" "$STATE/run/netns-before" 2>/dev/null && continue
    ip netns delete "$(basename "$ns")" 2>/dev/null && log "removed leftover pod namespace $(basename "$ns")"
  done
fi

# 4. Mounts under the state directory and the image store (kubelet volumes, container root
# filesystems), deepest first.
findmnt -rn -o TARGET | awk -v s="$STATE/" -v c="$CONTAINERD_ROOT/" \
  'index($0, s) == 1 || index($0, c) == 1' | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m" && log "unmounted $m"
done

# 5. The kubelet's cgroups (QoS classes and pods), deepest first; they are empty once pods stopped.
for controller in /sys/fs/cgroup/*/; do
  [ -d "$controller/kubepods" ] || continue
  find "$controller/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || \
    log "could not remove every cgroup under $controller/kubepods"
done

# 6. Network: the node namespace (with the veth pair, the pod bridge and kube-proxy's rules) and
# the host's routes.
if [ -e "/run/netns/$NETNS" ]; then ip netns delete "$NETNS" && log "removed network namespace $NETNS"; fi
for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do
  ip route del unreachable "$cidr" 2>/dev/null && log "removed host route unreachable $cidr"
done
if [ -f "$STATE/run/made-run-netns-mount" ] && mountpoint -q /run/netns && [ -z "$(ls -A /run/netns)" ]; then
  umount /run/netns && rmdir /run/netns && log "removed /run/netns (created by make cluster)"
fi

# 7. State, but the logs.
if [ -d "$STATE" ]; then
  find "$STATE" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
fi
log "cluster down (logs kept in $LOGS)"
