"""Retrievers of controlled quality: synthetic descriptors for labelled photos, to test what the
agent does with a retriever of *known* quality and similarity scale (``benchmarks/retriever_quality.py``).

A photo at unit-sphere position ``x`` gets ``v = sqrt(q) * place(x) + sqrt(1 - q) * noise``:

* ``place(x)`` is a multi-scale random Fourier embedding of the position (Rahimi & Recht 2007):
  ``place(x) . place(y)`` approximates ``sum_s w_s exp(-|x - y|^2 / 2 sigma_s^2)`` for scales of
  1, 25, 200 and 2000 km, so two photos of one street are alike, of one region less so.
* ``q`` is the photo's own recognisability, drawn per photo from Beta(a, b) (``quality``): a
  landmark is easy, a field of grass is not; this is what makes the best match's similarity
  predictive, as with real descriptors.
* ``noise`` is an independent Gaussian direction: the scale of chance similarity (about
  1/sqrt(dim)).

``floor`` appends one component every vector shares (``[v, c] / sqrt(1 + c^2)``), which turns every
cosine ``s`` into exactly ``(s + c^2) / (1 + c^2)``: an affine change of the similarity scale, with
the same ranking. No real descriptor is simulated faithfully; the point is control.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

EARTH_KM = 6371.0
SCALES_KM = (1.0, 25.0, 200.0, 2000.0)


class SyntheticRetriever(BaseModel):
    """One synthetic descriptor: how recognisable photos are, and on what similarity scale."""

    name: str
    quality_a: float = Field(gt=0, description="Beta(a, b) of each photo's recognisability q")
    quality_b: float = Field(gt=0)
    weights: tuple[float, ...] = Field((0.4, 0.3, 0.2, 0.1), description="share of each scale in SCALES_KM")
    dim: int = Field(256, ge=8, description="dimensions of the place embedding and of the noise")
    floor: float = Field(0.0, ge=0, description="weight of a component every vector shares (similarity floor)")
    seed: int = 0


def unit_xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(np.asarray(lat, dtype=np.float64)), np.radians(np.asarray(lon, dtype=np.float64))
    return np.column_stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


def place_embedding(lat: np.ndarray, lon: np.ndarray, spec: SyntheticRetriever) -> np.ndarray:
    """(n, dim) unit vectors whose inner products fall with distance at several scales."""
    xyz = unit_xyz(lat, lon)
    rng = np.random.default_rng(10_000 + spec.seed)
    per = spec.dim // len(SCALES_KM)
    blocks = []
    for km, w in zip(SCALES_KM, spec.weights, strict=True):
        sigma = km / EARTH_KM  # chord length of km on the unit sphere
        freq = rng.normal(0.0, 1.0 / sigma, size=(3, per))
        phase = rng.uniform(0, 2 * np.pi, per)
        blocks.append(np.sqrt(w) * np.sqrt(2.0 / per) * np.cos(xyz @ freq + phase))
    emb = np.hstack(blocks)
    emb = np.hstack([emb, np.zeros((len(emb), spec.dim - emb.shape[1]))])
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def synthetic_vectors(lat: np.ndarray, lon: np.ndarray, spec: SyntheticRetriever) -> np.ndarray:
    """(n, dim [+1]) float32 unit vectors for photos at ``lat``/``lon`` (see the module docstring)."""
    n = len(lat)
    rng = np.random.default_rng(spec.seed)
    q = rng.beta(spec.quality_a, spec.quality_b, size=n)[:, None]
    noise = rng.normal(size=(n, spec.dim))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    v = np.sqrt(q) * place_embedding(lat, lon, spec) + np.sqrt(1 - q) * noise
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    if spec.floor > 0:
        v = np.hstack([v, np.full((n, 1), spec.floor)]) / np.sqrt(1 + spec.floor**2)
    return v.astype(np.float32)
