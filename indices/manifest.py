"""The index manifest: what an index directory holds, how to tell it is whole, and what built it.

``build_key`` (a hash of the build options and every reference row) lets a later build tell "the
same index again" from "a different index in the way" without guessing; ``source.failed_images``
names the photos that could not be read, so ``index info`` can say which, not just how many.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from indices.errors import GeoguideError

SCHEMA_VERSION = 1
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


class Manifest(BaseModel):
    schema_version: Literal[1] = SCHEMA_VERSION
    geoguide_version: str
    created_utc: str
    descriptor: DescriptorInfo
    n_references: int
    faiss_index: Literal["flat", "fp16"]
    schemes: list[SchemeInfo]
    source: SourceInfo
    files: dict[str, FileEntry] = Field(default_factory=dict)
    build_key: str | None = Field(
        None, description="hash of build options + reference rows; None in indices from before it was kept"
    )

    @property
    def primary(self) -> SchemeInfo:
        return next(s for s in self.schemes if s.contiguous)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(bytes=path.stat().st_size, sha256=sha256_file(path))


def verify_files(root: Path, manifest: Manifest, full: bool) -> None:
    """Sizes always (catches truncation); sha256 too when ``full`` (catches alteration)."""
    for rel, entry in manifest.files.items():
        p = root / rel
        if not p.exists():
            raise IndexFormatError(f"{root}: missing {rel}; the index is incomplete — rebuild it")
        size = p.stat().st_size
        if size != entry.bytes:
            raise IndexFormatError(
                f"{root}: {rel} is {size} bytes, manifest says {entry.bytes}; the index is truncated or altered — rebuild it"
            )
        if full and sha256_file(p) != entry.sha256:
            raise IndexFormatError(f"{root}: checksum mismatch for {rel}; the index is corrupt — rebuild it")
