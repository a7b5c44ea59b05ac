"""What an opened index is made of: its parts (the base and each appended segment), each scheme's
submap tables across them, selections of rows, and row-wise reads across the parts.

Split from ``indices.store`` (which opens an index and searches it) so that each module holds one
job. ``ConcatRows`` reads rows across the parts in place, so a map with segments is never joined
into one array; without segments every array is the base's own memory map.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoguide.geo.geometry import spherical_centroid
from geoguide.indices.manifest import MANIFEST_NAME, IndexFormatError, Manifest
from geoguide.indices.stores.base import RowReader
from geoguide.indices.submaps import Submap
from geoguide.indices.submaps.base import SchemePart


class ConcatRows:
    """Row-wise concatenation of memory-mapped arrays (the base's and each segment's), read in place.

    Indexing by an int, a slice or an array of rows reads only those rows (nothing is joined up
    front); ``np.asarray`` joins all of it. Byte-string columns come out as wide as the widest part.
    """

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        dt = parts[0].dtype
        if dt.kind == "S":
            dt = np.dtype(f"S{max(p.dtype.itemsize for p in parts)}")
        self.dtype = dt
        self.shape = (int(self.offsets[-1]), *parts[0].shape[1:])
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator:
        for p in self.parts:
            yield from p

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:])] if not isinstance(key[0], (int, np.integer)) \
                else self[key[0]][key[1:]]
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            j = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self.parts[j][i - self.offsets[j]]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            pieces = []
            for j, p in enumerate(self.parts):
                a, b = max(start, self.offsets[j]), min(stop, self.offsets[j + 1])
                if b > a:
                    pieces.append(np.asarray(p[a - self.offsets[j] : b - self.offsets[j]]))
            if not pieces:
                return np.empty((0, *self.shape[1:]), dtype=self.dtype)
            return np.concatenate(pieces).astype(self.dtype, copy=False)
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for j, p in enumerate(self.parts):
            mask = which == j
            if mask.any():
                out[mask] = p[idx[mask] - self.offsets[j]]
        return out


@dataclass
class Part:
    """The base or one segment, opened: its memory maps and where its rows start."""

    offset: int
    n: int
    refs: dict[str, np.ndarray]
    descriptors: np.ndarray
    codes: np.ndarray
    scan: np.ndarray  # the same codes as a plain ndarray view: slicing a memmap costs microseconds per query
    reader: RowReader
    id_order: np.ndarray | None
    tables: dict[str, SchemePart]
    mapped: dict[str, tuple[np.ndarray | None, np.ndarray | None]]  # each scheme's order and codes, the memory maps
    metas: dict[str, dict[str, Submap]]
    states: dict[str, dict]


def decode(b: bytes) -> str:
    return b.decode("utf-8")


def read_manifest(root: Path) -> Manifest:
    mpath = root / MANIFEST_NAME
    if not mpath.exists():
        hint = " (an interrupted build? run the same build command again to resume)" if (root / "work").exists() else ""
        raise IndexFormatError(f"{root}: not a geoguide index (no {MANIFEST_NAME}){hint}")
    try:
        return Manifest.model_validate_json(mpath.read_text())
    except ValueError as e:
        raise IndexFormatError(f"{mpath}: unreadable or unsupported manifest ({str(e).splitlines()[0]})") from None


def search_sorted_ids(ids: np.ndarray, order: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Local rows of ``keys`` (bytes) by binary search through ``ids`` in ``order``; -1 where absent."""
    n = len(order)
    lo, hi = np.zeros(len(keys), dtype=np.int64), np.full(len(keys), n, dtype=np.int64)
    while True:
        idx = np.flatnonzero(lo < hi)
        if not len(idx):
            break
        mid = (lo[idx] + hi[idx]) // 2
        less = ids[np.asarray(order[mid])] < keys[idx]
        lo[idx[less]] = mid[less] + 1
        hi[idx[~less]] = mid[~less]
    found = np.full(len(keys), -1, dtype=np.int64)
    inside = np.flatnonzero(lo < n)
    cand = np.asarray(order[lo[inside]], dtype=np.int64)
    match = ids[cand] == keys[inside]
    found[inside[match]] = cand[match]
    return found


def merged_submaps(parts: list[dict[str, Submap]], dead: dict[str, int]) -> dict[str, Submap]:
    """Every part's submaps of one scheme as one table: live sizes; centroid weighted by the parts'
    sizes and the largest 90% radius (removed rows do not move a centroid until compaction)."""
    out: dict[str, Submap] = {}
    for label in dict.fromkeys(lab for p in parts for lab in p):
        pieces = [p[label] for p in parts if label in p]
        size = sum(x.size for x in pieces) - dead.get(label, 0)
        if size <= 0:
            continue  # every reference removed: gone, as from a fresh build
        if len(pieces) == 1:
            out[label] = pieces[0] if size == pieces[0].size else pieces[0].model_copy(update={"size": size})
            continue
        lat, lon = spherical_centroid([x.lat for x in pieces], [x.lon for x in pieces], [x.size for x in pieces])
        radii = [x.radius_km for x in pieces if x.radius_km is not None]
        out[label] = pieces[0].model_copy(update={"lat": round(lat, 6), "lon": round(lon, 6), "size": size,
                                                  "radius_km": max(radii) if radii else None})
    return out
