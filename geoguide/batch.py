"""Locate a folder of photos: one row per photo in CSV, JSON Lines, GeoJSON or KML, resumable.

``geoguide locate DIR --out results.geojson`` and ``Geolocator.locate_many`` underneath. Why a
journal: a batch over thousands of photos with a remote model runs for hours and is killed,
interrupted or hits a bad file; every finished photo is appended (flushed and fsynced) to a JSON
Lines journal the moment it finishes, so a re-run skips what is done and the output file, written
atomically from the journal at the end (and on Ctrl-C), never holds a torn row. With
``--out x.jsonl`` the journal is the output; with another format it sits beside it
(``x.geojson.jsonl``).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

from pydantic import BaseModel, Field, ValidationError

from geoguide.agent.backends.errors import ModelServiceError
from geoguide.agent.state import Prediction
from geoguide.api import Geolocator, LocatedPhoto
from geoguide.core import atomic
from geoguide.core.errors import GeoguideError
from geoguide.core.progress import Progress
from geoguide.core.version import __version__
from geoguide.eval.records import now_utc
from geoguide.indices.photosets import IMAGE_SUFFIXES, exif_gps

FORMATS = (".csv", ".jsonl", ".geojson", ".kml")


class BatchError(GeoguideError, ValueError):
    """A batch that cannot start (no photo found, an output format geoguide does not write) or in
    which no photo could be located."""


class BatchRow(BaseModel):
    """One photo's line in every output format."""

    photo: str = Field(description="the photo's path, absolute (the resume key)")
    status: Literal["located", "failed"]
    lat: float | None = None
    lon: float | None = None
    country: str | None = None
    place: str | None = Field(None, description="nearest city, country")
    confidence: float | None = Field(None, description="P(within 25 km of the truth), calibrated (agent.trust)")
    p_1km: float | None = Field(None, description="P(within 1 km of the truth)")
    p_25km: float | None = None
    p_200km: float | None = None
    p_750km: float | None = None
    p_2500km: float | None = None
    probability_source: str | None = Field(None, description="map | profile | stated | default")
    radius_km: float | None = Field(None, description="error radius at radius_coverage (--calibration); None: "
                                    "uncalibrated")
    radius_coverage: float | None = None
    source: str | None = Field(None, description="what the answer rests on: prior, retrieval, llm, ...")
    why: str | None = None
    prior_lat: float | None = None
    prior_lon: float | None = None
    exif_gps: bool = Field(False, description="the photo's EXIF already holds GPS coordinates")
    exif_lat: float | None = None
    exif_lon: float | None = None
    error: str | None = Field(None, description="why the photo has no answer")
    error_kind: str | None = Field(None, description="the failure's class, e.g. ImageLoadError, ModelServiceError")
    finished_utc: str = ""
    geoguide: str = __version__

    @classmethod
    def of(cls, item: LocatedPhoto) -> BatchRow:
        path = str(Path(item.photo).resolve())
        gps = _exif_point(item.photo)
        exif = {"exif_gps": gps is not None, "exif_lat": gps[0] if gps else None, "exif_lon": gps[1] if gps else None}
        pred = item.prediction
        if pred is None or pred.lat is None:
            reason = item.error or _no_answer(pred)
            return cls(photo=path, status="failed", error=reason, error_kind=item.error_kind, finished_utc=now_utc(),
                       **exif)
        return cls(photo=path, status="located", lat=pred.lat, lon=pred.lon, country=pred.country,
                   place=", ".join(x for x in (pred.nearest_city, pred.country_name) if x) or None,
                   confidence=pred.confidence, source=pred.source, why=pred.why,
                   **{f"p_{k}km": v for k, v in pred.p_within_km.items()},
                   probability_source=pred.probability_source, radius_km=pred.radius_km,
                   radius_coverage=pred.radius_coverage,
                   prior_lat=pred.prior.lat if pred.prior is not None else None,
                   prior_lon=pred.prior.lon if pred.prior is not None else None,
                   finished_utc=now_utc(), **exif)


class BatchSummary(BaseModel):
    photos: int = Field(description="photos named by the inputs")
    located: int = Field(description="photos with an answer (this run and earlier ones)")
    failed: int
    skipped: int = Field(description="photos already located by an earlier run (resumed)")
    exif_gps: int = Field(description="photos whose EXIF already held GPS")
    out: str | None = None


def _no_answer(pred: Prediction | None) -> str:
    if pred is None:
        return "no prediction"
    return "; ".join(pred.notes) or pred.prior_error or "the agent found no answer"


def _exif_point(photo: str) -> tuple[float, float] | None:
    try:
        return exif_gps(photo)
    except Exception:  # a photo without readable EXIF is simply one without GPS
        return None


# ---- inputs ----------------------------------------------------------------------------------


def expand_photos(inputs: Iterable[str]) -> list[Path]:
    """PHOTO, DIR (its photos, recursively) or GLOB (``'trip/**/*.jpg'``), in a stable order,
    each photo once. An input that names nothing is an error, not a silently smaller batch."""
    found: dict[Path, None] = {}
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            hits = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not hits:
                raise BatchError(f"{raw}: a folder with no photos in it ({', '.join(IMAGE_SUFFIXES)})")
        elif path.exists() or not glob.has_magic(raw):
            hits = [path]  # a missing file is reported by the loader, with the others going on
        else:
            hits = sorted(Path(p) for p in glob.glob(os.path.expanduser(raw), recursive=True) if Path(p).is_file())
            if not hits:
                raise BatchError(f"{raw}: the pattern matches no file")
        found.update(dict.fromkeys(hits))
    if not found:
        raise BatchError("no photo given")
    return list(found)


