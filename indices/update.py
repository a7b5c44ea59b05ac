"""Add references to an index, or remove them, without rebuilding it.

Both write a new *generation* (``gen-NNNNNN/``: reference table, descriptors, codes, submap
tables, ``removals.csv``) and swap the manifest last, then delete the old generation's files:

* atomic — until the manifest is replaced, the index is the old one, whole; after, the new one;
* safe for readers — a process that opened the old generation keeps its memory-mapped files
  (deleted files live on while mapped) and its submap tables, so it sees one consistent index
  until it reopens; an opener that races the swap retries once on the new manifest;
* resumable — photos are described in fixed chunks saved under ``IDX/update-work/`` (keyed by
  the base generation and the new records), so a killed ``index add`` re-run with the same
  arguments skips the finished chunks; the generation itself is rewritten from scratch;
* exclusive — one update at a time per index (an advisory ``flock`` on ``IDX/.update.lock``).

Nothing learned is refitted: the descriptor's state (PCA, vocabulary), the store's quantizer and
the K-means centroids stay as built, and the manifest's ``frozen`` field says so. New references
join their submaps (country by position, K-means cluster by nearest frozen centroid). Adding an
id that is already there skips it, so an add repeated after it finished changes nothing.

An update rewrites the generation's arrays (O(N) copying and checksumming, no describing or
training of the old references). Measured at 1M x 256-d fp16 on the shared 2-core machine:
removing 1,000 references takes 16.5 s, adding 1,000 (after describing them) 10.9 s; a
segmented store that appends instead of rewriting is the next step for maps of 20M.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from indices import atomic
from indices.describe import describe_chunk
from indices.errors import GeoguideError
from indices.filtering import REMOVED_NAME, FilterPlan, read_removed, write_removed
from indices.manifest import Manifest, Removal, SourceInfo
from indices.progress import Progress
from indices.store import ReferenceIndex
from indices.stores.base import STORE_FILE
from indices.writer import (
    NO_COUNTRY,
    STATE_FILE,
    TEXT_COLUMNS,
    remove_stale,
    utc_now,
    write_generation,
    write_manifest,
)

log = logging.getLogger(__name__)
WORK = "update-work"
LOCK = ".update.lock"
REMOVED = "removals.csv"  # removed.csv at the top is index filter's record of a filtered build
REMOVED_COLUMNS = ["id", "author", "lat", "lon", "reason", "utc", "generation"]


class UpdateError(GeoguideError, RuntimeError):
    """An add or remove that cannot go on; the message says why."""


class UpdateReport(BaseModel):
    n_added: int = 0
    n_removed: int = 0
    n_skipped: int = Field(0, description="ids already in the index (add) or not in it (remove)")
    n_failed_images: int = 0
    generation: int
    n_references: int
    problems: list[str] = Field(default_factory=list)


@contextlib.contextmanager
def _exclusive(index_dir: Path) -> Iterator[None]:
    with open(index_dir / LOCK, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateError(f"{index_dir}: another index add/remove is running on it; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _labels(index: ReferenceIndex) -> dict[str, np.ndarray]:
    """Every stored scheme's label per row, read back from its spans (no re-assignment)."""
    n = len(index)
    out = {}
    for prefix, table in index.schemes.items():
        labels = np.empty(n, dtype=object)
        for label, (a, b) in table.spans.items():
            labels[np.arange(a, b) if table.order is None else np.asarray(table.order[a:b])] = label
        out[prefix] = labels.astype(str)
    return out


def _write(index: ReferenceIndex, *, refs: dict[str, np.ndarray], vectors, codes, perm: np.ndarray,
           labels: dict[str, np.ndarray], removed_rows: list[list[str]], removal: Removal | None,
           frozen: list[str]) -> Manifest:
    """Write generation g+1 from the given sources, swap the manifest, delete generation g."""
    root, old = index.root, index.manifest
    gen = old.generation + 1
    data_dir = f"gen-{gen:06d}"
    shutil.rmtree(root / data_dir, ignore_errors=True)  # a half-written try of this same generation
    schemes = [index.schemes[s.prefix].scheme for s in old.schemes]
    files, infos, codes_rel = write_generation(root, data_dir, refs=refs, vectors=vectors, perm=perm, labels=labels,
                                               schemes=schemes, store=index.store, codes=codes)
    previous = _read_removed(root, old)
    if previous or removed_rows:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(REMOVED_COLUMNS)
        w.writerows(previous + removed_rows)
        atomic.write_text(root / data_dir / REMOVED, buf.getvalue())
        files.append(f"{data_dir}/{REMOVED}")
    kept = [rel for rel in (STATE_FILE, STORE_FILE) if rel in old.files]
    store = old.store.model_copy(update={"codes": codes_rel}) if old.store else None
    manifest = old.model_copy(update={
        "schema_version": 2, "generation": gen, "data_dir": data_dir, "n_references": len(perm), "schemes": infos,
        "store": store, "frozen": sorted(set(old.frozen) | set(frozen)), "build_key": None,
        "removals": old.removals + ([removal] if removal else []),
    })
    manifest = write_manifest(root, manifest, kept + files, reuse=old.files)
    remove_stale(root, set(old.files), set(manifest.files))
    return manifest


