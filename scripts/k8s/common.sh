# shellcheck shell=bash
# Shared by scripts/k8s/*.sh: repo root, pinned versions, tools (.tools/bin first).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=versions.env
source scripts/k8s/versions.env
export PATH="$ROOT/.tools/bin:$PATH"
need() { command -v "$1" >/dev/null || { echo "$0: '$1' not found ($2)" >&2; exit 1; }; }
