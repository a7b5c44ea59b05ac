"""Benchmark datasets behind one registry and one row-validation path.

Every loader returns a :class:`LoadedDataset`: the good :class:`Sample` rows and a :class:`LoadReport`.
A malformed row (missing column, unparsable or out-of-range coordinate, duplicate id, image file absent
when an image folder is given, a row the csv module rejects) is counted, recorded in ``report.dropped``
as ``{id, line, reason}`` (``id`` when the row has one; ``line`` is the row's first line in the file),
logged, and skipped: a benchmark run neither dies on row 2,811 nor quietly evaluates on fewer images
than it claims (``n_read = n_ok + n_dropped``; an evaluation counts dropped rows as misses).

A file that cannot be read as a table at all *is* an error, raised as :class:`LabelsError` (a
``ValueError``) in one line naming the file, the line where there is one, and the fix: a folder
where the ``csv`` loader needs a file, bytes that are not UTF-8 (silently replacing them would turn
``café.jpg`` into an id that matches no photo), a quote that is never closed (the csv module would
read the rest of the file as one field and drop every row after it), columns that cannot be
identified, and labels given without the photos when the caller needs them (``require_images=True``:
building an index or running the agent, as opposed to scoring predictions against ground truth).

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
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

from PIL import ExifTags, Image
from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from geoguide.core.errors import GeoguideError
from geoguide.core.registry import Registry
from geoguide.geo.geometry import validate_latlon

logger = logging.getLogger(__name__)

MAX_PROBLEMS = 20  # enough to diagnose a bad file without flooding a log or a run summary
MAX_DROPPED = 1000  # dropped rows listed one by one in a report; the counts are always exact
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
EXIF_SUFFIXES = frozenset({".jpg", ".jpeg", ".tif", ".tiff", ".png", ".webp"})
COLUMN_ROLES = ("id", "lat", "lon", "author")

HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("img_id", "name", "image_id", "photo_id", "id", "image", "img", "filename", "file"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "lng", "long", "longitude"),
    "author": ("author", "user_nsid", "nsid", "user_id", "owner", "user", "photographer"),
}


class Sample(BaseModel):
    """One labelled photo; coordinates are WGS84 degrees, validated on construction."""

    model_config = ConfigDict(frozen=True)

    image_id: str = Field(min_length=1)
    image_path: Path | None = None
    lat: float
    lon: float
    author: str | None = None
    row: int | None = Field(None, description="0-based position among the labels file's data rows, bad rows "
                            "counted: the row of this photo in vectors stored in the file's order (index import)")

    @model_validator(mode="after")
    def _check_coords(self) -> Sample:
        validate_latlon(self.lat, self.lon)
        return self


class LabelsError(GeoguideError, ValueError):
    """A labels file that cannot be read as a table; the message names the file, line and problem."""


class DroppedRow(BaseModel):
    """One labelled row a load skipped: an evaluation counts it as a miss."""

    id: str | None = Field(None, description="the image id, when the row got as far as having one")
    line: int | None = Field(None, description="first line of the row in the labels file (None: EXIF)")
    reason: str


class LoadReport(BaseModel):
    """What a load kept and what it skipped, so a run can state exactly which images it evaluated."""

    dataset: str
    source: str
    n_ok: int = 0
    n_bad: int = Field(0, description="rows dropped (also as n_dropped)")
    dropped: list[DroppedRow] = Field(
        default_factory=list, description=f"the first {MAX_DROPPED} dropped rows: id, line, reason"
    )
    problems: list[str] = Field(default_factory=list, description=f"first {MAX_PROBLEMS} skipped rows, why")
    warnings: list[str] = Field(
        default_factory=list, description="file-level oddities, e.g. an unexpected size"
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def n_read(self) -> int:
        """Rows read from the file (blank lines and the header are no rows)."""
        return self.n_ok + self.n_bad

    @computed_field  # type: ignore[prop-decorator]
    @property
    def n_dropped(self) -> int:
        return self.n_bad

    def skip(self, reason: str, *, line: int | None = None, image_id: str | None = None) -> None:
        self.n_bad += 1
        if len(self.dropped) < MAX_DROPPED:
            self.dropped.append(DroppedRow(id=image_id or None, line=line, reason=reason))
        if len(self.problems) < MAX_PROBLEMS:
            where = f"line {line}" if line is not None else image_id or "?"
            self.problems.append(f"{where}: {reason}")


@dataclass(frozen=True)
class LoadedDataset:
    """The good samples in file order, plus the report; iterates and indexes like a list."""

    samples: list[Sample]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


class BadRow(ValueError):
    """A row to skip; the message says why."""


def parse_coord(text: str, what: str) -> float:
    """Decimal degrees from a text cell; the error names the cell so the report is actionable."""
    text = text.strip()
    if not text:
        raise BadRow(f"empty {what}")
    try:
        return float(text)
    except ValueError:
        raise BadRow(f"unparsable {what} {text!r}") from None


def resolve_image(images: Path, image_id: str) -> Path:
    """The image file for an id inside ``images``, as an absolute path (so an index built from a
    relative ``--images`` works from any directory); ``BadRow`` if it is absent or escapes the
    folder, by its name or through a symbolic link (a link to ``/etc/passwd`` named ``a.jpg`` would
    otherwise be indexed, and its file served as a thumbnail)."""
    rel = Path(image_id)
    if rel.is_absolute() or ".." in rel.parts:
        raise BadRow(f"image id {image_id!r} points outside the image folder")
    candidates = [images / rel] + (
        [images / f"{image_id}{s}" for s in IMAGE_SUFFIXES] if not rel.suffix else []
    )
    for path in candidates:
        if path.is_file():
            if not inside(path, images):
                raise BadRow(f"{path} links to {path.resolve()}, outside the image folder {images}; refused")
            return path.absolute()
    raise BadRow(f"image file not found: {candidates[0]}")


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path``, every symbolic link followed, lies inside ``folder`` (links followed too)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


@dataclass
class _Collector:
    """Shared by every loader: builds samples, skips and reports bad ones, rejects duplicate ids."""

    report: LoadReport
    images: Path | None
    samples: list[Sample] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def add(self, line: int | None, image_id: str, lat: float, lon: float, author: str | None) -> None:
        row = self.report.n_read  # rows seen so far, good and bad: this row's position in the file
        try:
            if not image_id:
                raise BadRow("empty image id")
            if image_id in self.seen:
                raise BadRow(f"duplicate image id {image_id!r}")
            try:
                validate_latlon(lat, lon)
            except ValueError as exc:
                raise BadRow(str(exc)) from None
            path = resolve_image(self.images, image_id) if self.images is not None else None
        except BadRow as exc:
            self.report.skip(str(exc), line=line, image_id=image_id)
            return
        self.seen.add(image_id)
        self.samples.append(
            Sample(image_id=image_id, image_path=path, lat=lat, lon=lon, author=author or None, row=row)
        )
        self.report.n_ok += 1

    def finish(self, expected_n: int | None) -> LoadedDataset:
        r = self.report
        if expected_n is not None and r.n_ok != expected_n:
            r.warnings.append(f"loaded {r.n_ok} samples; the published set has {expected_n}")
        if r.n_bad:
            logger.warning(
                "%s (%s): skipped %d of %d rows; first: %s",
                r.dataset,
                r.source,
                r.n_bad,
                r.n_read,
                r.problems[0],
            )
        for w in r.warnings:
            logger.warning("%s (%s): %s", r.dataset, r.source, w)
        return LoadedDataset(self.samples, r)


class DatasetLoader(ABC):
    """A benchmark source. Subclasses register under a name and implement :meth:`load`."""

    name: ClassVar[str] = ""
    expected_n: ClassVar[int | None] = None  # the published size: a different count is warned about

    @abstractmethod
    def load(self) -> LoadedDataset: ...


# The loaders of this module, by name (the one registry idiom: ``core.registry``).
DATASETS: Registry[type[DatasetLoader]] = Registry("dataset", key=None,
                                                   unknown="unknown dataset {name!r}; registered: {available}")


L = TypeVar("L", bound=type[DatasetLoader])


def register(name: str) -> Callable[[L], L]:
    """``@register("name")`` on a ``DatasetLoader``: ``--dataset name`` loads with it."""

    def deco(cls: L) -> L:
        cls.name = name
        return DATASETS.add(cls, name)

    return deco


def load_dataset(
    name: str, labels: str | os.PathLike | None = None, images: str | os.PathLike | None = None, **options
) -> LoadedDataset:
    """Load a registered dataset; ``options`` are the loader's (column names, ``header``, ``delimiter``...)."""
    return DATASETS.get(name)(labels, images, **options).load()  # type: ignore[call-arg]


