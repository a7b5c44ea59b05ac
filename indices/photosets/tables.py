"""Label files (CSV, TSV, raw YFCC100M metadata) as photo sets.

Label layouts supported
=======================

``labels`` may be the file itself or a folder holding one of the file names listed below (first found
wins); when it is a folder with an ``images/`` sub-folder and ``images`` is not given, that is used.

============  =====================================================  ======================================
loader        file names looked for in a ``labels`` folder           published size
============  =====================================================  ======================================
``im2gps``    ``im2gps_places365.csv``, ``im2gps.csv``               237 (Hays & Efros 2008 test set)
``im2gps3k``  ``im2gps3k_places365.csv``, ``im2gps3k.csv``           2,997 (Vo et al. 2017)
``yfcc4k``    ``yfcc4k_places365.csv``, ``yfcc4k.csv``, ``info.csv``, 4,536 (Vo et al. 2017)
              ``yfcc4k.txt``
``yfcc26k``   ``yfcc25600_places365.csv``, ``yfcc26k.csv``,          25,600 (Müller-Budack et al. 2018)
              ``yfcc25600.csv``
``shared``    ``labels.csv`` in ``$GEOGUIDE_DATA``, default          1,630 (the project's development split)
              ``<repo>/../shared/data/im2gps3k``
``csv``       (any file; give column names or indexes)               –
``exif``      (a folder of photos; GPS read from EXIF)               –
============  =====================================================  ======================================

Each table file is read in one of two ways, decided from its first non-blank row:

1. **With a header** (the GeoEstimation ``*_places365.csv`` files, ``IMG_ID,AUTHOR,LAT,LON,S3_Label,...``,
   and most re-packagings). Columns are found *by name*, case-insensitively, so their order does not
   matter and a file with longitude before latitude is read correctly. Names recognised:
   id ``IMG_ID, name, image_id, photo_id, id, image, img, filename, file``; latitude ``LAT, latitude``;
   longitude ``LON, LNG, long, longitude``; author (optional) ``AUTHOR, user_nsid, nsid, user_id, owner,
   user, photographer``. Keyword overrides (``id=``, ``lat=``, ``lon=``, ``author=``) replace them.
2. **Raw YFCC100M metadata** (no header, tab-separated, e.g. YFCC4k's ``yfcc4k.txt``), where
   **longitude comes before latitude**: 23 fields (Yahoo Webscope release: id 0, user NSID 1,
   longitude 10, latitude 11) or 25 fields (multimedia-commons ``yfcc100m_dataset``: line number 0,
   id 1, hash 2, user NSID 3, longitude 12, latitude 13). The image is ``<id>.jpg``.

Any other headerless file needs ``header=False`` and integer column indexes (``id=0, lat=2, lon=3``).
The delimiter (``, ; tab |``) is sniffed; files are read with the ``csv`` module (strict quoting) as
UTF-8 with an optional BOM, so quoted fields, CRLF and blank lines are handled. Image ids are file names relative to
the image folder; an id without an extension is tried with ``.jpg``, ``.jpeg`` and ``.png``.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from geoguide.indices.photosets.common import (
    BadRow,
    DatasetLoader,
    LabelsError,
    LoadedDataset,
    LoadReport,
    _Collector,
    parse_coord,
    register,
    shared_data_root,
)

COLUMN_ROLES = ("id", "lat", "lon", "author")

HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("img_id", "name", "image_id", "photo_id", "id", "image", "img", "filename", "file"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "lng", "long", "longitude"),
    "author": ("author", "user_nsid", "nsid", "user_id", "owner", "user", "photographer"),
}



@dataclass(frozen=True)
class ColumnMap:
    """Where each field sits in a row (0-based); ``author`` may be absent."""

    id: int
    lat: int
    lon: int
    author: int | None = None

    @property
    def width(self) -> int:
        return 1 + max(i for i in (self.id, self.lat, self.lon, self.author) if i is not None)


# Raw YFCC100M metadata, keyed by field count. Longitude precedes latitude in both releases.
YFCC100M_LAYOUTS: dict[int, ColumnMap] = {
    23: ColumnMap(id=0, author=1, lon=10, lat=11),  # Yahoo Webscope yfcc100m_dataset-{0..9}
    25: ColumnMap(id=1, author=3, lon=12, lat=13),  # multimedia-commons yfcc100m_dataset (line no., hash)
}


def _norm(name: str) -> str:
    return name.strip().strip("\ufeff").strip().strip('"').strip().lower()


def _is_number(row: Sequence[str], i: int) -> bool:
    try:
        float(row[i])
    except (IndexError, ValueError):
        return False
    return True


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        first = next((line for line in sample.splitlines() if line.strip()), "")
        return max(",;\t|", key=first.count)


def _read_text(path: Path) -> str:
    """The whole file as text: UTF-8 (a BOM is dropped), or ``LabelsError`` naming the first bad byte."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise LabelsError(f"{path} is a folder; give the labels file itself") from None
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise LabelsError(
            f"{path} line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); "
            "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _read_rows(
    path: Path, text: str, delimiter: str, quoting: int, report: LoadReport
) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows with the line each starts on; a row the csv module rejects is reported, not fatal.

    A quote still open at the end of the file is fatal: every row after it would vanish into one field.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise LabelsError(
                    f"{path} line {start}: unterminated quote (a '\"' opened on this line is never closed, "
                    "so the rest of the file would be read as one field); close or remove it"
                ) from None
            report.skip(f"unreadable row ({exc})", line=start)
            continue
        if any(cell.strip() for cell in row):
            yield start, row


