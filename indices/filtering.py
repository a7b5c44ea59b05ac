"""Reference hygiene for big external maps: near-duplicate photos and references near benchmark queries.

Two rules, applied by ``index build --dedupe / --exclude-near`` and by ``index filter`` on a built index;
every removed reference is written to ``removed.csv`` in the index folder with the rule and the evidence.

**Leakage (``--exclude-near LABELS.csv --km R``).** A reference within R km of any query location of a
benchmark is dropped, the OSV-5M separation rule (train and test images at least 1 km apart), so a map
built from a crawl cannot hold the test photo's twin. The queries go into a k-d tree over unit vectors
(the chord for R km is the Euclidean bound) and each reference asks for its nearest query: O(n log q).
Measured (``benchmarks/filtering.py``): 5M references against 210k query points (OSV-5M's test set
size), 1 km, in 7.5-11.7 s on one core of a shared machine (two runs).

**Duplicates (``--dedupe``).** Exact duplicates are files with the same SHA-256. Near-duplicates are
photos whose 128-bit difference hash (dHash: the greyscale image box-averaged to 9x9, one bit per
horizontal and one per vertical neighbour comparison on the 8x8 grid) differ in at most
``max_hamming`` bits (default 5). Why 128 bits and 5, measured on the 1,630 photos of the shared split:
a JPEG q50 re-encode, a half-size copy and a +10 brightness copy each stay within 5 bits for 99% of the
photos (a 1% crop for 72%), while the closest pair of *different* photos is 7 bits apart (none of the
1.33M pairs within 5). A 64-bit horizontal-only dHash was not enough: 13 pairs of unrelated photos
within 4 bits. The search is exact: FAISS ``IndexBinaryMultiHash`` with ``max_hamming + 1`` tables on
disjoint bit blocks (pigeonhole: a code within t bits agrees with its twin on one whole block); 1M
codes with 10k planted near copies (5 bits off): all found, in 16-17 s on one thread.
Which copy stays: the first in the reference order (input order for a build, stored order for
``index filter``); a photo is dropped only when it is within the threshold of a photo that was *kept*.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from geoguide.core import atomic
from geoguide.core.errors import GeoguideError
from geoguide.geo.geometry import EARTH_RADIUS_KM, km_to_chord, latlon_to_unit

log = logging.getLogger(__name__)

REMOVED_NAME = "removed.csv"
REMOVED_HEADER = ["id", "path", "lat", "lon", "rule", "detail"]
HASH_BYTES = 16  # 128-bit dHash
DEFAULT_MAX_HAMMING = 5
SEARCH_BLOCK = 65_536  # codes per range search: bounds the result lists' memory


class FilterError(GeoguideError, ValueError):
    """Filter options or a query-locations file that cannot be used; the message says why."""


class ExcludeNear(BaseModel):
    """The benchmark locations references must keep away from (part of an index's identity)."""

    labels: str = Field(description="the query labels file, as given")
    km: float = Field(gt=0, description="references closer than this to any query are dropped")
    n_points: int
    digest: str = Field(description="sha256 of the query coordinates: a changed file is another index")


class QueryPoints(BaseModel):
    spec: ExcludeNear
    ids: list[str]
    lat: list[float]
    lon: list[float]


class FilterConfig(BaseModel):
    dedupe: bool = Field(False, description="drop exact and perceptual-hash near-duplicate images")
    max_hamming: int = Field(DEFAULT_MAX_HAMMING, ge=0, le=32, description="near-duplicate threshold, bits of 128")
    exclude_near: ExcludeNear | None = None
    # The query locations themselves, read by the caller (a labels file is the eval layer's
    # business); left out of dumps, so the build key holds only ``exclude_near``'s digest.
    points: QueryPoints | None = Field(None, exclude=True, repr=False)

    @property
    def active(self) -> bool:
        return self.dedupe or self.exclude_near is not None


class Removal(BaseModel):
    """One reference a rule removed, and the evidence."""

    id: str
    path: str
    lat: float
    lon: float
    rule: str = Field(description="near-query | exact-duplicate | near-duplicate")
    detail: str = Field(description="e.g. '0.42 km from query 123.jpg' or 'of paris_0.jpg (3 bits)'")


# ----------------------------------------------------------------------------------------- hashes


def dhash128(img: Image.Image) -> np.ndarray:
    """The 128-bit difference hash of an image as 16 bytes (see the module docstring)."""
    grid = np.asarray(img.convert("L").resize((9, 9), Image.BOX), dtype=np.int16)
    bits = np.concatenate([(grid[:-1, 1:] > grid[:-1, :-1]).ravel(), (grid[1:, :-1] > grid[:-1, :-1]).ravel()])
    return np.packbits(bits)


def hash_arrays(n: int) -> dict[str, np.ndarray]:
    """Empty per-image hash columns for ``n`` images (a chunk's ``sha256`` and ``dhash``)."""
    return {"sha256": np.full(n, "", dtype="U64"), "dhash": np.zeros((n, HASH_BYTES), dtype=np.uint8)}


# ----------------------------------------------------------------------------------------- leakage


def query_points(labels: str | Path, km: float, ids: Sequence[str], lat: Sequence[float],
                 lon: Sequence[float]) -> QueryPoints:
    """A benchmark's query locations (read from ``labels`` by the caller) under the leakage rule."""
    if not km > 0:
        raise FilterError(f"--km must be a positive distance in km, got {km}")
    if not len(lat):
        raise FilterError(f"{labels}: no usable query locations")
    digest = hashlib.sha256(np.round(np.array([lat, lon], dtype=np.float64), 7).tobytes()).hexdigest()
    spec = ExcludeNear(labels=str(labels), km=km, n_points=len(lat), digest=digest)
    return QueryPoints(spec=spec, ids=list(ids), lat=list(lat), lon=list(lon))


def _points(filters: FilterConfig) -> QueryPoints:
    if filters.points is None or filters.exclude_near is None or filters.points.spec != filters.exclude_near:
        raise FilterError("exclude-near is set but its query locations were not given with it")
    return filters.points


def near_queries(lat: np.ndarray, lon: np.ndarray, points: QueryPoints) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(within, nearest query index, km to it) for each reference; ``within`` is distance < km."""
    from scipy.spatial import cKDTree

    tree = cKDTree(latlon_to_unit(points.lat, points.lon))
    bound = km_to_chord(points.spec.km)
    chord, nearest = tree.query(latlon_to_unit(lat, lon), k=1, distance_upper_bound=bound, workers=1)
    within = np.isfinite(chord) & (chord < bound)
    km = 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.where(within, chord, 0) / 2, 0, 1))
    return within, np.where(within, nearest, -1), km


def exclusion_removals(ids: Sequence[str], paths: Sequence[str], lat: np.ndarray, lon: np.ndarray,
                       points: QueryPoints) -> tuple[np.ndarray, list[Removal]]:
    """(mask of the references kept, what was removed) under the leakage rule."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    within, nearest, km = near_queries(lat, lon, points)
    removed = [
        Removal(id=ids[i], path=paths[i], lat=float(lat[i]), lon=float(lon[i]), rule="near-query",
                detail=f"{km[i]:.3f} km from query {points.ids[nearest[i]]} (limit {points.spec.km:g} km)")
        for i in np.flatnonzero(within)
    ]
    return ~within, removed


def exclude_near_records(records: Sequence, filters: FilterConfig) -> tuple[list, list[Removal]]:
    """A build's records without those near the benchmark's queries (dropped before being described).
    A changed query file changes the digest in the build key, so a resumed build cannot mix them."""
    if filters.exclude_near is None:
        return list(records), []
    points = _points(filters)
    spec = points.spec
    keep, removals = exclusion_removals([r.image_id for r in records], [str(r.image_path) for r in records],
                                        np.array([r.lat for r in records]), np.array([r.lon for r in records]),
                                        points)
    kept = [r for r, k in zip(records, keep, strict=True) if k]
    if not kept:
        raise FilterError(f"every reference is within {spec.km:g} km of a query in {spec.labels}; nothing to index")
    return kept, removals


# ----------------------------------------------------------------------------------------- duplicates


def _near_code_pairs(codes: np.ndarray, max_hamming: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (a < b) of distinct rows of ``codes`` (unique 16-byte codes) within ``max_hamming`` bits."""
    import faiss

    n = len(codes)
    if n < 2:
        return (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.int32),)
    index = faiss.IndexBinaryMultiHash(HASH_BYTES * 8, max_hamming + 1, HASH_BYTES * 8 // (max_hamming + 1))
    index.add(codes)
    found_a, found_b, found_d = [], [], []
    for s in range(0, n, SEARCH_BLOCK):
        lims, dist, ids = index.range_search(codes[s : s + SEARCH_BLOCK], max_hamming + 1)  # radius is exclusive
        a = s + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
        later = ids > a
        found_a.append(a[later])
        found_b.append(ids[later])
        found_d.append(dist[later])
    return np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_d).astype(np.int32)


def duplicate_removals(ids: Sequence[str], paths: Sequence[str], lat: np.ndarray, lon: np.ndarray,
                       sha256: np.ndarray, dhash: np.ndarray, max_hamming: int) -> tuple[np.ndarray, list[Removal]]:
    """(mask of the references kept, what was removed): exact duplicates first, then near ones, greedy in order."""
    n = len(ids)
    keep = np.ones(n, dtype=bool)
    removed: list[Removal] = []

    def drop(i: int, rule: str, detail: str) -> None:
        keep[i] = False
        removed.append(Removal(id=ids[i], path=paths[i], lat=float(lat[i]), lon=float(lon[i]), rule=rule, detail=detail))

    _, first, inverse = np.unique(np.asarray(sha256), return_index=True, return_inverse=True)
    for i in np.flatnonzero(first[inverse] != np.arange(n)):
        drop(int(i), "exact-duplicate", f"same file content as {ids[first[inverse[i]]]}")
    # Near duplicates over the distinct codes of the remaining photos; equal codes are 0 bits apart.
    rest = np.flatnonzero(keep)
    codes, code_of = np.unique(np.ascontiguousarray(dhash[rest], dtype=np.uint8), axis=0, return_inverse=True)
    code_of = code_of.ravel()
    a, b, d = _near_code_pairs(codes, max_hamming)
    neighbours: dict[int, list[tuple[int, int]]] = {}
    for x, y, bits in zip(a.tolist(), b.tolist(), d.tolist(), strict=True):
        neighbours.setdefault(x, []).append((y, bits))
        neighbours.setdefault(y, []).append((x, bits))
    counts = np.bincount(code_of, minlength=len(codes))
    kept_with_code = np.full(len(codes), -1, dtype=np.int64)
    for i, c in zip(rest.tolist(), code_of.tolist(), strict=True):  # greedy in order: dropped only next to a *kept* one
        if counts[c] == 1 and c not in neighbours:
            continue
        twins = [(0, kept_with_code[c])] if kept_with_code[c] >= 0 else []
        twins += [(bits, kept_with_code[o]) for o, bits in neighbours.get(c, []) if kept_with_code[o] >= 0]
        if twins:
            bits, j = min(twins)
            drop(i, "near-duplicate", f"of {ids[j]} ({bits} of {HASH_BYTES * 8} bits differ)")
        else:
            kept_with_code[c] = i
    return keep, removed


# ----------------------------------------------------------------------------------------- records


def write_removed(out: str | Path, removals: Sequence[Removal]) -> Path:
    """Write ``removed.csv`` (one row per removed reference, sorted by rule then id)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(REMOVED_HEADER)
    for r in sorted(removals, key=lambda r: (r.rule, r.id)):
        w.writerow([r.id, r.path, f"{r.lat:.7f}", f"{r.lon:.7f}", r.rule, r.detail])
    path = Path(out) / REMOVED_NAME
    atomic.write_text(path, buf.getvalue())
    return path


def is_removed_record(path: Path) -> bool:
    """Whether ``path`` is a ``removed.csv`` geoguide wrote (so an overwrite may delete it)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip() == ",".join(REMOVED_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def record_removals(out: Path, removals: list[Removal], filters: FilterConfig) -> None:
    """A filtered build lists what it removed in ``removed.csv``; a rebuild without filters drops a stale one."""
    if filters.active:
        write_removed(out, removals)
    elif is_removed_record(out / REMOVED_NAME):
        (out / REMOVED_NAME).unlink()


def read_removed(index_dir: str | Path) -> list[Removal]:
    """What ``removed.csv`` in ``index_dir`` lists (empty when there is none)."""
    path = Path(index_dir) / REMOVED_NAME
    if not is_removed_record(path):
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return [Removal(**row) for row in csv.DictReader(f)]


def rule_counts(removals: Sequence[Removal]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in removals:
        counts[r.rule] = counts.get(r.rule, 0) + 1
    return counts


# ----------------------------------------------------------------------------------------- built indices


class FilterPlan(BaseModel):
    """What ``index filter`` would remove from a built index, and why."""

    index_dir: str
    n_references: int
    removals: list[Removal]
    unreadable: list[str] = Field(default_factory=list, description="ids whose photo could not be hashed (kept)")

    def summary_lines(self) -> list[str]:
        counts = ", ".join(f"{rule} {n}" for rule, n in sorted(rule_counts(self.removals).items())) or "nothing"
        lines = [f"{self.index_dir}: {len(self.removals)} of {self.n_references} references to remove ({counts})"]
        lines += [f"  {r.rule}: {r.id}: {r.detail}" for r in self.removals[:10]]
        if len(self.removals) > 10:
            lines.append(f"  … {len(self.removals) - 10} more")
        if self.unreadable:
            lines.append(f"  {len(self.unreadable)} photos could not be read to hash them and are kept "
                         f"(first: {self.unreadable[0]})")
        return lines


def _hash_photos(paths: Sequence[str], workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(readable mask, SHA-256, dHash) of the photos at ``paths``, read on ``workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    from geoguide.core.images import ImageLoadError, file_sha256, load_image

    def one(path: str):
        try:
            return file_sha256(path), dhash128(load_image(path))
        except (ImageLoadError, OSError):
            return None

    cols = hash_arrays(len(paths))
    ok = np.zeros(len(paths), dtype=bool)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, got in enumerate(pool.map(one, paths)):
            if got is not None:
                ok[i] = True
                cols["sha256"][i], cols["dhash"][i] = got
    return ok, cols["sha256"], cols["dhash"]


def filter_index(index_dir: str | Path, config: FilterConfig, workers: int = 2) -> FilterPlan:
    """The references of a built index that ``config``'s rules remove (nothing is changed)."""
    from geoguide.indices.store import ReferenceIndex

    index = ReferenceIndex(index_dir)  # its live references: rows removed since a compaction are gone
    ids = [b.decode("utf-8") for b in index.live_column("id")]
    paths = [b.decode("utf-8") for b in index.live_column("path")]
    lat, lon = index.live_column("lat").astype(np.float64), index.live_column("lon").astype(np.float64)
    keep = np.ones(len(ids), dtype=bool)
    removals: list[Removal] = []
    if config.exclude_near is not None:
        keep, removals = exclusion_removals(ids, paths, lat, lon, _points(config))
    unreadable: list[str] = []
    if config.dedupe:
        rows = np.flatnonzero(keep)
        ok, sha, dhash = _hash_photos([paths[i] for i in rows], workers)
        unreadable = [ids[i] for i in rows[~ok]]
        rows = rows[ok]
        _, dropped = duplicate_removals([ids[i] for i in rows], [paths[i] for i in rows], lat[rows], lon[rows],
                                        sha[ok], dhash[ok], config.max_hamming)
        removals += dropped
    return FilterPlan(index_dir=str(index_dir), n_references=len(ids), removals=removals, unreadable=unreadable)


ID_HEADER = "id"


def write_removed_ids(path: str | Path, removals: Sequence[Removal]) -> None:
    """The ids as a one-column CSV with an ``id`` header, the file ``index remove --ids`` reads: an
    id holding a comma, a quote, a newline or edge spaces survives (quoted where it must be)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([ID_HEADER])
    w.writerows([r.id] for r in removals)
    atomic.write_text(path, buf.getvalue())


def read_id_list(text: str) -> list[str]:
    """Reference ids from ``write_removed_ids``' CSV, or any CSV whose first column holds them (a
    header ``id`` or ``IMG_ID`` is skipped), or plain lines: each id exactly as written (CSV
    quoting undone), blank lines skipped. Read the file with ``newline=""``, as for any CSV."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell for cell in row)]
    if rows and rows[0][0].strip().upper() in (ID_HEADER.upper(), "IMG_ID"):
        rows = rows[1:]
    return [row[0] for row in rows]
