"""PCA-whitening learned on reference descriptors (Jégou & Chum 2012), shared by all descriptors.

Whitening down-weights the dominant, "bursty" directions of a descriptor space; it is learned on
the reference set at build time and stored with the index (state keys ``pca_mean``, ``pca_proj``).
``OptionalPCA`` is the one switchable step every descriptor with a ``pca_dim`` option uses
(DenseVLAD, EffNet-GeM, CLIP): off, it passes vectors through and has nothing to fit or store.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from geoguide.indices.descriptors.base import l2_normalize


class PCAWhitening:
    def __init__(self, out_dim: int | None, whiten: bool = True, eps: float = 1e-6):
        self.out_dim = out_dim
        self.whiten = whiten
        self.eps = eps
        self.mean: np.ndarray | None = None
        self.proj: np.ndarray | None = None  # (in_dim, out_dim)

    @property
    def is_fitted(self) -> bool:
        return self.proj is not None

    def fit(self, x: np.ndarray) -> PCAWhitening:
        x = np.asarray(x, dtype=np.float64)
        n, d = x.shape
        k = min(self.out_dim or d, d, max(n - 1, 1))
        self.mean = x.mean(axis=0)
        # SVD of the centred data: right singular vectors are the principal axes.
        _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        eig = (s[:k] ** 2) / max(n - 1, 1)
        proj = vt[:k].T
        if self.whiten:
            # Regularise tiny eigenvalues so near-empty directions are not blown up.
            proj = proj / np.sqrt(eig + self.eps * max(eig.max(), 1e-12))
        self.proj = proj.astype(np.float32)
        self.mean = self.mean.astype(np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.proj is None or self.mean is None:
            raise RuntimeError("PCAWhitening.transform called before fit (or load_state)")
        return l2_normalize((np.asarray(x, dtype=np.float32) - self.mean) @ self.proj)

    def state(self, prefix: str = "pca") -> dict[str, np.ndarray]:
        if self.proj is None or self.mean is None:
            return {}
        return {f"{prefix}_mean": self.mean, f"{prefix}_proj": self.proj}

    def load_state(self, state: dict[str, np.ndarray], prefix: str = "pca") -> None:
        if f"{prefix}_proj" in state:
            self.mean = np.asarray(state[f"{prefix}_mean"], dtype=np.float32)
            self.proj = np.asarray(state[f"{prefix}_proj"], dtype=np.float32)

    @property
    def output_dim(self) -> int | None:
        return None if self.proj is None else int(self.proj.shape[1])

    def dim_for(self, in_dim: int) -> int:
        """Output length for ``in_dim``-d inputs: the fitted size, else the configured bound
        (a fit may give fewer dimensions than asked: at most one less than the fit samples)."""
        return self.output_dim or min(self.out_dim or in_dim, in_dim)


class OptionalPCA:
    """A descriptor's ``pca_dim`` / ``whiten`` options: None = off (vectors pass through, nothing to
    fit, an empty state); an int = a ``PCAWhitening`` learned in ``fit`` and kept in the state.
    ``owner`` names the descriptor in errors."""

    def __init__(self, owner: str, pca_dim: int | None, whiten: bool = True):
        self.owner = owner
        self.pca = PCAWhitening(int(pca_dim), whiten=bool(whiten)) if pca_dim is not None else None

    @property
    def enabled(self) -> bool:
        return self.pca is not None

    @property
    def is_fitted(self) -> bool:
        return self.pca is None or self.pca.is_fitted

    def dim(self, in_dim: int) -> int:
        """Output length for ``in_dim``-d inputs."""
        return in_dim if self.pca is None else self.pca.dim_for(in_dim)

    def fit(self, inputs: Callable[[], np.ndarray]) -> None:
        """Learn the PCA on ``inputs()`` (called only when the PCA is on: embedding costs)."""
        if self.pca is not None:
            self.pca.fit(inputs())

    def require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{self.owner}: pca_dim is set but the PCA is not fitted; call fit() or load_state() first")

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``x`` itself when off, else projected (and whitened) and L2-normalised."""
        if self.pca is None:
            return x
        self.require_fitted()
        return self.pca.transform(x)

    def state(self) -> dict[str, np.ndarray]:
        return self.pca.state() if self.pca is not None else {}

    def load_state(self, state: dict[str, np.ndarray], in_dim: int | None = None) -> None:
        """Take the stored PCA (if any); refuses one when off, or one for other than ``in_dim``-d input."""
        if self.pca is None:
            if any(key.startswith("pca_") for key in state):
                raise ValueError(f"{self.owner}: state holds a PCA but this descriptor has pca_dim=None")
            return
        self.pca.load_state(state)
        if in_dim is not None and self.pca.proj is not None and self.pca.proj.shape[0] != in_dim:
            raise ValueError(f"{self.owner}: PCA state expects {self.pca.proj.shape[0]}-d input, not {in_dim}")
