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
code that opens images directly still gets PIL's warning above it and error above twice it;
PIL's warning text never reaches a person (geoguide's own one-line refusal does).

Files before pixels
===================

A photo path is opened without blocking and checked before a byte is read: a FIFO, a device or
a directory is refused (a FIFO named ``.jpg`` used to hang ``search``), and so is a file over
**200 MB** (``$GEOGUIDE_MAX_IMAGE_BYTES``; a 1.5 GB non-image named ``.jpg`` used to be read
whole during ``index build``, 1.8 GB of RSS). PIL then reads the header from the open file, so a
non-image is refused after a few kilobytes.

Bounded decoding
================

Every consumer needs far fewer pixels than a large photo holds (descriptors 224-640 px, the VLM
1024, the page 1024, OCR ~2000), so photos are decoded to at most **2048 px** on the long side
(``WORKING_SIDE``): a JPEG is decoded DCT-scaled (``draft``: 1/2, 1/4 or 1/8 of each side, so a
9900x9900 upload costs ~19 MB of pixels instead of 294 MB, and the copies made by rotation and
mode conversion shrink with it), anything else is decoded whole and reduced. Full decodes share
a process-wide budget of pixels in flight (``DECODE_BUDGET_PIXELS``: two working-size decodes), so
concurrent uploads wait instead of multiplying the peak, and memory freed by a large decode is
handed back to the system (``malloc_trim``) instead of staying in the allocator's arenas.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import math
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from geoguide.core.errors import GeoguideError

# 100 Mpx: larger than any camera photo a user would drop in, smaller than a decompression bomb.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "GEOGUIDE_MAX_IMAGE_PIXELS"
DEFAULT_MAX_BYTES = 200 * 1024 * 1024  # a 100 Mpx 16-bit TIFF is ~600 MB, a camera JPEG 5-30 MB
MAX_BYTES_ENV = "GEOGUIDE_MAX_IMAGE_BYTES"
WORKING_SIDE = 2048  # the long side photos are decoded to (see "Bounded decoding")
# Pixels being decoded at once, process-wide: two working-size JPEG decodes (2475^2 each, DCT-scaled
# from 9900^2) or one larger image alone; each costs ~3.5 bytes a pixel at its peak.
DECODE_BUDGET_PIXELS = 3 * WORKING_SIDE * WORKING_SIDE
TRIM_ABOVE_PIXELS = 4_000_000  # after a decode this large, give freed memory back to the system

# geoguide refuses oversized images itself, in one line; PIL's warning (with its site-packages
# path) must not reach a person first. Every image in geoguide is opened through this module.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


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


class _PixelBudget:
    """Pixels being decoded at once, process-wide: a decode waits until its pixels fit."""

    def __init__(self, pixels: int) -> None:
        self.total = pixels
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        need = min(pixels, self.total)  # one photo larger than the budget still runs, alone
        with self._cond:
            self._cond.wait_for(lambda: self.used + need <= self.total)
            self.used += need
        try:
            yield
        finally:
            with self._cond:
                self.used -= need
                self._cond.notify_all()


_BUDGET = _PixelBudget(DECODE_BUDGET_PIXELS)
_LIBC = ctypes.util.find_library("c")
_malloc_trim = getattr(ctypes.CDLL(_LIBC), "malloc_trim", None) if _LIBC else None


def _give_back_memory(pixels: int) -> None:
    if _malloc_trim is not None and pixels >= TRIM_ABOVE_PIXELS:
        _malloc_trim(0)


def max_image_bytes() -> int:
    """The configured file-size limit: ``$GEOGUIDE_MAX_IMAGE_BYTES`` or 200 MB."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw.replace("_", "").replace(",", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_BYTES_ENV} must be a positive whole number of bytes, e.g. 500000000; got {raw!r}")
    return value


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def open_photo(path: str | Path) -> BinaryIO:
    """Open a photo file for reading after checking it, before reading a byte: a regular file of at
    most ``max_image_bytes()``; anything else is an ``ImageLoadError`` naming the file. Opened
    without blocking, so a FIFO is refused instead of waiting for a writer."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageLoadError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise ImageLoadError(f"{path}: cannot read ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((what for test, what in _KINDS if test(st.st_mode)), "not a regular file")
            raise ImageLoadError(f"{path}: is {kind}, not an image file; refused without reading it")
        limit = max_image_bytes()
        if st.st_size > limit:
            raise ImageLoadError(f"{path}: {st.st_size / 1e6:,.0f} MB is more than the {limit / 1e6:,.0f} MB allowed "
                                 f"for one photo (raise it with {MAX_BYTES_ENV}=<bytes>)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _rotated(img: Image.Image) -> bool:
    """Whether EXIF asks for a rotation or flip (``exif_transpose`` copies the image even when not)."""
    return img.getexif().get(0x0112, 1) not in (1, None)  # 0x0112: Orientation


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


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int | None = None,
                 max_side: int | None = WORKING_SIDE) -> Image.Image:
    """Decode bytes to an upright RGB image, or raise ``ImageLoadError`` naming ``name``.

    ``max_pixels`` can only lower the configured limit (see the module docstring) for this call;
    ``max_side`` is the long side the image is decoded to (None: full size).
    """
    if not data:
        raise ImageLoadError(f"{name}: file is empty")
    return _decode(io.BytesIO(data), name, max_pixels, max_side)


def load_image(path: str | Path, max_pixels: int | None = None, max_side: int | None = WORKING_SIDE) -> Image.Image:
    """Open ``path`` as an upright RGB image (EXIF orientation applied), at most ``max_side`` px long."""
    with open_photo(path) as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ImageLoadError(f"{path}: file is empty")
        return _decode(f, str(path), max_pixels, max_side)


def _decode(source: BinaryIO, name: str, max_pixels: int | None, max_side: int | None) -> Image.Image:
    limit, configured = _pixel_limit(max_pixels)
    try:
        img = Image.open(source)  # reads the header only
        w, h = img.size
        if w * h > limit:
            raise _too_many_pixels(name, f"{w}x{h} = {w * h:,} pixels", limit, configured)
        if max_side and max(w, h) > max_side and img.format == "JPEG":
            scale = max_side / max(w, h)
            img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))  # DCT scaling: >= the asked size
        pixels = img.size[0] * img.size[1]
        with _BUDGET.reserve(pixels):
            img.load()  # force full decode so truncation surfaces here, not later
            img = ImageOps.exif_transpose(img, in_place=False) if _rotated(img) else img
            if max_side and max(img.size) > max_side:
                img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
            img = _to_rgb(img)
        _give_back_memory(pixels)
        return img
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


def file_sha256(path: str | Path) -> str:
    """The photo file's SHA-256, after ``open_photo``'s checks (no FIFO, no oversized file)."""
    h = hashlib.sha256()
    with open_photo(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
