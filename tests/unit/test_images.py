"""Every kind of bad or unusual image input: a clear error naming the file, or a correct RGB image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from indices.images import ImageLoadError, decode_image, load_image


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


def test_decompression_bomb_png(tmp_path):
    # A 20000x20000 PNG of one colour compresses to a few hundred KB but would need 1.2 GB decoded.
    p = tmp_path / "huge.png"
    Image.new("L", (20000, 20000), 0).save(p, optimize=False)
    with pytest.raises(ImageLoadError, match="huge.png: .*(pixels|Mpx)"):
        load_image(p)


def test_pixel_cap_is_configurable(tmp_path):
    p = _save(Image.new("RGB", (100, 100)), tmp_path / "a.png", "PNG")
    with pytest.raises(ImageLoadError, match="exceeds"):
        load_image(p, max_pixels=5000)


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
