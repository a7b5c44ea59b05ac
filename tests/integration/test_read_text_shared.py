"""``read_text`` on real photos of the shared split: the Lincoln Memorial's inscription reads as
English pointing to the US, and a Paris departure board as French pointing to France (countries
ranked by a small map of the split's own countries, as the agent ranks them by its index)."""

from __future__ import annotations

import pytest

from geoguide.indices.photosets import shared_data_root
from geoguide.tools.read_text import TextReader, read_text_file

pytestmark = pytest.mark.integration
pytest.importorskip("rapidocr_onnxruntime", reason="rapidocr-onnxruntime (make setup installs it) is not installed")

ROOT = shared_data_root()
PHOTOS = {  # image id -> (a word it shows, its language, the true country)
    "541826920_7871e39bc9_1288_79756109@N00.jpg": ("LINCOLN", "en", "US"),
    "71794237_d86349d2d8_35_18684820@N00.jpg": ("ARRIVEE", "fr", "FR"),
}
WHERE = {"US": 473, "GB": 190, "ES": 66, "FR": 61, "CA": 36, "AU": 35, "IN": 10}  # photos per country in the split


@pytest.mark.parametrize("image_id", sorted(PHOTOS))
def test_reads_real_signs(image_id, tmp_path):
    path = ROOT / "images" / image_id
    if not path.is_file():
        pytest.skip(f"shared split not found at {ROOT} (set GEOGUIDE_DATA to the im2gps3k folder)")
    word, language, country = PHOTOS[image_id]
    res = read_text_file(path, TextReader(tmp_path / "ocr.sqlite", timeout_s=120), where=WHERE)
    assert res.legible and word in res.text
    assert res.languages[0].code == language and res.countries[0].iso2 == country
