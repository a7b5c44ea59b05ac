"""What every photo-set loader shares: ``Sample``, ``LoadReport``, the registry, ``load_dataset``."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from geoguide.core.errors import GeoguideError
from geoguide.core.registry import Registry
from geoguide.geo.geometry import validate_latlon

logger = logging.getLogger(__name__)

MAX_PROBLEMS = 20  # enough to diagnose a bad file without flooding a log or a run summary
MAX_DROPPED = 1000  # dropped rows listed one by one in a report; the counts are always exact
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


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
