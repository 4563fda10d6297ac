#!/usr/bin/env bash
# GPU figures for docs/PERFORMANCE.md, on a machine with a CUDA GPU and this repo:
#   OUT=artifacts/bench bash bench/gpu.sh
# The model forward (eager vs TorchScript) and the pipeline limit (decode + forward) with the model on
# the GPU, for a 500x375 JPEG and a 12 MP phone JPEG, with 1 and 4 decoding processes.
set -euo pipefail
OUT=${OUT:-artifacts/bench}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu-device.txt"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu-device.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/gpu-device.txt"
"$PY" -m bench.forward --device cuda --batch-sizes 1 8 32 64 128 --seconds 2 2>&1 | grep -v -i warn | tee "$OUT/gpu-forward.txt"
for procs in 1 4; do
  for image in small phone; do
    "$PY" -m bench.pipeline --device cuda --processes "$procs" --image "$image" --batch-sizes 8 32 64 \
      --seconds 3 --json "$OUT/gpu-pipeline-$image-p$procs.json" > /dev/null 2>&1 || echo "pipeline $image p$procs failed"
    "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], json.dumps(d['by_batch_size']), 'best', round(d['images_per_s'], 1))" "$OUT/gpu-pipeline-$image-p$procs.json" || true
  done
done
