#!/usr/bin/env bash
# `make demo`: start the test cluster if it is not up (make cluster), run python -m bench.cluster_demo
# on it (deploy, steady load, 10x spike, rolling update, pod loss, scale-down, pictures; artifacts in
# artifacts/demo/), and stop the cluster again if this script started it. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
was_up=0
if [ -f .cluster/kubeconfig ] && .cluster/bin/kubectl --kubeconfig .cluster/kubeconfig get --raw /readyz >/dev/null 2>&1; then
  was_up=1
fi
bash cluster/install-deps.sh
bash cluster/up.sh
if [ "$was_up" = 0 ]; then trap 'bash cluster/down.sh' EXIT; fi
.venv/bin/python -m bench.cluster_demo "$@"
