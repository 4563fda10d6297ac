#!/usr/bin/env bash
# Delete the local cluster made by cluster-up.sh.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
case "${CLUSTER_TOOL:-kind}" in
  kind) kind delete cluster --name "$CLUSTER_NAME" ;;
  minikube) minikube delete -p "$CLUSTER_NAME" ;;
esac
