#!/usr/bin/env bash
# cluster/netpol.sh start|stop|status: NetworkPolicy enforcement on the test cluster's node.
#
# The bridge CNI plugins carry pod traffic but enforce no NetworkPolicy. kube-network-policies
# (kubernetes-sigs; built from its Go module by cluster/build.sh, its image by cluster/images.sh, its
# DaemonSet in cluster/manifests/kube-network-policies.yaml) enforces it for any CNI: the first packet
# of every new connection goes to an NFQUEUE, it judges the packet against the NetworkPolicies
# (informers on pods, namespaces and policies) and accepts or drops it; the rest of an accepted flow
# passes in the kernel (conntrack).
#
# Its own nftables table cannot be loaded on this kernel: it has no nft `queue` expression (`nft add
# rule inet t c queue num 98` fails with "No such file or directory"), only the xtables NFQUEUE target
# (nfnetlink_queue, reached through nft_compat). So this script writes the hook with iptables instead,
# the same rules kube-network-policies would write, in the node's network namespace: in mangle
# POSTROUTING (after kube-proxy's DNAT, before its SNAT) established flows and connections opened by
# the node's root processes pass (the kubelet's probes, the API server's pod proxy, the test
# Prometheus: the NetworkPolicy API admits traffic from a pod's own node), and every other new
# connection from or to the pod range is queued. Its listener starts before the rule exists, and the
# rule has --queue-bypass, so nothing is dropped while kube-network-policies restarts; the verdicts are
# all its own.
#
# `make cluster` starts it, so every cluster test runs with the chart's policies enforced; the
# enforcement test (tests/cluster/test_networkpolicy_enforced.py) stops and restarts it to show that
# what the policies drop is reachable without them.
source "$(dirname "$0")/lib.sh"
CHAIN=CLASSIFIER-NETPOL
QUEUE=98  # the DaemonSet's --nfqueue-id
NETPOL_IMAGE="$NETPOL_IMAGE_REPO:$(module_version netpol sigs.k8s.io/kube-network-policies)"
export NETPOL_IMAGE NODE_IP APISERVER_PORT

ipt() { netx iptables -w 5 -t mangle "$@"; }
# Its NFQUEUE listener is bound (the kernel lists bound queues; it binds once its informers synced).
# shellcheck disable=SC2016 # an awk program
listening() { netx awk -v q="$QUEUE" '$1 == q { found = 1 } END { exit !found }' /proc/net/netfilter/nfnetlink_queue; }
gone() { [ -z "$(kc -n kube-system get pods -l k8s-app=kube-network-policies -o name)" ]; }

hook_add() {
  ipt -N "$CHAIN" 2>/dev/null || ipt -F "$CHAIN"
  ipt -A "$CHAIN" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  ipt -A "$CHAIN" -m owner --uid-owner 0 -j RETURN
  ipt -A "$CHAIN" -s "$POD_CIDR" -j NFQUEUE --queue-num "$QUEUE" --queue-bypass
  ipt -A "$CHAIN" -d "$POD_CIDR" -j NFQUEUE --queue-num "$QUEUE" --queue-bypass
  ipt -C POSTROUTING -j "$CHAIN" 2>/dev/null || ipt -I POSTROUTING 1 -j "$CHAIN"
}
hook_del() {
  while ipt -D POSTROUTING -j "$CHAIN" 2>/dev/null; do :; done
  ipt -F "$CHAIN" 2>/dev/null || true
  ipt -X "$CHAIN" 2>/dev/null || true
}

case ${1:-} in
  start)
    # shellcheck disable=SC2016 # envsubst's list of variables, not an expansion
    envsubst '$NETPOL_IMAGE $NODE_IP $APISERVER_PORT' < cluster/manifests/kube-network-policies.yaml \
      | kc apply --server-side --force-conflicts -f - >/dev/null
    kc -n kube-system rollout status daemonset/kube-network-policies --timeout=120s >/dev/null
    wait_until 60 "kube-network-policies listening (informers synced)" listening \
      || { kc -n kube-system logs -l k8s-app=kube-network-policies --tail=30 >&2 || true; exit 1; }
    hook_add
    log "NetworkPolicy enforced: kube-network-policies judges new pod connections (NFQUEUE $QUEUE)" ;;
  stop)
    hook_del
    kc -n kube-system delete daemonset kube-network-policies --ignore-not-found >/dev/null
    wait_until 120 "kube-network-policies stopped" gone \
      || { kc -n kube-system get pods -l k8s-app=kube-network-policies >&2; exit 1; }
    log "NetworkPolicy enforcement stopped" ;;
  status)
    # The hook is in place and its listener bound (no `| grep -q`: it can kill the writer, see listening).
    if ipt -C "$CHAIN" -d "$POD_CIDR" -j NFQUEUE --queue-num "$QUEUE" --queue-bypass 2>/dev/null && listening; then
      echo "NetworkPolicy enforced (kube-network-policies)"
    else echo "NetworkPolicy not enforced"; exit 1; fi ;;
  *) die "usage: cluster/netpol.sh start|stop|status" ;;
esac
