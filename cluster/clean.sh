#!/usr/bin/env bash
# make cluster-clean (after cluster-down): remove the caches make cluster keeps outside the repo,
# the built binaries and the node's image store. Go's own module and build caches stay.
source "$(dirname "$0")/lib.sh"
pid_of containerd >/dev/null && die "the cluster is still up: make cluster-down first"
if [ -d "$CACHE" ]; then
  findmnt -rn -o TARGET | awk -v c="$CACHE/" 'index($0, c) == 1' | grep -q . \
    && die "something is still mounted under $CACHE"
  rm -rf "$CACHE" && log "removed $CACHE"
fi
