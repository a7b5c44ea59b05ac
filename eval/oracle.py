"""The retrieval ceiling: per query, the reference nearest by GPS (not by appearance) that another
photographer took, written as an ordinary run so it sits in the same tables as the agent."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from geoguide.eval.records import RunRecord, RunSummary, TopRef, error_km_of
from geoguide.eval.runner import DatasetRef, _Run, coverage_of, index_info
from geoguide.geo.geometry import haversine_km, latlon_to_unit
from geoguide.indices.photosets import Sample
from geoguide.indices.store import ReferenceIndex


class OracleMatch(BaseModel):
    image_id: str
    ref_id: str | None
    ref_author: str | None = None
    lat: float | None
    lon: float | None
    error_km: float | None


def oracle_matches(
    samples: Sequence[Sample], index: ReferenceIndex, exclude_same_author: bool = True, fetch: int = 32
) -> list[OracleMatch]:
    """Per query, the reference nearest by GPS (not by appearance) that is not the query itself and,
    with ``exclude_same_author``, not by its photographer: the ceiling for pure retrieval."""
    import faiss

    refs = {c: index.live_column(c) for c in ("id", "author", "lat", "lon")}  # removed rows left out
    ids = np.array([b.decode("utf-8") for b in refs["id"]], dtype=object)
    authors = np.array([b.decode("utf-8") for b in refs["author"]], dtype=object)
    coords = faiss.IndexFlatL2(3)
    coords.add(latlon_to_unit(refs["lat"], refs["lon"]).astype(np.float32))
    queries = latlon_to_unit([s.lat for s in samples], [s.lon for s in samples]).astype(np.float32)
    out: list[OracleMatch | None] = [None] * len(samples)
    pending = np.arange(len(samples))
    k = min(fetch, coords.ntotal)
    while len(pending):
        _, rows = coords.search(queries[pending], k)
        missing = []
        for qi, row in zip(pending, rows, strict=True):
            s = samples[qi]
            ok = [
                r
                for r in row
                if r >= 0
                and ids[r] != s.image_id
                and not (exclude_same_author and s.author and authors[r] == s.author)
            ]
            if ok:  # float32 chords only shortlist: near-ties are settled by exact float64 distances
                exact = haversine_km(s.lat, s.lon, np.asarray(refs["lat"])[ok], np.asarray(refs["lon"])[ok])
                r = ok[int(np.argmin(exact))]
                la, lo = float(refs["lat"][r]), float(refs["lon"][r])
                out[qi] = OracleMatch(
                    image_id=s.image_id,
                    ref_id=ids[r],
                    ref_author=authors[r],
                    lat=la,
                    lon=lo,
                    error_km=error_km_of(s, la, lo),
                )
            elif k >= coords.ntotal:
                out[qi] = OracleMatch(image_id=s.image_id, ref_id=None, lat=None, lon=None, error_km=None)
            else:
                missing.append(qi)
        pending, k = np.array(missing, dtype=np.int64), min(2 * k, coords.ntotal)
    return [m for m in out if m is not None]


def oracle_errors(
    samples: Sequence[Sample], index: ReferenceIndex, exclude_same_author: bool = True
) -> np.ndarray:
    """The oracle's error per sample (NaN where no admissible reference exists)."""
    return np.array(
        [
            np.nan if m.error_km is None else m.error_km
            for m in oracle_matches(samples, index, exclude_same_author)
        ]
    )


def run_oracle(
    samples: Sequence[Sample],
    index: ReferenceIndex,
    out_dir: str | Path,
    *,
    exclude_same_author: bool = True,
    limit: int | None = None,
    resume: bool = True,
    dataset: DatasetRef | None = None,
) -> RunSummary:
    """The oracle written as a run (same files), so it sits in the same tables as the agent."""
    chosen = list(samples[:limit] if limit else samples)
    matches = {m.image_id: m for m in oracle_matches(chosen, index, exclude_same_author)}
    identity = {
        "kind": "oracle",
        "index": index_info(index),
        "exclude_same_author": exclude_same_author,
        "dataset": dataset.model_dump(exclude={"report"}) if dataset else None,
    }

    def evaluate(s: Sample) -> RunRecord:
        m = matches[s.image_id]
        return RunRecord.of(
            s,
            lat=m.lat,
            lon=m.lon,
            error_km=m.error_km,
            source="oracle",
            trail=["global"],
            notes=[] if m.ref_id else ["no admissible reference"],
            top_refs=[]
            if m.ref_id is None or m.lat is None or m.lon is None
            else [TopRef(ref_id=m.ref_id, author=m.ref_author or "", lat=m.lat, lon=m.lon, similarity=1.0)],
        )

    info = {
        "index_path": str(index.root.resolve()),
        "dataset_report": dataset.report.model_dump() if dataset and dataset.report else None,
    }
    return _Run(out_dir, identity, info, resume, coverage_of(dataset)).execute(
        chosen, evaluate, limit=None, workers=1, progress=False
    )
