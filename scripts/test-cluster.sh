#!/usr/bin/env bash
# The cluster tier end to end, as `make test` runs it: start the test cluster (make cluster), run
# `pytest -m cluster` on it, and stop it again whatever the outcome (make cluster-down), so the
# machine is left as it was. A cluster that was already up is left running.
set -euo pipefail
cd "$(dirname "$0")/.."
was_up=0
if [ -f .cluster/kubeconfig ] && .cluster/bin/kubectl --kubeconfig .cluster/kubeconfig get --raw /readyz >/dev/null 2>&1; then
  was_up=1
fi
bash cluster/install-deps.sh
bash cluster/up.sh
if [ "$was_up" = 0 ]; then trap 'bash cluster/down.sh' EXIT; fi
.venv/bin/python -m pytest -m cluster "$@"
