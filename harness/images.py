"""Encoded test images made at run time from the real photos (nothing large is committed)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# The photos ship inside scikit-image and matplotlib (nothing committed); loadtest.images is the one
# home of where they are and of the labels that count as "a cat".
from loadtest.images import CAT_LABELS as CAT_LABELS, MPL_DATA, SKIMAGE_DATA

CAT_PHOTO = SKIMAGE_DATA / "chelsea.png"
COFFEE_PHOTO = SKIMAGE_DATA / "coffee.png"
HOPPER_PHOTO = MPL_DATA / "grace_hopper.jpg"


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def with_exif_orientation(img: Image.Image, orientation: int) -> bytes:
    """A JPEG whose stored pixels are ``img`` transformed so that EXIF ``orientation`` undoes it."""
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img.transpose(undo[orientation]), "JPEG", quality=95, exif=exif.tobytes())


def upscaled_jpeg(img: Image.Image, width: int, height: int, quality: int = 90) -> bytes:
    return encode(img.resize((width, height), Image.Resampling.BILINEAR), "JPEG", quality=quality)


def sixteen_bit_grey_png(img: Image.Image) -> bytes:
    grey = np.asarray(img.convert("L")).astype(np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")
