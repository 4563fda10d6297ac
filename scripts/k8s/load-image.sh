#!/usr/bin/env bash
# Step 3: build the app image (Dockerfile) and load it into the local cluster's nodes.
# SKIP_BUILD=1 loads an image you built already.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
need docker "https://docs.docker.com/engine/install/"
[ -n "${SKIP_BUILD:-}" ] || docker build -t "$IMAGE" .
case "${CLUSTER_TOOL:-kind}" in
  kind) kind load docker-image "$IMAGE" --name "$CLUSTER_NAME" ;;
  minikube) minikube -p "$CLUSTER_NAME" image load "$IMAGE" ;;
esac