class TableLoader(DatasetLoader):
    """Labels from a delimited text file (see the module docstring for the layouts understood)."""

    label_files: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        labels: str | os.PathLike | None = None,
        images: str | os.PathLike | None = None,
        *,
        header: bool | None = None,
        delimiter: str | None = None,
        require_images: bool = False,
        **columns: str | int,
    ) -> None:
        """``require_images``: the caller needs the photos (to build an index or run the agent), so
        labels without an image folder are a ``LabelsError`` instead of samples without paths."""
        unknown = set(columns) - set(COLUMN_ROLES)
        if unknown:
            raise TypeError(f"unknown column option(s) {sorted(unknown)}; columns are {COLUMN_ROLES}")
        self.labels = self._find_labels(labels)
        folder_images = (
            self.labels.parent / "images" if labels is not None and Path(labels).is_dir() else None
        )
        if images is None and folder_images is not None and folder_images.is_dir():
            images = folder_images
        self.images = Path(images) if images is not None else None
        if self.images is not None and not self.images.is_dir():
            raise FileNotFoundError(f"{self.name}: image folder {self.images} does not exist")
        if require_images and self.images is None:
            raise LabelsError(
                f"{self.name}: labels {self.labels} given without an image folder, but the photos are needed "
                "(to build an index or run the agent); give the folder of photos (--images DIR)"
            )
        self.header = header
        self.delimiter = delimiter
        self.columns = columns

    def _find_labels(self, labels: str | os.PathLike | None) -> Path:
        if labels is None:
            raise ValueError(
                f"{self.name}: pass labels=<file, or folder holding one of {list(self.label_files)}>"
            )
        path = Path(labels)
        if path.is_dir() and not self.label_files:
            raise LabelsError(f"{self.name}: labels {path} is a folder; give the labels file itself")
        if path.is_dir():
            for fname in self.label_files:
                if (path / fname).is_file():
                    return path / fname
            raise FileNotFoundError(f"{self.name}: none of {list(self.label_files)} in {path}")
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: labels file {path} does not exist")
        return path

    def _header_map(self, row: Sequence[str]) -> ColumnMap | None:
        """Column positions by name, or None when ``row`` does not name both coordinates."""
        names = [_norm(c) for c in row]
        found: dict[str, int] = {}
        for role in COLUMN_ROLES:
            given = self.columns.get(role)
            if isinstance(given, int):
                found[role] = given
                continue
            wanted = (_norm(given),) if isinstance(given, str) else HEADER_ALIASES[role]
            index = next((names.index(w) for w in wanted if w in names), None)
            if index is not None:
                found[role] = index
        if "lat" not in found or "lon" not in found:
            return None
        missing = [r for r in ("id", "author") if r not in found and isinstance(self.columns.get(r), str)]
        if "id" not in found or missing:
            raise ValueError(
                f"{self.name}: header {list(row)} of {self.labels} lacks column(s) {missing or ['id']}; "
                f"pass the name(s), e.g. id='photo'"
            )
        return ColumnMap(id=found["id"], lat=found["lat"], lon=found["lon"], author=found.get("author"))

    def _layout(self, first: Sequence[str], delimiter: str) -> tuple[ColumnMap, bool]:
        """(column map, whether the first row is a header) from the first non-blank row."""
        if self.header is not False:
            by_name = self._header_map(first)
            # With only indexes given, the first row is a header only if its latitude is not a number.
            if by_name is not None and (self.header or not _is_number(first, by_name.lat)):
                return by_name, True
            if self.header:
                raise ValueError(
                    f"{self.name}: header {list(first)} of {self.labels} names no lat/lon columns"
                )
        if all(isinstance(self.columns.get(r), int) for r in ("id", "lat", "lon")):
            author = self.columns.get("author")
            c = self.columns
            return ColumnMap(
                id=int(c["id"]),
                lat=int(c["lat"]),
                lon=int(c["lon"]),
                author=author if isinstance(author, int) else None,
            ), False
        if delimiter == "\t" and len(first) in YFCC100M_LAYOUTS and not self.columns:
            return YFCC100M_LAYOUTS[len(first)], False
        raise ValueError(
            f"{self.name}: cannot identify columns of {self.labels}: first row {list(first)[:8]} is neither a "
            f"header naming lat/lon nor raw YFCC100M metadata; pass header=False with id/lat/lon indexes"
        )

    def load(self) -> LoadedDataset:
        report = LoadReport(dataset=self.name, source=str(self.labels))
        text = _read_text(self.labels)
        delimiter = self.delimiter or _sniff_delimiter(text[:65536])
        first = next(
            _read_rows(self.labels, text, delimiter, csv.QUOTE_MINIMAL, LoadReport(dataset="", source="")), None
        )
        collector = _Collector(report, self.images)
        if first is None:
            report.warnings.append("labels file has no rows")
            return collector.finish(self.expected_n)
        cols, has_header = self._layout(first[1], delimiter)
        raw_yfcc = not has_header and cols in YFCC100M_LAYOUTS.values()
        # Raw YFCC fields are URL-encoded and never quoted: a stray quote must not swallow lines.
        quoting = csv.QUOTE_NONE if raw_yfcc else csv.QUOTE_MINIMAL
        rows = _read_rows(self.labels, text, delimiter, quoting, report)
        if has_header:
            next(rows, None)
        for line, row in rows:
            image_id = row[cols.id].strip() if len(row) > cols.id else None
            try:
                if len(row) < cols.width:
                    raise BadRow(f"missing column(s): {len(row)} fields, need {cols.width}")
                lat = parse_coord(row[cols.lat], "latitude")
                lon = parse_coord(row[cols.lon], "longitude")
            except BadRow as exc:
                report.skip(str(exc), line=line, image_id=image_id)
                continue
            author = row[cols.author].strip() if cols.author is not None else None
            collector.add(line, row[cols.id].strip(), lat, lon, author)
        return collector.finish(self.expected_n)


