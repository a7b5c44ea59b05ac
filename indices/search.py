"""Blocked search of an opened index: a selection's pieces scanned in place, merged, exact.

A submap is a contiguous slice of the codes in one scheme's order, so a search hands exactly
that slice to the store's scanner (``indices.stores``): it reads only the submap's own codes, in
one sequential pass. Radius submaps are rows found at query time, gathered chunk by chunk; a
union (what widening produces) is searched slice by slice and merged. One of the three jobs
``ReferenceIndex`` (``indices.store``) puts together.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from geoguide.indices.submaps.base import Selection

GATHER_CHUNK = 262_144  # rows of a radius submap gathered at a time (bounds the copy)
MERGE_ROWS = 2_048  # a submap's segment slices, up to this many rows in all, are gathered into one scan
GATHERED_KEPT = 1_024  # gathered segment pieces kept per opened index (at most MERGE_ROWS rows each)


class BlockedSearch:
    """Top-k by inner product over a selection, with exact exclusion of photographers and ids."""

    def search(
        self,
        query: np.ndarray,
        sel: Selection,
        k: int,
        exclude_authors: frozenset[str] = frozenset(),
        exclude_ids: frozenset[str] = frozenset(),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows of ``sel`` by inner product with ``query`` (D,), excluded ones dropped.

        Returns (rows, scores), best first; scores are exact inner products for every store.
        Exclusion is exact: candidates are over-fetched and the fetch grows until ``k``
        admissible rows are found or the selection is exhausted.
        """
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(-1))
        bad_authors = {a.encode("utf-8") for a in exclude_authors}
        bad_ids = {i.encode("utf-8") for i in exclude_ids}
        scanner = self.store.scanner(q)  # one per search, shared by its blocks (not by threads)
        results = [self._search_block(q, codes, rows_of, k, bad_authors, bad_ids, dead, scanner)
                   for codes, rows_of, dead in self._blocks(sel, bad_authors, bad_ids)]
        if not results:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        first_rows, first = results[0]
        if len(results) == 1 or (len(first) >= k and all(not len(x) or x[0] <= first[k - 1] for _, x in results[1:])):
            return first_rows[:k], first[:k]  # already best first, nothing else reaches its top k (ties: first wins)
        rows = np.concatenate([r for r, _ in results])
        scores = np.concatenate([s for _, s in results])
        top = np.argsort(-scores, kind="stable")[:k]
        return rows[top], scores[top]

    def _blocks(self, sel: Selection, bad_authors, bad_ids) -> Iterator[tuple[np.ndarray, int | np.ndarray, int]]:
        """(codes, rows, removed) pieces of a selection: slices of mapped codes, or gathered ones.

        ``rows`` is the first row of a storage-order slice, or an array mapping positions to rows;
        ``removed`` is how many tombstoned rows the piece holds (-1: some, how many not counted).
        The base's slices are scanned in place; the segments' small slices of a submap (what was
        added since the last compaction) are gathered into one piece, one scan for them all, and
        the gathered piece is kept for the next search of the same submap (segments never change).
        """
        added: list[tuple] = []  # ("r", global start, end) or (scheme prefix, part, start, end)
        for a, b in sel.ranges:
            if b > a:
                j = self._part_of(a)
                if j == 0:
                    yield self._parts[0].scan[a:b], a, self._dead_in(a, b)
                else:
                    added.append(("r", j, a, b))
        for prefix, j, a, b in sel.permuted:
            if b > a:
                t = self.schemes[prefix].parts[j]
                if j == 0:
                    yield t.codes[a:b], np.asarray(t.order[a:b]), -1 if self._dead_in(0, self._parts[0].n) else 0
                else:
                    added.append((prefix, j, a, b))
        if len(added) == 1 or sum(x[3] - x[2] for x in added) > MERGE_ROWS:
            yield from map(self._segment_piece, added)  # whole segments (global, say): each scanned in place
        elif added:
            key = tuple(added)
            piece = self._gathered.get(key)
            if piece is None:
                pieces = [self._segment_piece(x) for x in added]
                removed = -1 if any(d < 0 for _, _, d in pieces) else sum(d for _, _, d in pieces)
                rows = [np.arange(r, r + len(c)) if isinstance(r, int) else r for c, r, _ in pieces]
                piece = (np.concatenate([c for c, _, _ in pieces]), np.concatenate(rows), removed)
                if len(self._gathered) >= GATHERED_KEPT:
                    self._gathered.clear()
                self._gathered[key] = piece
            yield piece
        if sel.rows is not None and len(sel.rows):
            rows = np.asarray(sel.rows)
            rows = rows[self._admissible(rows, bad_authors, bad_ids)]  # removed rows too
            which = np.searchsorted(self._offsets, rows, side="right") - 1 if len(self._parts) > 1 else None
            for j, p in enumerate(self._parts):
                mine = rows if which is None else rows[which == j]
                for s in range(0, len(mine), GATHER_CHUNK):
                    part = mine[s : s + GATHER_CHUNK]
                    yield p.scan[part - p.offset if p.offset else part], part, 0

    def _segment_piece(self, item: tuple) -> tuple[np.ndarray, int | np.ndarray, int]:
        if item[0] == "r":
            _, j, a, b = item
            p = self._parts[j]
            return p.scan[a - p.offset : b - p.offset], a, self._dead_in(a, b)
        prefix, j, a, b = item
        t, n = self.schemes[prefix].parts[j], self._parts[j].n
        return t.codes[a:b], t.offset + np.asarray(t.order[a:b]), -1 if self._dead_in(t.offset, t.offset + n) else 0

    def _admissible(self, rows: np.ndarray, bad_authors: set[bytes], bad_ids: set[bytes]) -> np.ndarray:
        keep = np.ones(len(rows), dtype=bool)
        if bad_authors:
            keep &= ~np.isin(self.refs["author"][rows], list(bad_authors))
        if bad_ids:
            keep &= ~np.isin(self.refs["id"][rows], list(bad_ids))
        if len(self._dead):
            keep &= ~self.is_dead(rows)
        return keep

    def _search_block(self, q, codes: np.ndarray, rows_of, k: int, bad_authors, bad_ids,
                      dead: int = 0, scanner=None) -> tuple[np.ndarray, np.ndarray]:
        n = len(codes)
        # Room for the removed rows the block holds, up to k/2 of them (a longer heap slows the scan:
        # +5% from 10 to 30; more removed rows than that among the best is rare, and then the
        # fetch grows below); with exclusions, room for those too.
        room = max(4, k // 2)
        extra = min(dead, room) if dead >= 0 else room
        fetch = min(n, k + extra + (3 * k + 16 if bad_authors or bad_ids else 0))
        exact = self.store.exact
        while True:
            shortlist = self.store.shortlist(fetch, n)
            scores, pos = self.store.scan(q, codes, shortlist, scanner)
            rows = rows_of + pos if isinstance(rows_of, int) else rows_of[pos]
            if not exact:  # re-score the shortlist from the fp16 descriptors: exact scores, true order
                scores = self._read_rows(rows) @ q
                order = np.argsort(-scores, kind="stable")
                rows, scores = rows[order], scores[order]
            bad = bool(bad_authors or bad_ids)
            if not bad and (not dead or self._dead_set.isdisjoint(rows.tolist())):  # every row admissible
                if len(rows) >= k or shortlist >= n:
                    return rows[:k], scores[:k]
                keep = np.ones(len(rows), dtype=bool)
            else:
                keep = self._admissible(rows, bad_authors, bad_ids)
            if keep.sum() >= k or shortlist >= n:
                return rows[keep][:k], scores[keep][:k]
            fetch = min(n, fetch * 4)
