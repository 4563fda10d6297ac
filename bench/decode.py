"""Benchmark image decode+preprocess: DCT-scaled JPEG decode (PIL draft) vs a full decode.

    python -m bench.decode [--repeat 20]

Uses a 12 MP (4032x3024) phone-size JPEG made from the real cat photo, a 500x375 JPEG and the cat
PNG. Prints milliseconds per image (median of --repeat runs) for the serving path
(``serve_app.imaging.decode_image``) and, for the JPEGs, the same path with DCT scaling disabled.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import skimage
from PIL import Image

from serve_app.imaging import Preprocessing, decode_image, resize_center_crop, to_rgb

PREP = Preprocessing()


def full_decode(data: bytes):
    """The serving path minus DCT scaling: decode every pixel, then resize+crop."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return resize_center_crop(to_rgb(img), PREP)


def median_ms(fn, data: bytes, repeat: int) -> float:
    fn(data)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(data)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def jpeg(img: Image.Image, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    img.resize(size, Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    cat_path = Path(skimage.__file__).parent / "data" / "chelsea.png"
    cat = Image.open(cat_path).convert("RGB")
    inputs = {
        "12 MP JPEG 4032x3024": jpeg(cat, (4032, 3024)),
        "JPEG 500x375": jpeg(cat, (500, 375)),
        "PNG 451x300 (chelsea)": cat_path.read_bytes(),
    }
    serving = lambda d: decode_image(d, PREP, 40_000_000)  # noqa: E731
    print(f"{'input':24s} {'bytes':>9s} {'serving ms':>11s} {'full-decode ms':>15s} {'speed-up':>9s}")
    for name, data in inputs.items():
        fast = median_ms(serving, data, args.repeat)
        if "JPEG" in name:
            slow = median_ms(full_decode, data, args.repeat)
            print(f"{name:24s} {len(data):9d} {fast:11.2f} {slow:15.2f} {slow / fast:8.1f}x")
        else:
            print(f"{name:24s} {len(data):9d} {fast:11.2f} {'-':>15s} {'-':>9s}")


if __name__ == "__main__":
    main()
