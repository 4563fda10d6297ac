"""The image pool used by the load test and the benchmark: real photos at several sizes.

Everything is built in memory at run time from photos that ship with scikit-image and matplotlib, so
no large binary is committed: the 12 MP phone-size JPEG is an upscale of a real photo. Pure module
(no Locust import), so tests and ``bench`` can use it directly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
import skimage
from PIL import Image

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
MPL_DATA = Path(matplotlib.get_data_path()) / "sample_data"

# ImageNet labels the model gives the cat photo (chelsea) in its top 5, whatever its size.
CAT_LABELS = frozenset({"tabby", "tiger cat", "Egyptian cat"})

PHONE_SIZE = (4032, 3024)  # 12.2 MP, what a typical phone camera writes
SMALL_SIZE = (500, 375)  # the typical size of an ImageNet validation photo


@dataclass(frozen=True)
class PoolImage:
    name: str
    data: bytes
    content_type: str
    size: tuple[int, int]
    # The pool picks images by weight: mostly small photos, now and then a phone photo.
    weight: int
    # Labels of which at least one must be in the top 5; empty: only the structure is checked.
    expected_any: frozenset[str] = frozenset()


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to exactly ``size``, centre-cropping first so the aspect ratio is kept."""
    target = size[0] / size[1]
    w, h = img.size
    if w / h > target:
        new_w = round(h * target)
        img = img.crop(((w - new_w) // 2, 0, (w - new_w) // 2 + new_w, h))
    else:
        new_h = round(w / target)
        img = img.crop((0, (h - new_h) // 2, w, (h - new_h) // 2 + new_h))
    return img.resize(size, Image.Resampling.LANCZOS)


def cat_photo() -> Image.Image:
    return Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB")


@cache
def small_jpeg() -> bytes:
    """A 500×375 JPEG of the cat photo."""
    return _jpeg(_resized(cat_photo(), SMALL_SIZE))


@cache
def phone_jpeg() -> bytes:
    """A 4032×3024 (12 MP) JPEG made by upscaling the cat photo; ~1-2 MB, built in about a second."""
    return _jpeg(_resized(cat_photo(), PHONE_SIZE), quality=92)


@cache
def pool() -> tuple[PoolImage, ...]:
    cat = cat_photo()
    return (
        PoolImage(
            "chelsea.png", (SKIMAGE_DATA / "chelsea.png").read_bytes(), "image/png", (451, 300), 4, CAT_LABELS
        ),
        PoolImage("coffee.png", (SKIMAGE_DATA / "coffee.png").read_bytes(), "image/png", (600, 400), 3),
        PoolImage(
            "grace_hopper.jpg", (MPL_DATA / "grace_hopper.jpg").read_bytes(), "image/jpeg", (512, 600), 4
        ),
        PoolImage("cat_500x375.jpg", small_jpeg(), "image/jpeg", SMALL_SIZE, 4, CAT_LABELS),
        PoolImage(
            "cat_1024x768.jpg", _jpeg(_resized(cat, (1024, 768))), "image/jpeg", (1024, 768), 2, CAT_LABELS
        ),
        PoolImage(
            "cat_1920x1440.jpg", _jpeg(_resized(cat, (1920, 1440))), "image/jpeg", (1920, 1440), 1, CAT_LABELS
        ),
        PoolImage("cat_4032x3024.jpg", phone_jpeg(), "image/jpeg", PHONE_SIZE, 1, CAT_LABELS),
    )


def weighted_pool() -> list[PoolImage]:
    """The pool with each image repeated ``weight`` times, for ``random.choice``."""
    return [img for img in pool() for _ in range(img.weight)]
