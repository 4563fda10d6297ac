#!/usr/bin/env bash
# Install shellcheck (Debian package) for tests/deploy/test_k8s_scripts.py (idempotent).
set -euo pipefail
if command -v shellcheck >/dev/null; then
  echo "shellcheck: $(shellcheck --version | awk '/^version:/{print $2}') already installed"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends shellcheck >/dev/null
echo "shellcheck: $(shellcheck --version | awk '/^version:/{print $2}') installed"
