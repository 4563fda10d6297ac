#!/usr/bin/env bash
# Install checkov (IaC scanner) into its own venv, .tools/checkov-venv, linked as .tools/bin/checkov
# (idempotent). A separate venv because checkov's dependency tree conflicts with the serving stack's pins.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=3.3.30
VENV=.tools/checkov-venv
PYTHON=${PYTHON:-python3}
if [ -x .tools/bin/checkov ] && [ "$(.tools/bin/checkov --version 2>/dev/null)" = "$VERSION" ]; then
  echo "checkov: $VERSION already installed"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "checkov==$VERSION"
mkdir -p .tools/bin
ln -sf "../checkov-venv/bin/checkov" .tools/bin/checkov
echo "checkov: $(.tools/bin/checkov --version) installed"
