#!/usr/bin/env bash
# What make cluster needs from Debian (idempotent): containerd + runc (the node's runtime), the CNI
# plugins, iptables and conntrack (kube-proxy), and Docker + debootstrap (images are built here, as
# no registry is reachable). Go comes with the machine; every other component is built from its Go
# module by cluster/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in containerd:containerd runc:runc iptables:iptables conntrack:conntrack; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash scripts/tools/docker.sh >/dev/null
command -v go >/dev/null || { echo "install-deps: Go is not installed" >&2; exit 1; }
echo "cluster deps: $(containerd --version | cut -d' ' -f3), runc $(runc --version | sed -n 's/^runc version //p'), $(iptables --version), $(go version | cut -d' ' -f3)"
