"""Decode/preprocess units: formats, modes, orientation, limits and corrupt data."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from harness.images import encode, photo, sixteen_bit_grey_png, upscaled_jpeg, with_exif_orientation
from serve_app.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from serve_app.imaging import Preprocessing, decode_image, resize_center_crop, to_rgb

PREP = Preprocessing(resize_size=256, crop_size=224)
LIMIT = 40_000_000


def decode(data: bytes, max_pixels: int = LIMIT) -> np.ndarray:
    return decode_image(data, PREP, max_pixels)


@pytest.fixture(scope="module")
def cat(cat_png) -> Image.Image:
    return photo(cat_png)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_supported_format_decodes_to_the_same_picture(cat, fmt):
    reference = decode(encode(cat, "PNG"))
    out = decode(encode(cat, fmt))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # Lossy formats and the GIF palette change pixels a little, never the picture.
    assert mean_abs_diff(out, reference) < (12 if fmt == "GIF" else 4)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1"])
def test_every_mode_converts_to_rgb(cat, mode):
    img = cat.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode(encode(img, fmt))
    assert out.shape == (224, 224, 3)
    expected = decode(encode(img.convert("RGBA").convert("RGB"), "PNG"))
    assert mean_abs_diff(out, expected) < 4


def test_sixteen_bit_grey_keeps_its_tones(cat):
    out = decode(sixteen_bit_grey_png(cat))
    expected = decode(encode(cat.convert("L"), "PNG"))
    # PIL's own convert("RGB") clips 16-bit values to 255 (a white image); we keep the high byte.
    assert mean_abs_diff(out, expected) < 2
    assert out.std() > 20


def test_transparency_is_composited_over_white():
    img = Image.new("RGBA", (300, 300), (255, 0, 0, 0))  # fully transparent red
    out = decode(encode(img, "PNG"))
    assert (out == 255).all()


def test_palette_transparency_is_composited_over_white():
    img = Image.new("P", (300, 300), 0)
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0
    out = decode(encode(img, "PNG", transparency=0))
    assert (out == 255).all()


def test_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (300, 300), c) for c in ((0, 0, 255), (255, 0, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decode(data)
    assert out[..., 2].mean() > 200 and out[..., 0].mean() < 50


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(cat, orientation):
    upright = decode(encode(cat, "JPEG", quality=95))
    rotated = decode(with_exif_orientation(cat, orientation))
    assert mean_abs_diff(rotated, upright) < 6


def test_center_crop_keeps_the_middle():
    # Left third black, middle white, right third black: the centre crop is mostly white.
    arr = np.zeros((300, 900, 3), np.uint8)
    arr[:, 300:600] = 255
    out = resize_center_crop(Image.fromarray(arr), PREP)
    assert out.shape == (224, 224, 3)
    # Resized to 256x768, the crop spans x=272..496 of which 256..512 is white.
    assert out.mean() > 250


def test_large_jpeg_uses_dct_scaling_and_matches_a_full_decode(cat):
    data = upscaled_jpeg(cat, 4000, 3000)
    fast = decode(data)
    full = resize_center_crop(to_rgb(Image.open(io.BytesIO(data)).convert("RGB")), PREP)
    assert mean_abs_diff(fast, full) < 3
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (342, 256))
    assert img.size == (500, 375)  # 1/8 scale: what decode_image asks libjpeg for


def test_pixel_limit_is_checked_before_decoding():
    # 7000x7000 = 49 MP of black compresses to a few kB: refused from the header alone, quickly.
    data = encode(Image.new("L", (7000, 7000)), "PNG")
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="49000000 pixels"):
        decode(data)
    assert time.perf_counter() - started < 0.5


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height: what a bomb's header says, with no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_pils_own_bomb_guard_stays_on_and_answers_413():
    # Importing the app (weights imports imaging) leaves PIL's process-wide guard as PIL sets it ...
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import serve_app.weights, serve_app.ingress, PIL.Image as I; print(I.MAX_IMAGE_PIXELS)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert int(out.stdout) == Image.MAX_IMAGE_PIXELS == 89_478_485
    # ... and a header above twice that, which PIL refuses at open, is a 413 like ours, not a crash.
    with pytest.raises(ImageTooLarge, match="decompression bomb"):
        decode(png_header(20_000, 10_000))
    with pytest.raises(ImageTooLarge, match="49000000 pixels"):  # below PIL's: ours answers
        decode(png_header(7_000, 7_000))


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20],
    ids=["empty", "text", "png-magic-garbage"],
)
def test_undecodable_data_is_invalid_image(data):
    with pytest.raises(InvalidImage):
        decode(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_image_is_invalid_image(cat, fmt):
    data = encode(cat, fmt)
    with pytest.raises(InvalidImage):
        decode(data[: len(data) // 2])


def test_unsupported_format_is_415(cat):
    with pytest.raises(UnsupportedMediaType, match="PPM"):
        decode(encode(cat, "PPM"))