@register("csv")
class CsvLoader(TableLoader):
    """Any delimited file: columns by name (``id=``, ``lat=``, ``lon=``, ``author=``) or by index."""


@register("im2gps")
class Im2gpsLoader(TableLoader):
    """IM2GPS test set (237 Flickr photos) in the GeoEstimation ``im2gps_places365.csv`` layout."""

    label_files = ("im2gps_places365.csv", "im2gps.csv")
    expected_n = 237


@register("im2gps3k")
class Im2gps3kLoader(TableLoader):
    """IM2GPS3k (2,997 photos), ``IMG_ID,AUTHOR,LAT,LON[,...]``."""

    label_files = ("im2gps3k_places365.csv", "im2gps3k.csv")
    expected_n = 2997


@register("yfcc4k")
class Yfcc4kLoader(TableLoader):
    """YFCC4k (4,536 photos): a headed CSV or the raw YFCC100M metadata lines (lon before lat)."""

    label_files = ("yfcc4k_places365.csv", "yfcc4k.csv", "info.csv", "yfcc4k.txt")
    expected_n = 4536


@register("yfcc26k")
class Yfcc26kLoader(TableLoader):
    """YFCC26k / MediaEval "yfcc25600" (25,600 photos): headed CSV or raw YFCC100M metadata."""

    label_files = ("yfcc25600_places365.csv", "yfcc26k.csv", "yfcc25600.csv")
    expected_n = 25600


@register("shared")
class SharedSplitLoader(TableLoader):
    """The project's IM2GPS3k development split (``labels.csv`` + ``images/``); see shared/data/README.md."""

    label_files = ("labels.csv",)
    expected_n = 1630

    def __init__(
        self, labels: str | os.PathLike | None = None, images: str | os.PathLike | None = None, **options
    ) -> None:
        super().__init__(labels if labels is not None else shared_data_root(), images, **options)


