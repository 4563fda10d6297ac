#!/usr/bin/env bash
# Step 2: KubeRay operator 1.6.2 (kuberay-system), kube-prometheus-stack (monitoring), ingress-nginx
# (ingress-nginx) and the Gateway API CRDs, with the pinned versions and helm-values/.
# SKIP_MONITORING=1 / SKIP_INGRESS=1 leave those out on small laptops.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
need helm "run scripts/tools/helm.sh"
need kubectl "run scripts/tools/helm.sh (installs .tools/bin/kubectl)"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ >/dev/null
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null
helm repo add ingress-nginx https://kubernetes.github.io/ingress-nginx >/dev/null
helm repo update >/dev/null
kubectl apply --server-side -f \
  "https://github.com/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml"
if [ -z "${SKIP_MONITORING:-}" ]; then
  # First, so the operator's ServiceMonitor CRD exists when KubeRay's chart creates one.
  helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
    --version "$KUBE_PROMETHEUS_STACK_VERSION" -n monitoring --create-namespace \
    -f monitoring/kube-prometheus-stack-values.yaml -f helm-values/kube-prometheus-stack.yaml \
    --wait --timeout 10m
  operator_values=(-f helm-values/kuberay-operator.yaml)
else
  operator_values=(-f helm-values/kuberay-operator.yaml --set metrics.serviceMonitor.enabled=false)
fi
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_CHART_VERSION" \
  -n kuberay-system --create-namespace "${operator_values[@]}" --wait --timeout 5m
if [ -z "${SKIP_INGRESS:-}" ]; then
  helm upgrade --install ingress-nginx ingress-nginx/ingress-nginx --version "$INGRESS_NGINX_VERSION" \
    -n ingress-nginx --create-namespace -f helm-values/ingress-nginx.yaml --wait --timeout 5m
fi
kubectl get pods -n kuberay-system
