#!/usr/bin/env bash
# Step 5: port-forward the serve Service and classify a photo (default: the cat from scikit-image).
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
IMAGE_FILE=${1:-$(.venv/bin/python -c 'import skimage, pathlib; print(pathlib.Path(skimage.__file__).parent / "data" / "chelsea.png")')}
mode=$(helm get values "$RELEASE" -n "$APP_NAMESPACE" --all -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["mode"])')
if [ "$mode" = rayservice ]; then svc="$RELEASE-serve-svc"; else svc="$RELEASE"; fi
LOCAL_PORT=${LOCAL_PORT:-8000}
kubectl port-forward -n "$APP_NAMESPACE" "svc/$svc" "$LOCAL_PORT:8000" >/dev/null &
pf=$!
trap 'kill $pf' EXIT
for _ in $(seq 30); do curl -fsS "http://127.0.0.1:$LOCAL_PORT/ready" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS -F "file=@$IMAGE_FILE" "http://127.0.0.1:$LOCAL_PORT/predict?top_k=3"
echo
