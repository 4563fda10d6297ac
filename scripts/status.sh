#!/usr/bin/env bash
# Inspect the local `make run` from a second shell: Serve's status and the config it runs, and how to
# open the Ray dashboard. Ray 2.60 protects the local cluster that `serve run` starts with a token it
# writes to ~/.ray/auth_token, but its CLI sends that token only when RAY_AUTH_MODE=token is set (without
# it, `serve status` fails with "Authentication required"); this sets it. RAY_DASHBOARD_ADDRESS selects
# another cluster (default http://127.0.0.1:8265).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=token
address=${RAY_DASHBOARD_ADDRESS:-http://127.0.0.1:8265}
token_file=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "$token_file" ]; then
  echo "status: no Ray token in $token_file (or RAY_AUTH_TOKEN): start the classifier with make run first" >&2
  exit 1
fi
echo "== serve status ($address)"
.venv/bin/serve status -a "$address"
echo
echo "== serve config ($address)"
.venv/bin/serve config -a "$address"
echo
echo "== Ray dashboard: $address"
echo "It asks for the cluster's token; print it with: RAY_AUTH_MODE=token .venv/bin/ray get-auth-token"
echo "(the same token authenticates API calls: curl -H \"Authorization: Bearer \$TOKEN\" $address/api/serve/applications/)"