# ---- the journal and the outputs ------------------------------------------------------------


def journal_path(out: Path) -> Path:
    return out if out.suffix.lower() == ".jsonl" else out.with_name(out.name + ".jsonl")


def read_journal(path: Path) -> dict[str, BatchRow]:
    """photo -> its latest row; a torn last line (a kill mid-write) is skipped, and rewritten later."""
    rows: dict[str, BatchRow] = {}
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = BatchRow.model_validate_json(line)
            except ValidationError:
                if f.read().strip():  # only the last line may be torn; anything else is not ours
                    raise BatchError(f"{path}:{n}: not a geoguide batch row; pass another --out") from None
                break
            rows[row.photo] = row
    return rows


def render(rows: list[BatchRow], fmt: str) -> str:
    """Rows as CSV, JSON Lines, a GeoJSON FeatureCollection or a KML document (located photos as
    points; failed ones as rows or features without geometry, so every photo appears)."""
    if fmt == ".jsonl":
        return "".join(r.model_dump_json() + "\n" for r in rows)
    if fmt == ".csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(BatchRow.model_fields), lineterminator="\n")
        w.writeheader()
        w.writerows(r.model_dump(mode="json") for r in rows)
        return buf.getvalue()
    if fmt == ".geojson":
        feats = [{"type": "Feature",
                  "geometry": None if r.lat is None else {"type": "Point", "coordinates": [r.lon, r.lat]},
                  "properties": r.model_dump(mode="json", exclude={"lat", "lon"})} for r in rows]
        return json.dumps({"type": "FeatureCollection", "features": feats}, ensure_ascii=False, indent=1) + "\n"
    if fmt == ".kml":
        return _kml(rows)
    raise BatchError(f"cannot write {fmt!r}; --out takes {', '.join(FORMATS)}")


def _kml(rows: list[BatchRow]) -> str:
    marks = []
    for r in rows:
        if r.lat is None:
            continue
        data = "".join(f'<Data name="{k}"><value>{escape(str(v))}</value></Data>'
                       for k, v in r.model_dump(exclude={"lat", "lon"}).items() if v is not None)
        marks.append(f"<Placemark><name>{escape(Path(r.photo).name)}</name>"
                     f"<description>{escape(r.why or '')}</description><ExtendedData>{data}</ExtendedData>"
                     f"<Point><coordinates>{r.lon},{r.lat},0</coordinates></Point></Placemark>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<kml xmlns="http://www.opengis.net/kml/2.2"><Document>'
            "<name>geoguide</name>" + "".join(marks) + "</Document></kml>\n")


def check_out(out: Path) -> str:
    fmt = out.suffix.lower()
    if fmt not in FORMATS:
        raise BatchError(f"{out}: cannot write {fmt or 'a file without a suffix'}; --out takes {', '.join(FORMATS)}")
    return fmt


# ---- the run ---------------------------------------------------------------------------------


def run_batch(geolocator: Geolocator, photos: list[Path], out: Path | None, *, workers: int = 1,
              progress: bool | str = True, emit=None) -> BatchSummary:
    """Locate ``photos`` (skipping those an earlier run located), journal each row as it finishes,
    and write ``out`` in its format; ``emit(row)`` sees each new row (the CLI prints them)."""
    fmt = check_out(out) if out is not None else None
    journal = journal_path(out) if out is not None else None
    done = read_journal(journal) if journal is not None else {}
    todo = [p for p in photos if (r := done.get(str(p.resolve()))) is None or r.status != "located"]
    bar = Progress(len(todo), "locating", "photos", mode=progress)
    rows = dict(done)
    try:
        for row in _journaled(geolocator.locate_many(todo, workers=workers), journal):
            rows[row.photo] = row
            bar.update(1, failed=row.status == "failed")
            if emit is not None:
                emit(row)
    finally:
        bar.close()
        if out is not None and fmt != ".jsonl":
            atomic.write_text(out, render(list(rows.values()), fmt))
    wanted = [rows[k] for k in (str(p.resolve()) for p in photos) if k in rows]
    summary = BatchSummary(photos=len(photos), located=sum(r.status == "located" for r in wanted),
                           failed=sum(r.status == "failed" for r in wanted), skipped=len(photos) - len(todo),
                           exif_gps=sum(r.exif_gps for r in wanted), out=None if out is None else str(out))
    if summary.located == 0:
        reasons = sorted({r.error or "" for r in wanted if r.error})
        text = f"no photo could be located ({summary.failed} failed: {'; '.join(reasons[:3])})"
        if wanted and all(r.error_kind == ModelServiceError.__name__ for r in wanted):
            raise ModelServiceError(text)  # exit 3: the model, not the photos
        raise BatchError(text)
    return summary


def _drop_torn_tail(path: Path) -> None:
    """A kill mid-write leaves a last line without its newline: cut it, so the next row starts clean."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0 or (f.seek(size - 1), f.read(1))[1] == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def _journaled(items: Iterator[LocatedPhoto], journal: Path | None) -> Iterator[BatchRow]:
    if journal is not None:
        _drop_torn_tail(journal)
    f = open(journal, "a", encoding="utf-8") if journal is not None else None  # noqa: SIM115 - closed below
    try:
        for item in items:
            row = BatchRow.of(item)
            if f is not None:
                f.write(row.model_dump_json() + "\n")
                f.flush()
                os.fsync(f.fileno())
            yield row
    finally:
        if f is not None:
            f.close()
