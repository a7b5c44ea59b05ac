"""The index manifest: what an index directory holds, how to tell it is whole, and what built it.

``build_key`` (a hash of the build options and every reference row) lets a later build tell "the
same index again" from "a different index in the way" without guessing; ``source.failed_images``
names the photos that could not be read, so ``index info`` can say which, not just how many.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from geoguide.core.errors import GeoguideError

SCHEMA_VERSION = 2  # 2: stores (``store``), generations (``data_dir``); version 1 still opens
SEGMENTED_SCHEMA = 3  # 3: a base plus appended ``segments`` and ``tombstones``; written only when it has them
MANIFEST_NAME = "manifest.json"


class IndexFormatError(GeoguideError, RuntimeError):
    """An index directory that is missing, truncated, altered or from another schema version."""


class FileEntry(BaseModel):
    bytes: int
    sha256: str


class DescriptorInfo(BaseModel):
    name: str
    conf: dict[str, Any]
    dim: int
    fingerprint: str


class SchemeInfo(BaseModel):
    spec: str = Field(description="as given on the command line, e.g. 'kmeans:100'")
    prefix: str = Field(description="submap id prefix, e.g. 'kmeans-100'")
    n_submaps: int
    contiguous: bool = Field(description="True when references are stored in this scheme's order")
    codes: str | None = Field(None, description="a non-primary scheme's own copy of the codes, in its order")


class FailedImage(BaseModel):
    """A reference photo left out of the index because it could not be read."""

    id: str
    path: str
    reason: str = Field(description="why, without the path, e.g. 'not a recognised image format'")


class SourceInfo(BaseModel):
    labels: str | None = None
    images: str | None = None
    n_rows: int = 0
    n_bad_rows: int = 0
    n_failed_images: int = Field(0, description="all of them, however many failed_images lists")
    failed_images: list[FailedImage] = Field(
        default_factory=list, description="the first unreadable photos (capped; see n_failed_images)"
    )
    problems: list[str] = Field(default_factory=list, description="first few skipped rows/images and why")

    @classmethod
    def from_report(cls, report: Any, labels: str | os.PathLike | None = None,
                    images: str | os.PathLike | None = None) -> SourceInfo:
        """Where a map's photos came from, as the photo-set loader's ``LoadReport`` says it read them."""
        return cls(labels=str(labels) if labels else None, images=str(Path(images).resolve()) if images else None,
                   n_rows=report.n_read, n_bad_rows=report.n_bad, problems=report.problems)


class StoreInfo(BaseModel):
    """How the vectors are kept and scanned (``indices.stores``)."""

    spec: str = Field(description="as given to --store, e.g. 'fp16' or 'opq:64'")
    params: dict[str, Any] = Field(default_factory=dict, description="FAISS factory string, code size, rerank")
    codes: str = Field(description="the (N, code_size) uint8 codes in storage order (fp16: the descriptors)")
    trained_on: int = Field(0, description="vectors the quantizer learned from; 0 for a store that learns nothing")


class Removal(BaseModel):
    """One ``index remove`` (or filter) run: how many references went and why (ids in removed.csv)."""

    utc: str
    reason: str
    n: int


class SegmentInfo(BaseModel):
    """Rows one ``index add`` appended: an append-only folder with the base's file layout."""

    data_dir: str = Field(description="its folder, e.g. 'seg-000003'")
    n_rows: int
    generation: int = Field(description="the generation that added it")
    codes: str = Field(description="its (n_rows, code_size) codes (fp16: its descriptors)")
    schemes: list[SchemeInfo] = Field(description="its own submap tables, same schemes as the base")


class TombstoneInfo(BaseModel):
    """Removed rows not yet compacted away: sorted int64 global rows (segment offset + local row)."""

    file: str = Field(description="e.g. 'tombstones-000004.npy', written whole by each remove")
    n: int
    per_label: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="removed rows per scheme prefix and label (the submaps' live sizes)"
    )


class Manifest(BaseModel):
    schema_version: Literal[1, 2, 3] = SCHEMA_VERSION
    geoguide_version: str
    created_utc: str
    descriptor: DescriptorInfo
    n_references: int = Field(description="live references: every row minus the tombstoned ones")
    faiss_index: str = Field(description="the store's spec; kept under its old name for older readers")
    store: StoreInfo | None = Field(None, description="None in version-1 indices: fp16, codes = descriptors")
    generation: int = Field(0, description="0 when built; +1 per add or remove")
    data_dir: str = Field("", description="folder of this generation's data files ('' = the index folder)")
    frozen: list[str] = Field(
        default_factory=list, description="learned parts kept from the build when references were added"
    )
    removals: list[Removal] = Field(default_factory=list)
    schemes: list[SchemeInfo]
    source: SourceInfo
    files: dict[str, FileEntry] = Field(default_factory=dict)
    build_key: str | None = Field(
        None, description="hash of build options + reference rows; None in indices from before it was kept"
    )
    base_rows: int | None = Field(None, description="rows of the base (data_dir); None: n_references (no tombstones)")
    segments: list[SegmentInfo] = Field(default_factory=list, description="appended since the base, in row order")
    tombstones: TombstoneInfo | None = None
    removals_file: str | None = Field(None, description="the removals.csv history; None: data_dir/removals.csv if listed")
    calibration: str | None = Field(None, description="the map's calibration file (indices.calibration); None: "
                                    "not calibrated yet (calibrated in memory on first use)")
    image_roots: list[str] = Field(
        default_factory=list, description="every folder the references' photos came from (build and each add), "
        "resolved: the server serves reference photos from inside these only; empty in indices before 0.2")

    @property
    def n_base_rows(self) -> int:
        return self.n_references if self.base_rows is None else self.base_rows

    @property
    def n_rows(self) -> int:
        """Physical rows (base + segments, tombstoned ones included): row numbers run to this."""
        return self.n_base_rows + sum(s.n_rows for s in self.segments)

    @property
    def removals_path(self) -> str | None:
        if self.removals_file is not None:
            return self.removals_file
        rel = self.data("removals.csv")
        return rel if rel in self.files else None

    @property
    def primary(self) -> SchemeInfo:
        return next(s for s in self.schemes if s.contiguous)

    def data(self, rel: str) -> str:
        """The path, relative to the index folder, of this generation's file ``rel``."""
        return f"{self.data_dir}/{rel}" if self.data_dir else rel


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(bytes=path.stat().st_size, sha256=sha256_file(path))


def verify_files(root: Path, manifest: Manifest, full: bool) -> int:
    """Sizes always (catches truncation); sha256 too when ``full`` (catches alteration).

    Opening an index checks sizes only (a stat per file, so opening stays under a second at any
    size); ``geoguide index verify`` hashes everything. Every bad file is named, not just the
    first. Returns the bytes checked.
    """
    problems: list[str] = []
    total = 0
    for rel, entry in manifest.files.items():
        p = root / rel
        if not p.exists():
            problems.append(f"missing {rel}; the index is incomplete")
            continue
        size = p.stat().st_size
        total += size
        if size != entry.bytes:
            problems.append(f"{rel} is {size} bytes, manifest says {entry.bytes}; the index is truncated or altered")
        elif full and sha256_file(p) != entry.sha256:
            problems.append(f"checksum mismatch for {rel}; the index is corrupt")
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
        raise IndexFormatError(f"{root}: {problems[0]}{more} — rebuild it")
    return total
