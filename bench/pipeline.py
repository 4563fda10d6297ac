"""The pipeline limit: decode+preprocess plus model forward per image, outside Ray, on the same cores.

"The same total cores the server gets" means: the Ray node the server runs on has ``cores`` CPUs
(the whole 2-core machine here), and the served topology runs the model with ``num_threads`` torch
threads per replica. The limit runs ``cores // num_threads`` worker processes with ``num_threads``
threads each (2 × 1 for the default config), and each worker does, per batch, exactly what the
server does per image: ``serve_app.imaging.decode_image`` on the encoded bytes, ``np.stack``, and
``serve_app.torch_model.TorchModel.forward_uint8``. No HTTP, no proxy, no IPC: the work the server
cannot avoid, so served/limit is the efficiency of the serving path. The best batch size wins.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from dataclasses import dataclass

import numpy as np

# The sweep for the best batch: every size from 1 to 6 (on 2 cores two processes ran 5 or 6 images per
# batch fastest on 2026-12-06, 8 falling ~20 % behind) and the powers of two above.
BATCH_SIZES = (1, 2, 3, 4, 5, 6, 8, 16, 32)


@dataclass(frozen=True)
class PipelineSpec:
    settings_args: dict  # builder args of the app (serve_config.yaml ``args``)
    image: bytes
    processes: int
    batch_sizes: tuple[int, ...]
    seconds: float
    warmup_s: float
    decode: bool = True  # False: forward only, on images decoded once up front


def _worker(spec: PipelineSpec, index: int, barrier, results) -> None:
    import torch

    from serve_app.imaging import decode_image
    from serve_app.settings import AppSettings
    from serve_app.torch_model import TorchModel

    settings = AppSettings(**spec.settings_args)
    torch.set_num_threads(settings.num_threads)
    clf = TorchModel(settings, warmup_batch_sizes=tuple(sorted(set(spec.batch_sizes))))
    prep, max_pixels = clf.weights.preprocessing, settings.limits.max_image_pixels
    decoded = decode_image(spec.image, prep, max_pixels)
    for bs in spec.batch_sizes:

        def one_batch(bs=bs):
            t0 = time.perf_counter()
            if spec.decode:
                arrays = [decode_image(spec.image, prep, max_pixels) for _ in range(bs)]
            else:
                arrays = [decoded] * bs
            t1 = time.perf_counter()
            clf.forward_uint8(np.stack(arrays))  # returns host numpy: includes the device sync
            return t1 - t0, time.perf_counter() - t1

        barrier.wait()
        end = time.perf_counter() + spec.warmup_s
        while time.perf_counter() < end:
            one_batch()
        barrier.wait()  # every worker measures the same window
        done, decode_s, forward_s = 0, 0.0, 0.0
        started = time.perf_counter()
        while time.perf_counter() - started < spec.seconds:
            d, f = one_batch()
            decode_s += d
            forward_s += f
            done += bs
        wall = time.perf_counter() - started
        results.put(
            {
                "worker": index,
                "batch_size": bs,
                "images": done,
                "wall_s": wall,
                "decode_ms": 1000 * decode_s / done,
                "forward_ms": 1000 * forward_s / done,
            }
        )


def measure(spec: PipelineSpec) -> dict:
    """Images/s of ``spec.processes`` workers together, for each batch size, and the best."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(spec.processes)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(spec, i, barrier, results), daemon=True)
        for i in range(spec.processes)
    ]
    for p in procs:
        p.start()
    rows = []
    timeout = 120 + len(spec.batch_sizes) * (spec.seconds + spec.warmup_s + 30)
    deadline = time.monotonic() + timeout
    try:
        while len(rows) < spec.processes * len(spec.batch_sizes):
            try:
                rows.append(results.get(timeout=1.0))
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:  # a worker crashed (import error, OOM): the others wait at the barrier
                    raise RuntimeError(f"pipeline worker failed (exit codes {dead})") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pipeline limit not measured within {timeout:.0f}s") from None
    finally:
        for p in procs:
            p.join(timeout=10 if len(rows) == spec.processes * len(spec.batch_sizes) else 0.1)
            if p.is_alive():
                p.kill()
    by_bs = {}
    for bs in spec.batch_sizes:
        mine = [r for r in rows if r["batch_size"] == bs]
        by_bs[bs] = {
            "images_per_s": sum(r["images"] / r["wall_s"] for r in mine),
            "decode_ms_per_image": float(np.mean([r["decode_ms"] for r in mine])),
            "forward_ms_per_image": float(np.mean([r["forward_ms"] for r in mine])),
        }
    best = max(by_bs, key=lambda b: by_bs[b]["images_per_s"])
    return {
        "processes": spec.processes,
        "threads_per_process": spec.settings_args.get("num_threads", 1),
        "seconds": spec.seconds,
        "by_batch_size": by_bs,
        "best_batch_size": best,
        "images_per_s": by_bs[best]["images_per_s"],
    }


def main(argv=None) -> None:
    """``python -m bench.pipeline``: the pipeline limit alone, e.g. with the model on a GPU."""
    import argparse
    import json
    from pathlib import Path

    import yaml

    from loadtest.images import phone_jpeg, small_jpeg

    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument(
        "--config", type=Path, default=Path(__file__).resolve().parents[1] / "serve_config.yaml"
    )
    parser.add_argument("--device", help="override the config's device (cpu, cuda)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--image", choices=("small", "phone"), default="small")
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    app_args = dict(next(a for a in config["applications"] if a["name"] == "classifier")["args"])
    if args.device:
        app_args["device"] = args.device
    image = small_jpeg() if args.image == "small" else phone_jpeg()
    result = measure(
        PipelineSpec(
            app_args,
            image,
            args.processes,
            tuple(args.batch_sizes),
            args.seconds,
            1.0,
            decode=not args.forward_only,
        )
    )
    result.update(device=app_args.get("device"), image=args.image, forward_only=args.forward_only)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