def shared_data_root() -> Path:
    """The shared development split's folder: ``$GEOGUIDE_DATA``. Never guessed from where the
    package sits: installed, that is site-packages (the tests and ``make demo`` set the variable)."""
    env = os.environ.get("GEOGUIDE_DATA")
    if not env:
        raise LabelsError("no data folder: pass --labels (and --images), or set GEOGUIDE_DATA to a folder "
                           "with labels.csv and images/ (e.g. shared/data/im2gps3k)")
    return Path(env).expanduser()


# --------------------------------------------------------------------------------------- table files


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


# --------------------------------------------------------------------------------------------- EXIF


def _rational(v) -> float:
    """An EXIF rational as float: PIL's IFDRational, or a legacy (numerator, denominator) pair."""
    if isinstance(v, tuple) and len(v) == 2:
        num, den = v
        if den == 0:
            raise ValueError("zero denominator")
        return num / den
    return float(v)


def _dms(value, ref, axis: str) -> float:
    """Degrees/minutes/seconds plus an N/S/E/W reference -> signed decimal degrees."""
    parts = value if isinstance(value, list | tuple) else [value]  # D, M, S or already decimal degrees
    deg = sum(_rational(p) / 60.0**i for i, p in enumerate(parts[:3]))
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    ref = (ref or "").strip("\x00 ").upper()
    negative, positive = ("S", "N") if axis == "latitude" else ("W", "E")
    if ref == negative:
        return -abs(deg)
    if ref == positive:
        return abs(deg)
    if ref:
        raise ValueError(f"{axis} reference {ref!r} is not {positive}/{negative}")
    return deg  # no reference: keep the stored sign


