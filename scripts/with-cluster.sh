#!/usr/bin/env bash
# Run a command on the test cluster: start the cluster if it is not up (make cluster), run the
# command, and stop the cluster again whatever the outcome (make cluster-down) if this script
# started it, so the machine is left as it was. A cluster that was already up is left running.
#   scripts/with-cluster.sh .venv/bin/python -m pytest -m cluster     (make test's cluster tier)
#   scripts/with-cluster.sh .venv/bin/python -m bench.cluster_demo    (make demo)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$#" -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
was_up=0
if [ -f .cluster/kubeconfig ] && .cluster/bin/kubectl --kubeconfig .cluster/kubeconfig get --raw /readyz >/dev/null 2>&1; then
  was_up=1
fi
bash cluster/install-deps.sh
# Armed before up.sh: a start that fails half-way (daemons up, add-ons not) is taken down too.
if [ "$was_up" = 0 ]; then trap 'bash cluster/down.sh' EXIT; fi
bash cluster/up.sh
"$@"