def _read_removed(root: Path, m: Manifest) -> list[list[str]]:
    rel = m.data(REMOVED)
    if rel not in m.files:
        return []
    with open(root / rel, newline="") as f:
        return list(csv.reader(f))[1:]


def _frozen_parts(index: ReferenceIndex) -> list[str]:
    parts = []
    with np.load(index.root / STATE_FILE) as state:  # what the descriptor learned (no model is loaded)
        learned = bool(state.files)
    if learned:
        parts.append(f"descriptor {index.manifest.descriptor.name} state ({STATE_FILE})")
    if index.store.trainable:
        parts.append(f"store {index.store.spec} quantizer ({STORE_FILE})")
    parts += [f"{p} centroids" for p, t in index.schemes.items() if t.scheme.kind == "kmeans"]
    return parts


# ---- remove -------------------------------------------------------------------------------------
def remove_references(index_dir: str | Path, ids: Iterable[str], reason: str) -> UpdateReport:
    """Remove references by id; each is recorded in ``removals.csv`` with ``reason``.

    Ids not in the index are counted (``n_skipped``), not an error; removing every reference is.
    """
    root = Path(index_dir)
    with _exclusive(root):
        index = ReferenceIndex(root)
        wanted = list(dict.fromkeys(str(i) for i in ids))
        rows = sorted(r for r in (index.row_of(i) for i in wanted) if r is not None)
        report = UpdateReport(generation=index.manifest.generation, n_references=len(index),
                              n_skipped=len(wanted) - len(rows))
        if not rows:
            return report
        if len(rows) == len(index):
            raise UpdateError(f"{root}: removing all {len(index)} references would leave an empty index; build another")
        keep = np.setdiff1d(np.arange(len(index)), rows)
        utc = utc_now()
        gen = index.manifest.generation + 1
        removed = [[r["ref_id"], r["author"], f"{r['lat']:.6f}", f"{r['lon']:.6f}", reason, utc, str(gen)]
                   for r in map(index.row, rows)]
        refs = {c: index.refs[c] for c in (*TEXT_COLUMNS, "lat", "lon")}
        codes = None if index.store.codes_are_descriptors else [index.codes]
        m = _write(index, refs=refs, vectors=[index.descriptors], codes=codes, perm=keep, labels=_labels(index),
                   removed_rows=removed, removal=Removal(utc=utc, reason=reason, n=len(rows)), frozen=[])
        return report.model_copy(update={"n_removed": len(rows), "generation": m.generation,
                                         "n_references": m.n_references})


def apply_filter(plan: FilterPlan) -> None:
    """Remove what ``index filter`` found (a new generation, safe for readers, logged in its
    ``removals.csv``) and add the removals, with their evidence, to ``removed.csv``. Here rather than
    in ``indices.filtering`` so that the filter decides and the update acts (no import cycle)."""
    ids = [r.id for r in plan.removals]
    rules = ", ".join(sorted({r.rule for r in plan.removals}))
    remove_references(plan.index_dir, ids, f"index filter: {rules} (evidence in {REMOVED_NAME})")
    write_removed(plan.index_dir, [*read_removed(plan.index_dir), *plan.removals])


def ids_of_author(index_dir: str | Path, author: str) -> list[str]:
    index = ReferenceIndex(index_dir)
    rows = np.flatnonzero(index.refs["author"][:] == author.encode("utf-8"))
    return [index.row(int(r))["ref_id"] for r in rows]


# ---- add ----------------------------------------------------------------------------------------
def _work_key(m: Manifest, records: Sequence) -> str:
    h = hashlib.sha256(f"add\t{m.generation}\t{m.files.get(m.data('refs/id.npy'))}\n".encode())
    for r in records:
        h.update(f"{r.image_id}\t{r.image_path}\t{r.lat:.7f}\t{r.lon:.7f}\t{r.author}\n".encode())
    return h.hexdigest()


