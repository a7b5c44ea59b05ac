"""Describing reference photos: one resumable unit of work (a chunk of photos -> descriptors), the
same on this process (``indices.build``, ``indices.update``) and on a Ray worker
(``indices.distributed``), so every path writes the same chunk files."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from geoguide.core.images import ImageLoadError, file_sha256, load_image
from geoguide.indices.descriptors import Descriptor
from geoguide.indices.filtering import dhash128, hash_arrays


def load_many(paths: Sequence[Path], workers: int) -> list[tuple[Image.Image | None, str | None]]:
    """Decode ``paths`` on ``workers`` threads: (image, None), or (None, why not) for an unreadable file."""
    def one(p: Path):
        try:
            return load_image(p), None
        except ImageLoadError as e:
            return None, str(e)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def describe_chunk(descriptor: Descriptor, paths: Sequence[Path], load_workers: int, hashes: bool) -> dict[str, np.ndarray]:
    """One resumable unit of work, the same on this process and on a Ray worker: the readable images'
    descriptors (fp16), which were readable and why not; with ``hashes``, each file's SHA-256 and dHash."""
    loaded = load_many(paths, load_workers)
    ok = np.array([img is not None for img, _ in loaded], dtype=bool)
    images = [img for img, _ in loaded if img is not None]
    vecs = descriptor.extract(images) if images else np.zeros((0, descriptor.dim), np.float32)
    errors = np.array([err or "" for _, err in loaded], dtype=object).astype(str)
    arrays = {"desc": vecs.astype(np.float16), "ok": ok, "errors": errors}
    if hashes:
        arrays |= hash_arrays(len(paths))
        for i in np.flatnonzero(ok):
            arrays["sha256"][i] = file_sha256(paths[i])
            arrays["dhash"][i] = dhash128(loaded[i][0])
    return arrays
