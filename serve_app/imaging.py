"""Image decoding and preprocessing: encoded bytes -> a compact uint8 HWC array for the model.

Everything here is pure (no Ray) and runs in the ingress. The header is read first so oversized images
are refused before any pixel is decoded; large JPEGs are decoded with DCT scaling (PIL ``draft``) at
the smallest scale that still covers the resize target, and resize+center-crop is a single ``resize``
over the crop box, so no full-resolution buffer is ever built for a phone photo.
"""

from __future__ import annotations

import io
import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serve_app.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType

# Formats accepted, as PIL names them (MPO is the multi-picture JPEG that many phones write).
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})

# PIL's own decompression-bomb guard stays as PIL sets it, for the whole process: it refuses at open
# any image above twice this many pixels. Our limit (at most this, see settings.Limits) is checked
# from the header right after; both answer ImageTooLarge (413).
PIL_MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or sys.maxsize  # None: the guard is off

_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Preprocessing:
    """Geometry of the model's input: shorter side resized to ``resize_size``, then a centre crop."""

    resize_size: int = 256
    crop_size: int = 224


def decode_image(data: bytes, prep: Preprocessing, max_pixels: int) -> np.ndarray:
    """Decode one encoded image into a ``(crop, crop, 3)`` uint8 RGB array.

    Raises ``InvalidImage`` (400) for data that is not a complete image, ``UnsupportedMediaType``
    (415) for an image format outside ``SUPPORTED_FORMATS`` and ``ImageTooLarge`` (413) above
    ``max_pixels``.
    """
    if not data:
        raise InvalidImage("empty image data")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"refused from the header: {exc} (the limit is {max_pixels} pixels)") from None
    except UnidentifiedImageError:
        raise InvalidImage("data is not a recognised image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"image header is corrupt: {exc}") from None
    if img.format not in SUPPORTED_FORMATS:
        raise UnsupportedMediaType(
            f"image format {img.format} is not supported; use one of {sorted(SUPPORTED_FORMATS)}"
        )
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidImage("image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF/ICC chunks; not the client's fault
            return _preprocess(img, prep)
    except Image.DecompressionBombError as exc:  # a frame or tile larger than the header said
        raise ImageTooLarge(f"refused while decoding: {exc} (the limit is {max_pixels} pixels)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"image data is corrupt or truncated: {exc}") from None


def _preprocess(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    if img.format in ("JPEG", "MPO"):
        # DCT scaling: decode at 1/2, 1/4 or 1/8 while the shorter side stays >= resize_size.
        scale = prep.resize_size / min(img.size)
        if scale < 0.5:
            img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
    img.load()
    img = ImageOps.exif_transpose(img)
    rgb = to_rgb(img)
    return resize_center_crop(rgb, prep)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: keep the high byte (PIL's own convert would clip everything above 255).
        grey = np.asarray(img).astype(np.uint32, copy=False) >> 8
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "RGB":
            return img
        mode = "RGBA"
    if mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        background = Image.new("RGB", img.size, _WHITE)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX


def resize_center_crop(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Resize the shorter side to ``resize_size`` and centre-crop ``crop_size`` in one resample."""
    width, height = img.size
    scale = prep.resize_size / min(width, height)
    box_w = min(width, prep.crop_size / scale)
    box_h = min(height, prep.crop_size / scale)
    left = (width - box_w) / 2
    top = (height - box_h) / 2
    out = img.resize(
        (prep.crop_size, prep.crop_size),
        Image.Resampling.BILINEAR,
        box=(left, top, left + box_w, top + box_h),
        reducing_gap=3.0 if scale < 1 / 3 else None,
    )
    return np.asarray(out)
