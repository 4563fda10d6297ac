#!/usr/bin/env bash
# Install the non-Python tools the tests use (each script in scripts/tools/ is idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in scripts/tools/*.sh; do
  [ -e "$tool" ] || continue
  echo "--- $tool"
  bash "$tool"
done
