"""The one place images are opened. Every reader in geoguide goes through ``load_image``.

Photos from the wild arrive rotated by EXIF, in CMYK, 16-bit, palette or alpha modes, truncated,
or are not images at all. This module turns all of that into an RGB ``PIL.Image`` or an
``ImageLoadError`` that names the file and says what is wrong.

Decompression-bomb guard
========================

A tiny file can declare a huge canvas (a 40-byte PNG header saying 20000x20000 asks for 1.2 GB as
RGB). Images with more than **100,000,000 pixels** (100 Mpx: above any camera photo a user would
drop in, far below what would exhaust memory) are refused before any pixel is decoded, with an
error that gives the size and the limit. To index larger images, raise the limit for the process:

    GEOGUIDE_MAX_IMAGE_PIXELS=250000000 geoguide index build ...

It is read on every load, so it can be changed between calls. PIL has a guard of its own
(``Image.MAX_IMAGE_PIXELS``, 89.5 Mpx by default: a warning above it, an error above twice it),
which used to be the limit really enforced (89.5 Mpx, not the 100 Mpx stated here, and no way to
raise it). Every load now sets PIL's value to the configured limit, so there is one number: this
module refuses anything above it (PIL's own refusal above twice it is reported the same way), and
code that opens images directly still gets PIL's warning above it and error above twice it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from geoguide.core.errors import GeoguideError

# 100 Mpx: larger than any camera photo a user would drop in, smaller than a decompression bomb.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "GEOGUIDE_MAX_IMAGE_PIXELS"


class ImageLoadError(GeoguideError, ValueError):
    """An input that is not a decodable image; the message names the file."""


def max_image_pixels() -> int:
    """The configured pixel limit: ``$GEOGUIDE_MAX_IMAGE_PIXELS`` or 100,000,000.

    A malformed value is a ``ValueError`` (a configuration mistake, not a bad image: it must stop
    the run, not be skipped as one unreadable photo after another).
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", "").replace(",", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, e.g. 250000000; got {raw!r}")
    return value


def _pixel_limit(max_pixels: int | None) -> tuple[int, bool]:
    """(limit for this call, whether it is the configured one); keeps PIL's guard in step."""
    configured = max_image_pixels()
    if configured != Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = configured  # idempotent: every thread writes the same value
    if max_pixels is not None and max_pixels < configured:
        return max_pixels, False
    return configured, True


def _too_many_pixels(name: str, size: str, limit: int, configured: bool) -> ImageLoadError:
    how = (
        f"downscale it, or raise the limit with {MAX_PIXELS_ENV}=<pixels>"
        if configured
        else "a lower cap set by the caller"
    )
    return ImageLoadError(f"{name}: {size} exceeds the limit of {limit:,} pixels (decompression-bomb guard; {how})")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale to 8 bits by the actual range instead of clipping to white.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white: transparent pixels are background, not black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, L, 1, P


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int | None = None) -> Image.Image:
    """Decode bytes to an upright RGB image, or raise ``ImageLoadError`` naming ``name``.

    ``max_pixels`` can only lower the configured limit (see the module docstring) for this call.
    """
    if not data:
        raise ImageLoadError(f"{name}: file is empty")
    limit, configured = _pixel_limit(max_pixels)
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        w, h = img.size
        if w * h > limit:
            raise _too_many_pixels(name, f"{w}x{h} = {w * h:,} pixels", limit, configured)
        img.load()  # force full decode so truncation surfaces here, not later
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL's guard fires inside ``open`` above twice the limit (or above it, where warnings are
        # errors), before the size can be read here; its message carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)):,} pixels" if found else "the image size"
        raise _too_many_pixels(name, size, limit, configured) from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{name}: cannot decode image ({e})") from None


def load_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open ``path`` as an upright RGB image (EXIF orientation applied)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageLoadError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise ImageLoadError(f"{path}: cannot read ({e.strerror})") from None
    return decode_image(data, str(path), max_pixels)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
