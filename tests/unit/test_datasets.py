"""geoguide.indices.photosets on small files written here: layouts, header sniffing, bad rows, EXIF GPS."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from geoguide.indices.photosets import (
    DATASETS,
    MAX_PROBLEMS,
    LabelsError,
    LoadReport,
    Sample,
    exif_gps,
    load_dataset,
)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def touch_images(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"\xff\xd8")  # existence is all a table loader checks
    return folder


def yfcc_row(n_fields: int, photo_id: str, user: str, lon: str, lat: str) -> str:
    """A raw YFCC100M metadata line; only the id, user, longitude and latitude fields matter."""
    fields = [f"f{i}" for i in range(n_fields)]
    off = 0 if n_fields == 23 else 2  # the 25-field release adds line number and hash
    fields[0 + (1 if off else 0)] = photo_id
    fields[1 + off] = user
    fields[10 + off], fields[11 + off] = lon, lat
    fields[6 + off] = "Cour+Carr%C3%A9e%2C+%22Louvre%22"  # URL-encoded title, as released
    return "\t".join(fields)


def test_registry_holds_every_loader():
    assert {"im2gps", "im2gps3k", "yfcc4k", "yfcc26k", "csv", "exif", "shared"} <= set(DATASETS)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("nope", labels="x.csv")


def test_places365_layout_with_malformed_rows_counted_and_skipped(tmp_path):
    labels = write(
        tmp_path / "im2gps3k_places365.csv",
        "IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label\n"
        "a.jpg,u1,48.85,2.35,1,4\n"
        "\n"
        "b.jpg,u2,abc,2.35,1,4\n"  # unparsable
        "c.jpg,u3,91.5,2.35,1,4\n"  # latitude out of range
        "d.jpg,u4,10.0,-181,1,4\n"  # longitude out of range
        "e.jpg,u5\n"  # missing columns
        "f.jpg,u6,,2.0,1,4\n"  # empty latitude
        "a.jpg,u1,48.85,2.35,1,4\n"  # duplicate
        "g.jpg,u7,-33.9,151.2,1,4\n"  # image file absent
        "h.jpg,,-33.9,151.2,1,4\n",  # no author is fine
    )
    images = touch_images(tmp_path / "imgs", "a.jpg", "b.jpg", "h.jpg")
    ds = load_dataset("im2gps3k", labels=labels, images=images)
    assert [s.image_id for s in ds] == ["a.jpg", "h.jpg"]
    assert ds[0] == Sample(image_id="a.jpg", image_path=images / "a.jpg", lat=48.85, lon=2.35, author="u1", row=0)
    assert ds[1].row == 8  # its position in the file, the bad rows before it counted (index import)
    assert ds[1].author is None
    r = ds.report
    assert (r.n_ok, r.n_bad) == (2, 7)
    reasons = "\n".join(r.problems)
    for needle in (
        "line 4: unparsable latitude 'abc'",
        "line 5: latitude 91.5",
        "line 6: longitude -181",
        "line 7: missing column",
        "line 8: empty latitude",
        "line 9: duplicate image id",
        "line 10: image file not found",
    ):
        assert needle in reasons
    assert r.warnings == ["loaded 2 samples; the published set has 2997"]


def test_header_with_longitude_before_latitude(tmp_path):
    labels = write(tmp_path / "x.csv", "photo_id,longitude,latitude,owner\n42,151.2093,-33.8688,bob\n")
    (s,) = load_dataset("csv", labels=labels)
    assert (s.image_id, s.lat, s.lon, s.author, s.image_path) == ("42", -33.8688, 151.2093, "bob", None)


@pytest.mark.parametrize("n_fields", [23, 25])
def test_raw_yfcc100m_metadata_puts_longitude_first(tmp_path, n_fields):
    rows = [
        yfcc_row(n_fields, "1001", "12@N00", "-0.1278", "51.5074"),
        yfcc_row(n_fields, "1002", "34@N00", "", ""),  # no geotag
        yfcc_row(n_fields, "1003", "56@N00", "139.6917", "35.6895"),
    ]
    write(tmp_path / "yfcc4k.txt", "\n".join(rows) + "\n")
    images = touch_images(tmp_path / "images", "1001.jpg", "1003.jpg")  # ids carry no extension
    ds = load_dataset("yfcc4k", labels=tmp_path)  # a folder: finds yfcc4k.txt and images/
    assert [(s.image_id, s.lat, s.lon, s.author) for s in ds] == [
        ("1001", 51.5074, -0.1278, "12@N00"),
        ("1003", 35.6895, 139.6917, "56@N00"),
    ]
    assert ds[0].image_path == images / "1001.jpg"
    assert (ds.report.n_bad, ds.report.problems) == (1, ["line 2: empty latitude"])


def test_bom_crlf_quotes_and_sniffed_semicolons(tmp_path):
    labels = write(
        tmp_path / "labels.csv",
        '\ufeffIMG_ID;AUTHOR;LAT;LON\r\n"dir/a, b.jpg";"x;y";1.5;2.5\r\n\r\n',
        encoding="utf-8",
    )
    touch_images(tmp_path / "imgs" / "dir", "a, b.jpg")
    (s,) = load_dataset("im2gps", labels=labels, images=tmp_path / "imgs")
    assert (s.image_id, s.author, s.lat, s.lon) == ("dir/a, b.jpg", "x;y", 1.5, 2.5)
    assert s.image_path == tmp_path / "imgs" / "dir" / "a, b.jpg"


def test_generic_csv_column_names_and_indexes(tmp_path):
    named = write(tmp_path / "n.tsv", "file\ty\tx\n../escape.jpg\t1\t2\nok.jpg\t3\t4\n")
    ds = load_dataset(
        "csv", labels=named, images=touch_images(tmp_path / "i", "ok.jpg"), id="file", lat="y", lon="x"
    )
    assert [(s.lat, s.lon) for s in ds] == [(3.0, 4.0)]
    assert "outside the image folder" in ds.report.problems[0]
    headerless = write(tmp_path / "h.csv", "7,-12.5,130.8\n8,0,0\n")
    for header in (False, None):  # None: the first row's latitude is a number, so it is data
        ds = load_dataset("csv", labels=headerless, header=header, id=0, lat=1, lon=2)
        assert [(s.image_id, s.lat, s.lon) for s in ds] == [("7", -12.5, 130.8), ("8", 0.0, 0.0)]
    headed = write(tmp_path / "g.csv", "a,b,c\n7,-12.5,130.8\n")
    assert [s.image_id for s in load_dataset("csv", labels=headed, id=0, lat=1, lon=2)] == ["7"]


def test_layout_errors_are_loud(tmp_path):
    with pytest.raises(ValueError, match="cannot identify columns"):
        load_dataset("csv", labels=write(tmp_path / "a.csv", "1,2,3\n"))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['id'\]"):
        load_dataset("csv", labels=write(tmp_path / "b.csv", "what,lat,lon\n1,2,3\n"))
    with pytest.raises(ValueError, match="lacks column"):
        load_dataset("csv", labels=write(tmp_path / "c.csv", "id,lat,lon\n1,2,3\n"), author="who")
    with pytest.raises(FileNotFoundError):
        load_dataset("im2gps", labels=tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match="im2gps_places365.csv"):
        load_dataset("im2gps", labels=tmp_path)
    with pytest.raises(TypeError, match="unknown column option"):
        load_dataset("csv", labels=tmp_path / "a.csv", latitude="y")


def test_problem_list_is_capped_but_count_is_not(tmp_path):
    labels = write(tmp_path / "x.csv", "id,lat,lon\n" + "".join(f"{i},bad,0\n" for i in range(50)))
    r = load_dataset("csv", labels=labels).report
    assert (r.n_ok, r.n_bad, len(r.problems)) == (0, 50, MAX_PROBLEMS)
    assert isinstance(r, LoadReport)


def test_shared_loader_follows_geoguide_data(tmp_path, monkeypatch):
    write(tmp_path / "labels.csv", "IMG_ID,AUTHOR,LAT,LON\np.jpg,me,10,20\n")
    touch_images(tmp_path / "images", "p.jpg")
    monkeypatch.setenv("GEOGUIDE_DATA", str(tmp_path))
    ds = load_dataset("shared")
    assert ds[0].image_path == tmp_path / "images" / "p.jpg"
    assert ds.report.warnings == ["loaded 1 samples; the published set has 1630"]


def save_jpeg_with_gps(
    path: Path, lat_dms, lat_ref: str, lon_dms, lon_ref: str, artist: str | None = None
) -> None:
    exif = Image.Exif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = lat_ref
    gps[ExifTags.GPS.GPSLatitude] = tuple(IFDRational(*v) for v in lat_dms)
    gps[ExifTags.GPS.GPSLongitudeRef] = lon_ref
    gps[ExifTags.GPS.GPSLongitude] = tuple(IFDRational(*v) for v in lon_dms)
    if artist:
        exif[ExifTags.Base.Artist] = artist
    Image.new("RGB", (16, 12), (90, 140, 200)).save(path, exif=exif)


def test_exif_gps_with_south_and_west_refs(tmp_path):
    # Rio de Janeiro: 22°54'30.12" S, 43°10'22.5" W.
    save_jpeg_with_gps(
        tmp_path / "rio.jpg",
        [(22, 1), (54, 1), (3012, 100)],
        "S",
        [(43, 1), (10, 1), (225, 10)],
        "W",
        artist="Ana",
    )
    save_jpeg_with_gps(
        tmp_path / "oslo.jpeg", [(59, 1), (54, 1), (0, 1)], "N", [(10, 1), (45, 1), (0, 1)], "E"
    )
    Image.new("RGB", (8, 8)).save(tmp_path / "nogps.jpg")
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")

    lat_rio, lon_rio = -(22 + 54 / 60 + 30.12 / 3600), -(43 + 10 / 60 + 22.5 / 3600)
    assert exif_gps(tmp_path / "rio.jpg") == pytest.approx((lat_rio, lon_rio), abs=1e-9)
    ds = load_dataset("exif", images=tmp_path)
    got = {s.image_id: (s.lat, s.lon, s.author) for s in ds}
    assert got.keys() == {"rio.jpg", "oslo.jpeg"}
    assert got["rio.jpg"][:2] == pytest.approx((lat_rio, lon_rio), abs=1e-9)
    assert got["rio.jpg"][2] == "Ana"
    assert got["oslo.jpeg"] == (pytest.approx(59.9), pytest.approx(10.75), None)
    assert ds.report.n_bad == 2
    assert sorted(p.split(":")[0] for p in ds.report.problems) == ["broken.jpg", "nogps.jpg"]
    assert ds[0].image_path == tmp_path / "oslo.jpeg"


# ------------------------------------------------------------------ input failures: loud and precise


def test_dropped_rows_are_kept_with_id_line_and_reason(tmp_path):
    labels = write(
        tmp_path / "x.csv",
        "IMG_ID,AUTHOR,LAT,LON\n"
        "a.jpg,u1,48.85,2.35\n"
        "b.jpg,u2,abc,2.35\n"
        "\n"
        '"c"x.jpg,u3,1,2\n'  # a quote that closes before the field ends: the csv module rejects it
        "d.jpg,u4,91,2\n"
        "a.jpg,u1,48.85,2.35\n"
        "g.jpg,u7,-33.9,151.2\n"
        ",u8,1,2\n",
    )
    ds = load_dataset("csv", labels=labels, images=touch_images(tmp_path / "imgs", "a.jpg", "b.jpg", "d.jpg"))
    r = ds.report
    assert (r.n_read, r.n_ok, r.n_dropped, r.n_bad) == (7, 1, 6, 6)  # the blank line is no row
    assert [(d.id, d.line, d.reason.split(" ")[0]) for d in r.dropped] == [
        ("b.jpg", 3, "unparsable"),
        (None, 5, "unreadable"),
        ("d.jpg", 6, "latitude"),
        ("a.jpg", 7, "duplicate"),
        ("g.jpg", 8, "image"),
        (None, 9, "empty"),
    ]
    assert r.model_dump()["n_dropped"] == 6 and r.model_dump()["dropped"][0] == {
        "id": "b.jpg", "line": 3, "reason": "unparsable latitude 'abc'"
    }


def test_dropped_list_is_capped_but_counts_are_not(tmp_path, monkeypatch):
    monkeypatch.setattr("geoguide.indices.photosets.common.MAX_DROPPED", 5)
    labels = write(tmp_path / "x.csv", "id,lat,lon\n" + "".join(f"{i},bad,0\n" for i in range(50)))
    r = load_dataset("csv", labels=labels).report
    assert (r.n_read, r.n_dropped, len(r.dropped)) == (50, 50, 5)
    assert [d.id for d in r.dropped] == ["0", "1", "2", "3", "4"]


def test_exif_drops_name_the_file(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "nogps.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    r = load_dataset("exif", images=tmp_path).report
    assert (r.n_read, r.n_ok, r.n_dropped) == (2, 0, 2)
    assert [(d.id, d.line) for d in r.dropped] == [("broken.jpg", None), ("nogps.jpg", None)]
    assert r.dropped[1].reason == "no GPS in EXIF"


def test_a_folder_given_as_the_csv_labels_file(tmp_path):
    with pytest.raises(LabelsError, match=rf"csv: labels {tmp_path} is a folder; give the labels file itself"):
        load_dataset("csv", labels=tmp_path)


def test_labels_that_are_not_utf8(tmp_path):
    labels = write(tmp_path / "latin.csv", "id,lat,lon\na.jpg,1,2\ncafé.jpg,3,4\n", encoding="latin-1")
    with pytest.raises(LabelsError) as err:
        load_dataset("csv", labels=labels)
    msg = str(err.value)
    assert f"{labels} line 3: not UTF-8 (byte 0xe9 at column 4)" in msg and "UTF-8" in msg and "\n" not in msg


def test_an_unterminated_quote_is_an_error_not_a_swallowed_file(tmp_path):
    labels = write(tmp_path / "q.csv", 'id,lat,lon\na.jpg,1,2\n"b.jpg,3,4\nc.jpg,5,6\nd.jpg,7,8\n')
    with pytest.raises(LabelsError, match=rf"{labels} line 3: unterminated quote"):
        load_dataset("csv", labels=labels)
    header_only = write(tmp_path / "h.csv", '"id,lat,lon\n')
    with pytest.raises(LabelsError, match="line 1: unterminated quote"):
        load_dataset("csv", labels=header_only)


def test_labels_without_images_when_the_photos_are_needed(tmp_path):
    labels = write(tmp_path / "x.csv", "id,lat,lon\na.jpg,1,2\n")
    assert load_dataset("csv", labels=labels)[0].image_path is None  # fine for ground truth alone
    with pytest.raises(LabelsError, match=rf"csv: labels {labels} given without an image folder.*--images"):
        load_dataset("csv", labels=labels, require_images=True)
    assert load_dataset("csv", labels=labels, images=touch_images(tmp_path / "i", "a.jpg"), require_images=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "i" / "nogps.jpg")
    assert load_dataset("exif", images=tmp_path / "i", require_images=True).report.n_dropped == 2  # a.jpg too
