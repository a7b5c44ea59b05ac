"""Global image descriptors: the contract every VPR descriptor implements.

hloc-style: a descriptor is a small class with a ``name`` and a ``default_conf``, registered with
``@register``; adding one is one short file in this package. A descriptor may learn parameters
from the reference set (a PCA-whitening, a visual vocabulary) in ``fit``; those parameters are
saved with the index through ``state``/``load_state`` so queries are described exactly like the
references were.

Model weights are always local: no descriptor downloads anything. One whose weights are not on
this machine raises ``WeightsNotFoundError`` when it is constructed (so ``index build`` stops before
reading a single photo), naming the option to set and the files the folder must hold.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from geoguide.core.errors import GeoguideError


class WeightsNotFoundError(GeoguideError, FileNotFoundError):
    """A descriptor's model weights are not on this machine; the message says where to put them."""


class ModelLoadError(GeoguideError, RuntimeError):
    """Local weights that are there but unusable (corrupt, incomplete, another architecture)."""


class Descriptor(ABC):
    name: ClassVar[str]
    default_conf: ClassVar[dict[str, Any]] = {}
    # True when ``fit`` must run on reference images before ``extract`` is meaningful.
    trainable: ClassVar[bool] = False
    # Options that change speed or placement, never the vectors (batch size, threads, device):
    # left out of the fingerprint, so an index built with 8 threads still matches 1-thread queries.
    runtime_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, conf: dict[str, Any] | None = None):
        unknown = set(conf or {}) - set(self.default_conf)
        if unknown:
            raise ValueError(
                f"descriptor {self.name!r}: unknown option(s) {sorted(unknown)}; "
                f"known: {sorted(self.default_conf)}"
            )
        self.conf: dict[str, Any] = {**self.default_conf, **(conf or {})}

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of the vectors ``extract`` returns (after any learned projection)."""

    @abstractmethod
    def extract(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (n, dim) float32, each row L2-normalised (inner product = cosine)."""

    def fit(self, images: Sequence[Image.Image]) -> None:  # noqa: B027 - optional hook
        """Learn parameters from a sample of reference images. No-op for fixed descriptors."""

    @property
    def is_fitted(self) -> bool:
        return True

    def state(self) -> dict[str, np.ndarray]:
        """Learned arrays to persist beside the index (empty for fixed descriptors)."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state`` returned."""

    def fingerprint(self) -> str:
        """Hash of name, config and learned state: two equal fingerprints describe alike."""
        conf = {k: v for k, v in self.conf.items() if k not in self.runtime_options}
        h = hashlib.sha256(json.dumps({"name": self.name, "conf": conf}, sort_keys=True, default=str).encode())
        for key, arr in sorted(self.state().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
