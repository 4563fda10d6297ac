"""Benchmark the model forward pass alone: eager vs channels_last vs frozen TorchScript vs ONNX Runtime.

    python -m bench.forward [--threads 1] [--batch-sizes 1 8 16 32] [--seconds 3] [--device cpu|cuda]

Prints images/s per variant and batch size, then each variant on a mixed stream of batch sizes
1..8 (what the batcher forms under load) after every size was warmed up; the fastest variant is the
serving default. Last, what the model replica spends per image turning the ingress's uint8 NHWC batch
into the forward's float input (``TorchModel.normalize``, in each layout), beside the forward's share.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from serve_app.settings import AppSettings
from serve_app.torch_model import OnnxRuntimeForward, TorchModel


def images_per_second(fn, batch: np.ndarray, seconds: float) -> float:
    fn(batch)
    fn(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    for optimize in ("eager", "torchscript"):
        settings = AppSettings(
            model_name=args.model, optimize=optimize, num_threads=args.threads, device=args.device
        )
        models[optimize + "+channels_last"] = TorchModel(settings)
    if args.device == "cpu":
        models["onnxruntime"] = TorchModel(
            AppSettings(model_name=args.model, optimize="onnxruntime", num_threads=args.threads)
        )
    variants = {name: model.forward_uint8 for name, model in models.items()}
    plain = TorchModel(
        AppSettings(model_name=args.model, optimize="eager", num_threads=args.threads, device=args.device)
    )
    plain.model = plain.model.to(memory_format=torch.contiguous_format)

    def contiguous(batch):
        with torch.inference_mode():
            x = plain.normalize(batch).contiguous()
            return plain._forward(x)

    variants["eager"] = contiguous
    print(f"{'variant':28s}" + "".join(f"  bs={b:<5d}" for b in args.batch_sizes) + "  mixed 1..8 (images/s)")
    rng = random.Random(0)
    mixed = [rng.randint(1, 8) for _ in range(60)]
    pool = {b: np.random.randint(0, 255, (b, 224, 224, 3), np.uint8) for b in range(1, 9)}
    for name, fn in variants.items():
        row = [
            images_per_second(fn, np.random.randint(0, 255, (b, 224, 224, 3), np.uint8), args.seconds)
            for b in args.batch_sizes
        ]
        for b in mixed:  # every size seen (Classifier warms 1..16 itself; this covers the plain one)
            fn(pool[b])
        started = time.perf_counter()
        for b in mixed:
            fn(pool[b])
        row.append(sum(mixed) / (time.perf_counter() - started))
        print(f"{name:28s}" + "".join(f"  {v:8.1f}" for v in row), flush=True)
    print("\nnormalize only (uint8 NHWC -> the forward's float input), microseconds per image:")
    for name, model in models.items():
        run = normalize_only(model)
        row = "".join(
            f"  bs={b}: {1e6 / images_per_second(run, pool[b], args.seconds / 2):6.1f}" for b in (1, 4, 8)
        )
        print(f"{name:28s}{row}", flush=True)


def normalize_only(model: TorchModel):
    onnx = isinstance(model.model, OnnxRuntimeForward)

    def run(batch: np.ndarray) -> None:
        with torch.inference_mode():
            x = model.normalize(batch)
            if onnx:  # what OnnxRuntimeForward does before the session runs (no copy if NCHW already)
                x = x.contiguous()
            x.cpu()  # on a GPU, wait for it

    return run


if __name__ == "__main__":
    main()
