#!/usr/bin/env bash
# Build a stand-in for the rayproject/ray base image when no container registry is reachable:
# Debian bookworm (debootstrap --variant=minbase from the apt mirror this machine uses) with Python 3.11,
# ca-certificates, wget (KubeRay 1.6 probes Ray worker pods with `bash -c "wget ... | grep success"`,
# as the official image allows), and a `ray` user uid 1000 / gid 100 with home /home/ray, as in the official image.
# Usage: base.sh [TAG]   (default ray-serve-base:bookworm-py311; reused when it already exists,
# unless REBUILD_BASE=1).
set -euo pipefail
TAG=${1:-ray-serve-base:bookworm-py311}
DOCKER=${DOCKER:-/usr/bin/docker}
SUITE=bookworm
# The mirror apt uses here (deb822 or one-line sources); deb.debian.org when none is configured.
MIRROR=${DEBIAN_MIRROR:-$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
  /etc/apt/sources.list.d/ 2>/dev/null | grep -oE 'https?://[^ ]+' | head -1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# The image records which version of this script made it; a changed recipe builds it again.
RECIPE=$(sha256sum "$0" | cut -c1-16)
built=$("$DOCKER" image inspect -f '{{index .Config.Labels "ray-serve-base.recipe"}}' "$TAG" 2>/dev/null || true)
if [ "${REBUILD_BASE:-0}" != 1 ] && [ "$built" = "$RECIPE" ]; then
  echo "base: $TAG already built"
  exit 0
fi
start=$(date +%s)
root=$(mktemp -d /tmp/ray-serve-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tini,wget \
  "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -30 "$root.log" >&2; exit 1; }
rm -f "$root.log"
chroot "$root" /bin/sh -euc '
  useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray
  ln -sf /usr/bin/python3 /usr/local/bin/python
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /usr/share/doc/* /usr/share/man/*
'
tar -C "$root" -c . | "$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'USER 1000' \
  --change 'WORKDIR /home/ray' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL ray-serve-base.recipe=$RECIPE" \
  - "$TAG" >/dev/null
echo "base: $TAG built from $MIRROR in $(( $(date +%s) - start )) s"
