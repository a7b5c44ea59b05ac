"""Submap schemes: ways of cutting the reference map into searchable pieces.

A scheme assigns every reference a label at build time (its country, its K-means cluster, ...);
the index stores each label's references so that searching one submap never scans the others.
Submap ids are ``<prefix>:<label>`` (``country:FR``, ``kmeans-100:37``) and may name a union of
labels (``country:FR,ES,DE``), which is what widening produces.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field


class Submap(BaseModel):
    id: str = Field(description="Search-area id to pass to search_submap, e.g. 'country:FR'")
    scheme: str
    name: str = Field(description="Human-readable name, e.g. 'FR — France'")
    lat: float = Field(description="Spherical centroid of the references")
    lon: float
    size: int = Field(description="Number of references")
    radius_km: float | None = Field(default=None, description="Distance from centroid covering 90% of refs")


class SubmapScheme(ABC):
    kind: ClassVar[str]
    # False for schemes resolved at query time (a radius around any point).
    stored: ClassVar[bool] = True

    def __init__(self, param: str | None = None):
        self.param = param

    @property
    def spec(self) -> str:
        """The text that names this scheme on the command line, e.g. ``kmeans:100``."""
        return self.kind if self.param is None else f"{self.kind}:{self.param}"

    @property
    def prefix(self) -> str:
        """Id prefix of its submaps, e.g. ``kmeans-100``; also the file stem in the index."""
        return self.kind if self.param is None else f"{self.kind}-{self.param}"

    def submap_id(self, label: str) -> str:
        return f"{self.prefix}:{label}"

    def fit(self, lat: np.ndarray, lon: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Learn whatever the scheme needs from reference coordinates (K-means centroids)."""

    @abstractmethod
    def assign(self, lat: np.ndarray, lon: np.ndarray, country: np.ndarray) -> np.ndarray:
        """One string label per reference."""

    @abstractmethod
    def label_name(self, label: str, lat: float, lon: float) -> str:
        """Human name of one submap, given its centroid."""

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state`` returned."""
