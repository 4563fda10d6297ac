#!/usr/bin/env bash
# Step 1: a local cluster. kind by default; CLUSTER_TOOL=minikube for minikube (4 CPUs, 8 GiB).
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
case "${CLUSTER_TOOL:-kind}" in
  kind)
    need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
    if kind get clusters | grep -qx "$CLUSTER_NAME"; then
      echo "kind cluster $CLUSTER_NAME exists"
    else
      kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
        --config scripts/k8s/kind-config.yaml --wait 120s
    fi ;;
  minikube)
    need minikube "https://minikube.sigs.k8s.io/docs/start/"
    minikube start -p "$CLUSTER_NAME" --cpus 4 --memory 8g --kubernetes-version v1.33.1 --cni calico ;;
  *) echo "CLUSTER_TOOL must be kind or minikube" >&2; exit 1 ;;
esac
kubectl get nodes -o wide
