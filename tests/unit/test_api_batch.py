"""The Python API (``geoguide.Geolocator``) and batches of photos (``geoguide locate DIR --out``) on
an index the tests build: typed in and out, geoguide's own exceptions, every output format, a bad
photo recorded while the batch goes on, resuming, and a non-zero exit only when nothing was done."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

import geoguide
from geoguide import GeoguideError, Geolocator, Prediction
from geoguide.api import ConfigError, LocatedPhoto, SearchError
from geoguide.app.cli import main
from geoguide.core.images import ImageLoadError
from tests.synthetic import place_image


@pytest.fixture
def index_dir(synthetic_index) -> Path:
    return synthetic_index.root


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three photos of known places, one with GPS in its EXIF, and one file that is not a photo."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    place_image(0, variant=7).save(folder / "paris.jpg", quality=95)
    place_image(2, variant=7).save(folder / "sub" / "madrid.jpg", quality=95)
    exif = Image.Exif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef], gps[ExifTags.GPS.GPSLongitudeRef] = "N", "E"
    gps[ExifTags.GPS.GPSLatitude] = (IFDRational(52, 1), IFDRational(31, 1), IFDRational(12, 1))
    gps[ExifTags.GPS.GPSLongitude] = (IFDRational(13, 1), IFDRational(24, 1), IFDRational(18, 1))
    place_image(4, variant=7).save(folder / "berlin.jpg", quality=95, exif=exif)
    (folder / "broken.jpg").write_bytes(b"not a photo at all")
    return folder


def test_the_root_package_is_light_and_names_the_api():
    assert geoguide.__version__ and geoguide.Geolocator is Geolocator and geoguide.Prediction is Prediction
    with pytest.raises(AttributeError):
        geoguide.nothing_here  # noqa: B018


def test_locate_search_and_the_same_answer_as_the_cli(index_dir, photos, capsys):
    with Geolocator(index=index_dir) as g:
        pred = g.locate(photos / "paris.jpg")
        hits = g.search(photos / "paris.jpg", submap="country:FR", k=3)
    assert isinstance(pred, Prediction) and pred.country == "FR"
    assert len(hits.candidates) == 3 and all(c.country == "FR" for c in hits.candidates)
    assert main(["locate", str(photos / "paris.jpg"), "--index", str(index_dir), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert (cli["lat"], cli["lon"], cli["source"]) == (pred.lat, pred.lon, pred.source)


def test_errors_are_geoguides_own(index_dir, photos, tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'kk'"):
        Geolocator(index=index_dir, settings={"kk": 3})
    with pytest.raises(ConfigError, match="policy"):
        Geolocator(index=index_dir, policy="bogus")
    with pytest.raises(GeoguideError):
        Geolocator(index=tmp_path / "no-index-here")
    with Geolocator(index=index_dir) as g:
        with pytest.raises(ImageLoadError):
            g.locate(photos / "broken.jpg")
        with pytest.raises(SearchError):
            g.search(photos / "paris.jpg", submap="country:ZZ")


def test_locate_many_streams_every_photo_and_reports_failures(index_dir, photos):
    paths = [photos / "paris.jpg", photos / "broken.jpg", photos / "sub" / "madrid.jpg", photos / "missing.jpg"]
    with Geolocator(index=index_dir) as g:
        items = list(g.locate_many(paths, workers=2))
    assert all(isinstance(i, LocatedPhoto) for i in items)
    by = {Path(i.photo).name: i for i in items}
    assert set(by) == {"paris.jpg", "broken.jpg", "madrid.jpg", "missing.jpg"}
    assert by["paris.jpg"].prediction.country == "FR" and by["madrid.jpg"].prediction.country == "ES"
    assert by["broken.jpg"].error_kind == "ImageLoadError" and by["broken.jpg"].prediction is None
    assert by["missing.jpg"].error and by["missing.jpg"].prediction is None


@pytest.mark.parametrize("fmt", [".csv", ".jsonl", ".geojson", ".kml"])
def test_a_folder_to_each_format(index_dir, photos, tmp_path, fmt, capsys):
    out = tmp_path / f"results{fmt}"
    assert main(["locate", str(photos), "--index", str(index_dir), "--out", str(out), "-q"]) == 0
    assert "located 3 of 4 photos (1 failed, 0 already done, 1 with GPS in their EXIF)" in capsys.readouterr().err
    text = out.read_text()
    if fmt == ".csv":
        rows = {Path(r["photo"]).name: r for r in csv.DictReader(text.splitlines())}
        assert rows["broken.jpg"]["status"] == "failed" and "not a recognised image" in rows["broken.jpg"]["error"]
        assert rows["berlin.jpg"]["exif_gps"] == "True" and float(rows["berlin.jpg"]["exif_lat"]) == pytest.approx(52.52)
    elif fmt == ".jsonl":
        rows = {Path(json.loads(line)["photo"]).name: json.loads(line) for line in text.splitlines()}
        assert rows["paris.jpg"]["country"] == "FR" and rows["paris.jpg"]["why"]
    elif fmt == ".geojson":
        feats = {Path(f["properties"]["photo"]).name: f for f in json.loads(text)["features"]}
        assert feats["broken.jpg"]["geometry"] is None
        assert feats["madrid.jpg"]["geometry"]["type"] == "Point" and feats["madrid.jpg"]["properties"]["country"] == "ES"
    else:
        ns = {"k": "http://www.opengis.net/kml/2.2"}
        marks = ET.fromstring(text).findall(".//k:Placemark", ns)
        assert sorted(m.find("k:name", ns).text for m in marks) == ["berlin.jpg", "madrid.jpg", "paris.jpg"]


def test_a_batch_resumes_and_survives_a_torn_journal(index_dir, photos, tmp_path, capsys):
    out = tmp_path / "r.geojson"
    args = ["locate", str(photos / "paris.jpg"), str(photos / "sub"), "--index", str(index_dir), "--out", str(out), "-q"]
    assert main(args) == 0
    journal = tmp_path / "r.geojson.jsonl"
    with open(journal, "a") as f:
        f.write('{"photo": "/half/writ')  # a kill in the middle of a line
    capsys.readouterr()
    assert main([*args[:3], str(photos / "berlin.jpg"), *args[3:]]) == 0
    assert "located 3 of 3 photos (0 failed, 2 already done" in capsys.readouterr().err
    rows = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(rows) == 3 and len(json.loads(out.read_text())["features"]) == 3


def test_nothing_done_is_not_exit_0(index_dir, photos, tmp_path, capsys):
    assert main(["locate", str(photos / "broken.jpg"), str(photos / "missing.jpg"), "--index", str(index_dir),
                 "--out", str(tmp_path / "r.csv"), "-q"]) == 2
    assert "no photo could be located (2 failed" in capsys.readouterr().err
    assert main(["locate", str(tmp_path / "nothing-*.jpg"), "--index", str(index_dir)]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert main(["locate", str(photos), "--index", str(index_dir), "--out", str(tmp_path / "r.xlsx")]) == 2
    assert "--out takes .csv, .jsonl, .geojson, .kml" in capsys.readouterr().err


def test_a_batch_without_out_prints_a_row_per_photo(index_dir, photos, capsys):
    assert main(["locate", str(photos / "sub"), str(photos / "berlin.jpg"), "--index", str(index_dir), "--json",
                 "-q"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {Path(r["photo"]).name: r["exif_gps"] for r in rows} == {"madrid.jpg": False, "berlin.jpg": True}
