"""Rows and ids of an opened index: row counts, tombstones, one row's fields, id -> row lookups
and descriptor reads across the parts (the base and each appended segment).

One of the three jobs ``ReferenceIndex`` (``indices.store``) puts together; the attributes it
reads (``_parts``, ``_offsets``, ``_starts``, ``_dead``...) are set when the index opens.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np

from geoguide.indices.parts import decode, search_sorted_ids


class IndexRows:
    """Row and id access over the opened parts; tombstoned rows are never handed out as live."""

    @property
    def n_rows(self) -> int:
        """Physical rows, tombstoned ones included: global row numbers run from 0 to this."""
        return int(self._offsets[-1])

    @property
    def n_dead(self) -> int:
        return len(self._dead)

    @property
    def tombstones(self) -> np.ndarray:
        """The removed (tombstoned) global rows, sorted; empty after a compaction."""
        return self._dead

    def part_arrays(self, name: str) -> list[np.ndarray]:
        """The base's and each segment's ``descriptors`` or ``codes``, memory-mapped, in row order."""
        return [getattr(p, name) for p in self._parts]

    def live_rows(self) -> np.ndarray:
        """Every row not removed, in row order (``arange(len(index))`` for an index without tombstones)."""
        if not len(self._dead):
            return np.arange(self.n_rows)
        keep = np.ones(self.n_rows, dtype=bool)
        keep[self._dead] = False
        return np.flatnonzero(keep)

    def live_column(self, name: str) -> np.ndarray:
        """One reference column (``REF_COLUMNS``) for the live rows, in row order, as an array."""
        col = self.refs[name]
        return np.asarray(col) if not len(self._dead) else col[self.live_rows()]

    def is_dead(self, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` were removed (tombstoned) and not compacted away yet."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self._dead):
            return np.zeros(len(rows), dtype=bool)
        pos = np.minimum(np.searchsorted(self._dead, rows), len(self._dead) - 1)
        return self._dead[pos] == rows

    def _live(self, rows: np.ndarray) -> np.ndarray:
        return rows if not len(self._dead) else rows[~self.is_dead(rows)]

    def _dead_in(self, a: int, b: int) -> int:
        """How many tombstoned rows lie in the global rows [a, b)."""
        d = self._dead_list
        return bisect.bisect_left(d, b) - bisect.bisect_left(d, a) if d else 0

    def _part_of(self, row: int) -> int:
        return bisect.bisect_right(self._starts, row) - 1

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        """fp16 descriptors of global rows, as float32, read with ``pread`` (see ``RowReader``)."""
        if len(self._parts) == 1:
            return self._rows.read(rows)
        which = np.searchsorted(self._offsets, rows, side="right") - 1
        out = np.empty((len(rows), self.manifest.descriptor.dim), dtype=np.float32)
        for j in np.unique(which):
            mask = which == j
            out[mask] = self._parts[j].reader.read(rows[mask] - self._parts[j].offset)
        return out

    def __len__(self) -> int:
        return self.manifest.n_references

    # ---- reference table ---------------------------------------------------------------------
    def row(self, i: int) -> dict[str, Any]:
        r = self.refs
        return {
            "row": int(i),
            "ref_id": decode(r["id"][i]),
            "author": decode(r["author"][i]),
            "country": decode(r["country"][i]),
            "path": decode(r["path"][i]),
            "lat": float(r["lat"][i]),
            "lon": float(r["lon"][i]),
        }

    def _ids_of(self, part: int) -> dict[str, int]:
        cache = self.__dict__.setdefault("_id_dicts", {})
        if part not in cache:
            cache[part] = {decode(b): i for i, b in enumerate(self._parts[part].refs["id"])}
        return cache[part]

    def row_of(self, ref_id: str) -> int | None:
        """The row of a live reference id: a binary search through each part's ``refs/id_order.npy``
        (memory-mapped, ~25 reads at 20M rows); indices written before it build an id -> row dict
        once. A removed id is None, even while its row is still on disk."""
        row = int(self.rows_of([ref_id])[0])
        return None if row < 0 else row

    def rows_of(self, ref_ids: Sequence[str]) -> np.ndarray:
        """The rows of many ids at once (-1: not in the index, or removed): the binary searches run
        side by side, one numpy gather per step instead of a Python loop per id."""
        encoded = [i.encode("utf-8") for i in ref_ids]
        keys = np.array(encoded or [b""], dtype=bytes)[: len(ref_ids)]
        out = np.full(len(keys), -1, dtype=np.int64)
        # numpy's fixed-width bytes drop trailing NULs, so "a.jpg\0" would match "a.jpg"; no stored id
        # can end in one (the same arrays hold them), so such a key is simply not in the index
        searchable = np.array([not k.endswith(b"\0") for k in encoded], dtype=bool)
        for j, p in enumerate(self._parts):
            todo = np.flatnonzero((out < 0) & searchable)
            if not len(todo):
                break
            if p.id_order is None:
                found = self._ids_of(j)
                local = np.array([found.get(k.decode("utf-8"), -1) for k in keys[todo]], dtype=np.int64)
            else:
                local = search_sorted_ids(p.refs["id"], p.id_order, keys[todo])
            hit = local >= 0
            rows = p.offset + local[hit]
            live = ~self.is_dead(rows)
            out[todo[hit][live]] = rows[live]
        return out
