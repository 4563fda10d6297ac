"""A small closed-loop HTTP load generator, run as its own process by ``bench.serving``.

    python -m bench.loadgen --url http://127.0.0.1:8000/predict --image FILE --concurrency 32 \
        --warmup 3 --duration 15 [--body multipart|raw] [--honor-retry-after]

``concurrency`` asyncio workers (aiohttp on uvloop) each POST the image, as a multipart upload (the
``file`` field, what ``curl -F file=@photo.jpg`` sends; the default) or as a raw ``image/jpeg`` body,
and send the next request as soon as the answer arrives. The multipart body is encoded once, so the
client's own CPU stays small. Only requests that complete inside the measurement window count.

A 503 is counted apart from the errors (``shed``, with its own latency and whether it carried
``Retry-After``): under overload the server is meant to refuse fast. With ``--honor-retry-after`` a
worker that is refused waits what ``Retry-After`` says (at most 5 s) before its next request, as a
well-behaved client does; otherwise it sends at once.

Prints ``START`` and ``END`` lines at the window's edges (so the caller can sample server CPU over the
same window) and then one JSON line: images/s, latency percentiles of the answered requests, the shed
requests, errors, and the CPU the client itself used (cores = CPU seconds / wall seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

FILE_FIELD = "file"  # serve_app.request_parsing.FILE_FIELD; the client does not import the app
RETRY_AFTER_CAP_S = 5.0


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def request_body(image: bytes, body: str, content_type: str = "image/jpeg") -> tuple[bytes, str]:
    """The bytes to POST and their Content-Type: the raw image, or a one-file multipart form."""
    if body == "raw":
        return image, content_type
    if body != "multipart":
        raise ValueError(f"body must be raw or multipart, not {body!r}")
    boundary = secrets.token_hex(16)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{FILE_FIELD}"; filename="image.jpg"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + image + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def percentiles(values_s: list[float]) -> dict[str, float]:
    ms = np.array(values_s) * 1000
    if not len(ms):
        return {
            "p50_ms": float("nan"),
            "p90_ms": float("nan"),
            "p99_ms": float("nan"),
            "mean_ms": float("nan"),
        }
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


async def run(
    url: str,
    payload: bytes,
    content_type: str,
    concurrency: int,
    warmup: float,
    duration: float,
    honor_retry_after: bool = False,
) -> dict:
    latencies: list[float] = []
    shed: list[float] = []
    shed_with_retry_after = 0
    errors: dict[str, int] = {}
    window = {"start": float("inf"), "end": float("inf")}
    stop = asyncio.Event()

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal shed_with_retry_after
        while not stop.is_set():
            t0 = time.perf_counter()
            retry_after = None
            try:
                async with session.post(url, data=payload, headers={"Content-Type": content_type}) as resp:
                    body = await resp.read()
                    ok = resp.status == 200 and b'"predictions"' in body
                    key = None if ok else f"HTTP {resp.status}"
                    retry_after = resp.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError) as exc:
                key = type(exc).__name__
            t1 = time.perf_counter()
            if window["start"] <= t0 and t1 <= window["end"]:
                if key is None:
                    latencies.append(t1 - t0)
                elif key == "HTTP 503":
                    shed.append(t1 - t0)
                    shed_with_retry_after += retry_after is not None
                else:
                    errors[key] = errors.get(key, 0) + 1
            if key == "HTTP 503" and honor_retry_after and retry_after and retry_after.isdigit():
                try:
                    await asyncio.wait_for(stop.wait(), min(RETRY_AFTER_CAP_S, float(retry_after)))
                except TimeoutError:
                    pass

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
    n_err = sum(errors.values())
    return {
        "concurrency": concurrency,
        "duration_s": duration,
        "honor_retry_after": honor_retry_after,
        "completed": len(latencies),
        "errors": errors,
        "error_ratio": n_err / max(1, n_err + len(latencies)),
        "images_per_s": len(latencies) / duration,
        **percentiles(latencies),
        "shed": len(shed),
        "shed_with_retry_after": shed_with_retry_after,
        "shed_ratio": len(shed) / max(1, len(shed) + len(latencies)),
        **{f"shed_{k}": v for k, v in percentiles(shed).items()},
        "client_cpu_cores": (cpu1 - cpu0) / duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--content-type", default="image/jpeg", help="the image's type")
    parser.add_argument("--body", choices=("multipart", "raw"), default="multipart")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--honor-retry-after", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    payload, content_type = request_body(args.image.read_bytes(), args.body, args.content_type)
    result = asyncio.run(
        run(
            args.url,
            payload,
            content_type,
            args.concurrency,
            args.warmup,
            args.duration,
            args.honor_retry_after,
        )
    )
    result["body"] = args.body
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
