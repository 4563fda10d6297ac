"""A small closed-loop HTTP load generator, run as its own process by ``bench.serving``.

    python -m bench.loadgen --url http://127.0.0.1:8000/predict --image FILE --concurrency 32 \
        --warmup 3 --duration 15

``concurrency`` asyncio workers (aiohttp on uvloop) each POST the image as a raw ``image/jpeg`` body
and send the next request as soon as the answer arrives. Only requests that complete inside the
measurement window count. Prints ``START`` and ``END`` lines at the window's edges (so the caller can
sample server CPU over the same window) and then one JSON line: images/s, latency percentiles,
errors, and the CPU the client itself used (cores = CPU seconds / wall seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def run(
    url: str, image: bytes, content_type: str, concurrency: int, warmup: float, duration: float
) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    window = {"start": float("inf"), "end": float("inf")}
    stop = asyncio.Event()

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=image, headers={"Content-Type": content_type}) as resp:
                    body = await resp.read()
                    ok = resp.status == 200 and b'"predictions"' in body
                    key = None if ok else f"HTTP {resp.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                key = type(exc).__name__
            t1 = time.perf_counter()
            if window["start"] <= t0 and t1 <= window["end"]:
                if key is None:
                    latencies.append(t1 - t0)
                else:
                    errors[key] = errors.get(key, 0) + 1

    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        window["start"], window["end"] = time.perf_counter(), time.perf_counter() + duration
        cpu0 = _cpu_s()
        print("START", flush=True)
        await asyncio.sleep(duration)
        cpu1 = _cpu_s()
        print("END", flush=True)
        stop.set()
        await asyncio.wait(tasks, timeout=60)
    lat_ms = np.array(latencies) * 1000
    pct = (lambda q: float(np.percentile(lat_ms, q))) if len(lat_ms) else (lambda q: float("nan"))
    n_err = sum(errors.values())
    return {
        "concurrency": concurrency,
        "duration_s": duration,
        "completed": len(latencies),
        "errors": errors,
        "error_ratio": n_err / max(1, n_err + len(latencies)),
        "images_per_s": len(latencies) / duration,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "mean_ms": float(lat_ms.mean()) if len(lat_ms) else float("nan"),
        "client_cpu_cores": (cpu1 - cpu0) / duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--content-type", default="image/jpeg")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=15.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run(
            args.url, args.image.read_bytes(), args.content_type, args.concurrency, args.warmup, args.duration
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
