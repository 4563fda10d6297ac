#!/usr/bin/env bash
# Step 5: port-forward the serve Service and classify a photo (default: the cat from scikit-image).
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
IMAGE_FILE=${1:-$(.venv/bin/python -c 'import skimage, pathlib; print(pathlib.Path(skimage.__file__).parent / "data" / "chelsea.png")')}
# The release's mode and upgrade strategy decide which Service fronts the Serve proxies: the chart's
# (deployment), KubeRay's <name>-serve-svc (rayservice), or with NewClusterWithIncrementalUpgrade the
# serving RayCluster's own <raycluster>-serve-svc (KubeRay then creates no <name>-serve-svc).
read -r mode strategy < <(helm get values "$RELEASE" -n "$APP_NAMESPACE" --all -o json | python3 -c \
  'import json,sys; v = json.load(sys.stdin); print(v["mode"], v["ray"]["upgradeStrategy"]["type"])')
if [ "$mode" != rayservice ]; then
  svc="$RELEASE"
elif [ "$strategy" = NewClusterWithIncrementalUpgrade ]; then
  cluster=$(kubectl get rayservice "$RELEASE" -n "$APP_NAMESPACE" -o jsonpath='{.status.activeServiceStatus.rayClusterName}')
  [ -n "$cluster" ] || { echo "$0: RayService $RELEASE has no serving cluster yet" >&2; exit 1; }
  svc="$cluster-serve-svc"
else
  svc="$RELEASE-serve-svc"
fi
LOCAL_PORT=${LOCAL_PORT:-8000}
# By the Service port's name: 8000, or the LoadBalancer's port when KubeRay's Service is the LoadBalancer.
kubectl port-forward -n "$APP_NAMESPACE" "svc/$svc" "$LOCAL_PORT:serve" >/dev/null &
pf=$!
trap 'kill $pf' EXIT
for _ in $(seq 30); do curl -fsS "http://127.0.0.1:$LOCAL_PORT/ready" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS -F "file=@$IMAGE_FILE" "http://127.0.0.1:$LOCAL_PORT/predict?top_k=3"
echo
