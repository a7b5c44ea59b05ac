"""Vectors computed elsewhere: an index from them (``geoguide index import``) and queries described
elsewhere (``--query-vectors``).

People describe MP-16 (4.7M photos) on a GPU cluster; describing it twice is hours. Two formats:

* ``.npy``: an (N, D) float16 / float32 / float64 array, **one row per labels row, in the labels
  file's order** (bad label rows count: row i is the file's i-th data row). Read memory-mapped, a
  chunk at a time, so a 5M x 512 file needs no more memory than a built index.
* ``.parquet``: an ``IMG_ID`` column (string) and one vector column (a list of floats; named with
  ``vector_column`` when there are several). Rows are matched by id, in any order; the id column
  and the vectors are read whole (Arrow), so keep very large maps in ``.npy``.

Vectors are L2-normalised on the way in (inner product = cosine, as every built index). A row that
is not finite or is all zeros is skipped, counted and named like a bad label row: nothing is lost
silently. The index is an ordinary one (same submaps, stores, calibration, updates); its descriptor
is ``imported`` (``indices.descriptors.imported``), which refuses to describe a photo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geoguide.core import atomic
from geoguide.core.errors import GeoguideError
from geoguide.indices.descriptors import get_descriptor
from geoguide.indices.manifest import Manifest, SourceInfo
from geoguide.indices.photosets import Sample
from geoguide.indices.submaps import parse_schemes

log = logging.getLogger(__name__)

COPY_ROWS = 65_536  # rows converted at a time (fp32 working copy: 128 MB at D=512)
FORMATS = (".npy", ".parquet")


class VectorsError(GeoguideError, ValueError):
    """A vectors file that cannot be used; the message names the file and the fix."""


class VectorTable:
    """Vectors addressed by row (``.npy``) or by photo id (Parquet); ``rows_of`` maps samples to rows."""

    def __init__(self, path: Path, array, ids: list[str] | None) -> None:
        self.path, self.array, self.ids = path, array, ids
        self._by_id = {i: n for n, i in enumerate(ids)} if ids is not None else None

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def row_of(self, sample_id: str, ordinal: int | None) -> int | None:
        """The row holding this photo: by id (Parquet) or by its position in the labels file (.npy)."""
        if self._by_id is not None:
            return self._by_id.get(sample_id)
        return ordinal if ordinal is not None and 0 <= ordinal < len(self) else None

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted or not) as float32, L2-normalised; bad rows come back as NaN."""
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        out[order] = np.asarray(self.array[np.asarray(idx)[order]], dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
        out /= np.where(bad[:, None], 1.0, norms)
        out[bad] = np.nan
        return out


def open_vectors(path: str | Path, vector_column: str | None = None) -> VectorTable:
    """Open a ``.npy`` or ``.parquet`` vectors file (see the module docstring); ``VectorsError`` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise VectorsError(f"{path}: no such vectors file")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise VectorsError(f"{path}: not a readable .npy array ({e})") from None
        _check_array(path, arr)
        return VectorTable(path, arr, None)
    if path.suffix.lower() == ".parquet":
        return _open_parquet(path, vector_column)
    raise VectorsError(f"{path}: vectors must be {' or '.join(FORMATS)}, not {path.suffix or 'a file without suffix'}")


def _check_array(path: Path, arr: np.ndarray) -> None:
    if arr.ndim != 2 or arr.shape[1] < 2 or arr.shape[0] < 1:
        raise VectorsError(f"{path}: expected an (N, D) array of vectors, got shape {arr.shape}")
    if arr.dtype not in (np.float16, np.float32, np.float64):
        raise VectorsError(f"{path}: vectors must be float16, float32 or float64, not {arr.dtype}")


def _open_parquet(path: Path, vector_column: str | None) -> VectorTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, memory_map=True)
    except (pa.ArrowException, OSError) as e:
        raise VectorsError(f"{path}: not a readable Parquet file ({e})") from None
    names = {n.lower(): n for n in table.column_names}
    if "img_id" not in names:
        raise VectorsError(f"{path}: no IMG_ID column (columns: {table.column_names})")
    lists = [n for n in table.column_names
             if pa.types.is_list(table.schema.field(n).type) or pa.types.is_fixed_size_list(table.schema.field(n).type)
             or pa.types.is_large_list(table.schema.field(n).type)]
    if vector_column is not None:
        if vector_column not in table.column_names:
            raise VectorsError(f"{path}: no column {vector_column!r} (columns: {table.column_names})")
        lists = [vector_column]
    if len(lists) != 1:
        raise VectorsError(f"{path}: {'no' if not lists else 'several'} vector (list) columns {lists}; "
                           "name the one to use (--vector-column)")
    column = table.column(lists[0]).combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False) if hasattr(column, "value_lengths") else None
    if lengths is not None and (len(set(lengths.tolist())) != 1 or column.null_count):
        raise VectorsError(f"{path}: column {lists[0]!r} holds vectors of different lengths or missing ones")
    arr = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    _check_array(path, arr)
    ids = [str(i) for i in table.column(names["img_id"]).to_pylist()]
    if len(set(ids)) != len(ids):
        raise VectorsError(f"{path}: IMG_ID repeats an id; each photo needs one vector")
    return VectorTable(path, arr, ids)


def matched_rows(table: VectorTable, samples: Sequence[Sample]) -> tuple[np.ndarray, list[str]]:
    """The vector row of each sample (-1 where there is none) and why each missing one is missing."""
    if table.ids is None:
        expected = max((s.row for s in samples if s.row is not None), default=-1) + 1
        if len(table) < expected:
            raise VectorsError(f"{table.path}: {len(table)} vectors for a labels file of at least {expected} rows; "
                               "a .npy holds one row per labels row, in order")
    found = [table.row_of(s.image_id, s.row) for s in samples]
    missing = [f"{s.image_id}: no vector in {table.path.name}" for s, r in zip(samples, found, strict=True) if r is None]
    return np.array([-1 if r is None else r for r in found], dtype=np.int64), missing


def import_index(vectors: str | Path, samples: Sequence[Sample], out_dir: str | Path, *,
                 descriptor_name: str = "imported", submaps: str = "country,kmeans:100", store: str = "fp16",
                 source: SourceInfo | None = None, vector_column: str | None = None,
                 overwrite: bool = False) -> Manifest:
    """Write an index at ``out_dir`` from precomputed vectors and the samples' locations."""
    from geoguide.geo import countries_at
    from geoguide.indices.build import IndexExistsError, clear_index, what_is_there
    from geoguide.indices.writer import save_rows, write_index

    table = open_vectors(vectors, vector_column)
    schemes = parse_schemes(submaps)
    out = Path(out_dir)
    rows, problems = matched_rows(table, samples)
    key = _import_key(table, samples, descriptor_name, submaps, store)
    in_the_way = what_is_there(out, key)
    if in_the_way is not None:
        if not overwrite:
            raise IndexExistsError(f"{in_the_way}; pass --overwrite to replace it, or choose another folder")
        clear_index(out)
    work = out / "work"
    # the scratch copy and the index's own (fp16), plus the reference table: refused before any write
    atomic.check_room(out, 2 * len(samples) * table.dim * 2 + 400 * len(samples), f"importing {len(samples)} vectors")
    work.mkdir(parents=True, exist_ok=True)
    atomic.write_text(work / "build_key.txt", key + "\n")  # marks the scratch folder as ours
    try:
        keep = np.flatnonzero(rows >= 0)
        scratch = work / "vectors.f16.npy"
        bad = np.zeros(len(keep), dtype=bool)

        def fill(s: int, e: int) -> np.ndarray:
            v = table.rows(rows[keep[s:e]])
            bad[s:e] = np.isnan(v[:, 0])
            return np.nan_to_num(v, nan=0.0).astype(np.float16)

        save_rows(scratch, len(keep), (table.dim,), np.float16, fill)
        problems += [f"{samples[i].image_id}: its vector is all zeros or not finite" for i in keep[bad]]
        good = keep[~bad]
        if not len(good):
            raise VectorsError(f"{table.path}: none of the {len(samples)} labelled photos has a usable vector")
        if problems:
            log.warning("%d of %d labelled photos have no usable vector and were skipped; first: %s",
                        len(problems), len(samples), problems[0])
        vecs = np.load(scratch, mmap_mode="r")
        parts = [vecs] if not bad.any() else [vecs[np.flatnonzero(~bad)]]
        lat = np.array([samples[i].lat for i in good], dtype=np.float64)
        lon = np.array([samples[i].lon for i in good], dtype=np.float64)
        src = (source or SourceInfo()).model_copy(update={
            "n_bad_rows": (source.n_bad_rows if source else 0) + len(problems),
            "problems": [*(source.problems if source else []), *problems][:20]})
        descriptor = get_descriptor("imported", {"name": descriptor_name, "dim": table.dim})
        manifest = write_index(out, ids=[samples[i].image_id for i in good],
                               authors=[samples[i].author or "" for i in good], paths=["" for _ in good],
                               lat=lat, lon=lon, country=countries_at(lat, lon), descriptors=parts,
                               descriptor=descriptor, schemes=schemes, store=store, source=src, build_key=key)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _import_key(table: VectorTable, samples: Sequence[Sample], *options: str) -> str:
    """What the index is made from: the vectors file (path, size, modification time), the options and
    every labelled row, so the same import again rewrites in place and any other is refused."""
    st = table.path.stat()
    h = hashlib.sha256(json.dumps(["import", str(table.path.resolve()), st.st_size, st.st_mtime_ns, *options]).encode())
    for s in samples:
        h.update(f"{s.image_id}\t{s.row}\t{s.lat:.7f}\t{s.lon:.7f}\t{s.author}\n".encode())
    return h.hexdigest()


class QueryVectors:
    """Queries described elsewhere (``--query-vectors``): photo id -> float32 unit vector."""

    def __init__(self, table: VectorTable, samples: Sequence[Sample] | None = None) -> None:
        self.table = table
        if table.ids is None:
            if samples is None:
                raise VectorsError(f"{table.path}: a .npy of query vectors needs the labels file it follows "
                                   "(row i = the labels' i-th row); for single photos use Parquet with IMG_ID")
            rows, _ = matched_rows(table, samples)
            self._rows = {s.image_id: int(r) for s, r in zip(samples, rows, strict=True) if r >= 0}
        else:
            self._rows = {i: n for n, i in enumerate(table.ids)}

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._rows

    def get(self, image_id: str) -> np.ndarray | None:
        row = self._rows.get(image_id)
        if row is None:
            return None
        v = self.table.rows(np.array([row]))[0]
        if np.isnan(v[0]):
            raise VectorsError(f"{self.table.path}: the vector of {image_id} is all zeros or not finite")
        return v
