#!/usr/bin/env bash
# Install KServe's Python client into its own venv, .tools/kserve-client (idempotent), for the test that
# the Open Inference Protocol routes' errors read right in it (tests/serving/test_serving_oip.py). Its
# own venv because kserve 0.21.0 requires psutil<6 and the test venv has psutil 7. Pinned by
# scripts/tools/kserve-client-constraints.txt; keyed by it, so a changed pin reinstalls.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.tools/kserve-client
CONSTRAINTS=scripts/tools/kserve-client-constraints.txt
KEY=$(sha256sum "$CONSTRAINTS" | cut -c1-16)
if [ "$(cat "$VENV/.installed" 2>/dev/null)" = "$KEY" ]; then
  echo "kserve client: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kserve"))' 2>/dev/null) already installed"
  exit 0
fi
PYTHON=${PYTHON:-python3}
rm -rf "$VENV" && "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip==24.3.1
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" kserve
echo "$KEY" > "$VENV/.installed"
echo "kserve client: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kserve"))') installed into $VENV"
