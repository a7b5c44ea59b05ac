"""The one place images are opened. Every reader in geoguide goes through ``load_image``.

Photos from the wild arrive rotated by EXIF, in CMYK, 16-bit, palette or alpha modes, truncated,
or are not images at all. This module turns all of that into an RGB ``PIL.Image`` or an
``ImageLoadError`` that names the file and says what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 100 Mpx: larger than any camera photo a user would drop in, smaller than a decompression bomb.
DEFAULT_MAX_PIXELS = 100_000_000


class ImageLoadError(ValueError):
    """An input that is not a decodable image; the message names the file."""


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


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes to an upright RGB image, or raise ``ImageLoadError`` naming ``name``."""
    if not data:
        raise ImageLoadError(f"{name}: file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageLoadError(
                    f"{name}: {w}x{h} = {w * h / 1e6:.0f} Mpx exceeds the {max_pixels / 1e6:.0f} Mpx limit "
                    "(decompression-bomb guard; downscale it first)"
                )
            img.load()  # force full decode so truncation surfaces here, not later
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"{name}: too many pixels (decompression-bomb guard: {e})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{name}: cannot decode image ({e})") from None


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
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
