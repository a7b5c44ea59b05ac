"""PCA-whitening learned on reference descriptors (Jégou & Chum 2012), shared by all descriptors.

Whitening down-weights the dominant, "bursty" directions of a descriptor space; it is learned on
the reference set at build time and stored with the index.
"""

from __future__ import annotations

import numpy as np

from indices.descriptors.base import l2_normalize


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