def _describe(index: ReferenceIndex, records: Sequence, work: Path, chunk_size: int, progress: bool | str,
              after_chunk: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Describe new photos in resumable chunks with the index's frozen descriptor."""
    descriptor = index.descriptor()
    paths = [Path(r.image_path) for r in records]
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    bar = Progress(len(records), f"describing ({descriptor.name})", "img", progress)
    vecs, oks, problems = [], [], []
    for ci, s in enumerate(range(0, len(records), chunk_size)):
        chunk = work / "chunks" / f"{ci:06d}.npz"
        part = paths[s : s + chunk_size]
        if not chunk.exists():
            atomic.save_npz(chunk, describe_chunk(descriptor, part, load_workers=2, hashes=False))
            if after_chunk is not None:
                after_chunk(ci)
        with np.load(chunk) as z:
            vecs.append(z["desc"])
            oks.append(z["ok"])
            problems += [str(e) for e in z["errors"] if e]
        bar.update(len(part))
    bar.close()
    return np.concatenate(vecs), np.concatenate(oks), problems


def add_references(index_dir: str | Path, records: Sequence, *, source: SourceInfo | None = None,
                   chunk_size: int = 256, progress: bool | str = False,
                   after_chunk: Callable[[int], None] | None = None) -> UpdateReport:
    """Describe ``records`` (``eval.datasets.Sample``-like) and add them to the index."""
    root = Path(index_dir)
    with _exclusive(root):
        index = ReferenceIndex(root)
        fresh = [r for r in dict((r.image_id, r) for r in records).values() if index.row_of(r.image_id) is None]
        report = UpdateReport(generation=index.manifest.generation, n_references=len(index),
                              n_skipped=len(records) - len(fresh), problems=list(source.problems if source else []))
        if not fresh:
            shutil.rmtree(root / WORK, ignore_errors=True)
            return report
        missing = [r.image_id for r in fresh if r.image_path is None]
        if missing:
            raise UpdateError(f"{len(missing)} new records have no image file (first: {missing[0]!r}); give --images DIR")
        work = root / WORK
        key = _work_key(index.manifest, fresh)
        if (work / "key.txt").exists() and (work / "key.txt").read_text().strip() != key:
            log.warning("discarding an unfinished add with other inputs in %s", work)
            shutil.rmtree(work)
        work.mkdir(exist_ok=True)
        atomic.write_text(work / "key.txt", key + "\n")
        vecs, ok, problems = _describe(index, fresh, work, chunk_size, progress, after_chunk)
        new = [r for r, good in zip(fresh, ok, strict=True) if good]
        if not new:
            raise UpdateError(f"none of the {len(fresh)} new images could be read; first problem: {problems[:1]}")
        m = _append(index, new, vecs)
        shutil.rmtree(work, ignore_errors=True)
        return report.model_copy(update={
            "n_added": len(new), "n_failed_images": len(fresh) - len(new), "generation": m.generation,
            "n_references": m.n_references, "problems": (report.problems + problems)[:20]})


def _append(index: ReferenceIndex, new: Sequence, vecs: np.ndarray) -> Manifest:
    from indices.geography import countries_at

    lat = np.array([r.lat for r in new], dtype=np.float64)
    lon = np.array([r.lon for r in new], dtype=np.float64)
    country = np.array([c if c else NO_COUNTRY for c in countries_at(lat, lon)], dtype=str)
    columns = {"id": [r.image_id for r in new], "author": [r.author or "" for r in new],
               "path": [str(r.image_path) for r in new], "country": country.tolist()}
    refs = {c: np.concatenate([np.asarray(index.refs[c]), np.array([v.encode("utf-8") for v in columns[c]])])
            for c in TEXT_COLUMNS}
    refs["lat"] = np.concatenate([index.refs["lat"], lat])
    refs["lon"] = np.concatenate([index.refs["lon"], lon])
    labels = _labels(index)
    for prefix, table in index.schemes.items():
        labels[prefix] = np.concatenate([labels[prefix], table.scheme.assign(lat, lon, country)])
    primary = index.manifest.primary.prefix
    perm = np.argsort(labels[primary], kind="stable")  # old rows keep their order within a submap
    codes = None if index.store.codes_are_descriptors else [index.codes, index.store.encode(vecs.astype(np.float32))]
    return _write(index, refs=refs, vectors=[index.descriptors, vecs], codes=codes, perm=perm, labels=labels,
                  removed_rows=[], removal=None, frozen=_frozen_parts(index))