def _gps_from_exif(exif: Image.Exif) -> tuple[float, float] | None:
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    if ExifTags.GPS.GPSLatitude not in gps or ExifTags.GPS.GPSLongitude not in gps:
        return None
    lat = _dms(gps[ExifTags.GPS.GPSLatitude], gps.get(ExifTags.GPS.GPSLatitudeRef), "latitude")
    lon = _dms(gps[ExifTags.GPS.GPSLongitude], gps.get(ExifTags.GPS.GPSLongitudeRef), "longitude")
    return lat, lon


def exif_gps(path: str | os.PathLike) -> tuple[float, float] | None:
    """(lat, lon) from a photo's EXIF GPS block, or None when it has none; ``ValueError`` if malformed."""
    with Image.open(path) as img:
        return _gps_from_exif(img.getexif())


def _read_exif(path: Path) -> tuple[tuple[float, float] | None, str | None]:
    """GPS and Artist from one open of the file."""
    with Image.open(path) as img:
        exif = img.getexif()
    artist = str(exif.get(ExifTags.Base.Artist) or "").strip("\x00 ")
    return _gps_from_exif(exif), artist or None


@register("exif")
class ExifLoader(DatasetLoader):
    """A folder of the user's own geotagged photos: ground truth is the EXIF GPS, author the EXIF Artist.

    Files with an image suffix but no (or broken) GPS are reported as bad rows; other files are ignored.
    """

    def __init__(
        self,
        labels: str | os.PathLike | None = None,
        images: str | os.PathLike | None = None,
        *,
        recursive: bool = False,
        require_images: bool = False,  # accepted for a uniform call; the photos are always there
    ) -> None:
        folder = images if images is not None else labels
        if folder is None or not Path(folder).is_dir():
            raise FileNotFoundError(f"exif: pass images=<folder of photos>, got {folder!r}")
        self.folder = Path(folder)
        self.recursive = recursive

    def load(self) -> LoadedDataset:
        report = LoadReport(dataset=self.name, source=str(self.folder))
        collector = _Collector(report, self.folder)
        files = self.folder.rglob("*") if self.recursive else self.folder.iterdir()
        for path in sorted(p for p in files if p.is_file() and p.suffix.lower() in EXIF_SUFFIXES):
            image_id = path.relative_to(self.folder).as_posix()
            if not inside(path, self.folder):  # refused before its EXIF is read
                report.skip(f"links to {path.resolve()}, outside the image folder {self.folder}; refused",
                            image_id=image_id)
                continue
            try:
                latlon, author = _read_exif(path)
            except (OSError, ValueError, ZeroDivisionError, TypeError) as exc:
                report.skip(f"unreadable EXIF ({exc})", image_id=image_id)
                continue
            if latlon is None:
                report.skip("no GPS in EXIF", image_id=image_id)
                continue
            collector.add(None, image_id, *latlon, author)
        return collector.finish(self.expected_n)
