#!/usr/bin/env bash
# Step 4: the app. A namespace labelled for Pod Security "restricted", then the chart with
# VALUES (default helm-values/app-dev.yaml; helm-values/app-deployment.yaml for mode=deployment).
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
need helm "run scripts/tools/helm.sh"
VALUES=${VALUES:-helm-values/app-dev.yaml}
kubectl create namespace "$APP_NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$APP_NAMESPACE" --overwrite \
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/audit=restricted \
  pod-security.kubernetes.io/warn=restricted
helm upgrade --install "$RELEASE" kuberay/chart -n "$APP_NAMESPACE" -f "$VALUES" \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}"
if [ -z "${SKIP_MONITORING:-}" ] && kubectl get crd podmonitors.monitoring.coreos.com >/dev/null 2>&1; then
  kubectl apply -k monitoring/ -n "$APP_NAMESPACE"   # PodMonitors, alert rules, dashboards
fi
mode=$(helm get values "$RELEASE" -n "$APP_NAMESPACE" --all -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["mode"])')
if [ "$mode" = rayservice ]; then
  echo "waiting for RayService $RELEASE to be Ready (first start pulls nothing but loads the model: minutes)"
  kubectl wait -n "$APP_NAMESPACE" "rayservice/$RELEASE" --for=condition=Ready --timeout="${WAIT_TIMEOUT:-900s}"
else
  kubectl rollout status -n "$APP_NAMESPACE" "deployment/$RELEASE" --timeout="${WAIT_TIMEOUT:-900s}"
fi
