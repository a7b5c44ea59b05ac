"""Every kind of bad or unusual image input: a clear error naming the file, or a correct RGB image."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from geoguide.core.images import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageLoadError,
    decode_image,
    load_image,
    max_image_pixels,
)


def _save(img: Image.Image, path, fmt: str, **kw):
    img.save(path, format=fmt, **kw)
    return path


def test_rgb_jpeg_roundtrip(tmp_path):
    p = _save(Image.new("RGB", (40, 30), (10, 200, 30)), tmp_path / "a.jpg", "JPEG")
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (40, 30)


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image")
    with pytest.raises(ImageLoadError, match="notes.jpg: not a recognised image"):
        load_image(p)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(p)


def test_empty_and_missing(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def _png_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes whose PNG header declares ``width`` x ``height`` (the pixels are missing)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


@pytest.fixture
def pil_limit(monkeypatch):
    """Restore PIL's process-wide guard after the test, whatever load_image set it to."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    return monkeypatch


def test_decompression_bomb_png(tmp_path, pil_limit):
    # 20000x20000 would need 400 MB (1.2 GB as RGB) decoded; the file is a few dozen bytes.
    p = tmp_path / "huge.png"
    p.write_bytes(_png_claiming(20000, 20000))
    with pytest.raises(ImageLoadError, match="huge.png: 400,000,000 pixels exceeds the limit of 100,000,000 pixels") as err:
        load_image(p)
    msg = str(err.value)
    assert f"{MAX_PIXELS_ENV}=" in msg and "\n" not in msg  # says how to raise it


def test_the_enforced_limit_is_the_documented_one(tmp_path, pil_limit):
    assert max_image_pixels() == DEFAULT_MAX_PIXELS == 100_000_000
    # 95 Mpx is under 100 Mpx, though over PIL's own default guard (89.5 Mpx): it must get past the
    # size check and fail only because the pixel data is missing.
    p = tmp_path / "95mpx.png"
    p.write_bytes(_png_claiming(10000, 9500))
    with pytest.raises(ImageLoadError, match="95mpx.png: cannot decode") as err:
        load_image(p)
    assert "pixels" not in str(err.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_limit_from_environment(tmp_path, pil_limit):
    p = _save(Image.new("RGB", (100, 100)), tmp_path / "a.png", "PNG")
    pil_limit.setenv(MAX_PIXELS_ENV, "9999")
    with pytest.raises(ImageLoadError, match=rf"a.png: 100x100 = 10,000 pixels exceeds the limit of 9,999 .*{MAX_PIXELS_ENV}"):
        load_image(p)
    pil_limit.setenv(MAX_PIXELS_ENV, "10000")
    assert load_image(p).size == (100, 100)
    # Raised above twice PIL's default: PIL's own guard must not refuse first.
    pil_limit.setenv(MAX_PIXELS_ENV, "500000000")
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_claiming(20000, 20000))
    with pytest.raises(ImageLoadError, match="huge.png: cannot decode"):
        load_image(huge)
    for bad in ("lots", "0", "-5", "1e9"):
        pil_limit.setenv(MAX_PIXELS_ENV, bad)
        with pytest.raises(ValueError, match=rf"{MAX_PIXELS_ENV}.*positive whole number.*{bad}"):
            load_image(p)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_cap_per_call_only_lowers_the_limit(tmp_path, pil_limit):
    p = _save(Image.new("RGB", (100, 100)), tmp_path / "a.png", "PNG")
    with pytest.raises(ImageLoadError, match="exceeds the limit of 5,000 pixels"):
        load_image(p, max_pixels=5000)
    pil_limit.setenv(MAX_PIXELS_ENV, "5000")
    with pytest.raises(ImageLoadError, match="exceeds the limit of 5,000 pixels"):
        load_image(p, max_pixels=10**9)  # cannot lift the configured guard


def test_cmyk_jpeg(tmp_path):
    p = _save(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", "JPEG")
    img = load_image(p)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60  # cyan/yellow ink off, magenta+yellow on = red


def test_16bit_png_uses_full_range(tmp_path):
    arr = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    img = np.asarray(load_image(p))
    assert img.dtype == np.uint8 and img.shape == (32, 64, 3)
    assert img.min() == 0 and img.max() == 255  # scaled, not clipped to white


def test_palette_and_alpha(tmp_path):
    pal = Image.new("P", (10, 10), 3)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    assert load_image(_save(pal, tmp_path / "p.png", "PNG")).getpixel((1, 1)) == (0, 0, 255)
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent -> white background
    assert load_image(_save(rgba, tmp_path / "t.png", "PNG")).getpixel((1, 1)) == (255, 255, 255)


def test_exif_rotation_applied(tmp_path):
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    img.save(p, "JPEG", exif=exif.tobytes())
    out = load_image(p)
    assert out.size == (20, 60)
    assert np.asarray(out)[:10].mean() > 200  # the stripe is now on top


def test_decode_bytes_names_source():
    with pytest.raises(ImageLoadError, match="upload-1"):
        decode_image(b"GIF89a garbage", "upload-1")


# ---- files before pixels; bounded decoding ----------------------------------------------------


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    import os

    from geoguide.core.images import file_sha256

    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    for read in (load_image, file_sha256):
        with pytest.raises(ImageLoadError, match="photo.jpg: is a FIFO"):
            read(fifo)  # returns at once: a hang here fails the test by its timeout


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from geoguide.core.images import MAX_BYTES_ENV, file_sha256

    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(3_000_000)  # sparse: nothing to read, only a size
    monkeypatch.setenv(MAX_BYTES_ENV, "2000000")
    for read in (load_image, file_sha256):
        with pytest.raises(ImageLoadError, match=r"big.jpg: 3 MB is more than the 2 MB allowed .*GEOGUIDE_MAX_IMAGE_BYTES"):
            read(big)


def test_no_third_party_warning_text_reaches_a_person(tmp_path):
    """A 100-200 Mpx photo: PIL warns (with its site-packages path) before geoguide refuses."""
    import subprocess
    import sys

    path = tmp_path / "huge.png"
    w, h = 12_000, 9_000  # 108 Mpx: above the 100 Mpx limit, below PIL's error at twice it
    raw = b"".join(b"\x00" + b"\x00" * w for _ in range(1))  # one row; the header declares the rest
    png = b"\x89PNG\r\n\x1a\n"
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    path.write_bytes(png + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    out = subprocess.run([sys.executable, "-c", "import sys; from geoguide.core.images import load_image; "
                          "load_image(sys.argv[1])", str(path)], capture_output=True, text=True)
    assert out.returncode != 0 and "exceeds the limit of 100,000,000 pixels" in out.stderr
    assert "DecompressionBombWarning" not in out.stderr and "site-packages" not in out.stderr.split("ImageLoadError")[-1]
    assert "warnings.warn" not in out.stderr


def test_large_jpegs_are_decoded_to_the_working_size():
    from geoguide.core.images import WORKING_SIDE

    img = Image.linear_gradient("L").resize((5000, 3000)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    out = decode_image(buf.getvalue(), "big.jpg")
    assert max(out.size) == WORKING_SIDE and out.size == (WORKING_SIDE, round(3000 * WORKING_SIDE / 5000))
    assert decode_image(buf.getvalue(), "big.jpg", max_side=None).size == (5000, 3000)  # full size on request
