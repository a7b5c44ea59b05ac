"""K-means submaps (the paper's second strategy, K=100): clusters of reference coordinates.

Clustering runs on unit-sphere vectors (spherical K-means), so clusters are compact in
great-circle distance and nothing breaks at the antimeridian. At query time a point prior's
hypothesis is its nearest clusters (a country prior's: the clusters holding that country), and
widening adds the clusters nearest the union's centroid.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from geoguide.geo.geometry import latlon_to_unit, spherical_centroid, unit_to_latlon
from geoguide.indices.submaps.base import WHOLE_MAP, MapView, PriorHint, SubmapScheme
from geoguide.indices.submaps.registry import register_scheme

MAX_COUNTRY_CLUSTERS = 500  # a country prior's hypothesis: every cluster holding the country, up to this many


@register_scheme
class KMeansScheme(SubmapScheme):
    kind = "kmeans"
    default_k = 100
    seed = 1234

    def __init__(self, param: str | None = None):
        try:
            k = int(param) if param is not None else self.default_k
        except ValueError:
            raise ValueError(f"kmeans:K needs an integer K, got {param!r}") from None
        if k < 1:
            raise ValueError(f"kmeans:K needs K >= 1, got {k}")
        super().__init__(str(k))
        self.k = k
        self.centroids: np.ndarray | None = None  # (K, 3) unit vectors

    def fit(self, lat: np.ndarray, lon: np.ndarray) -> None:
        xyz = latlon_to_unit(lat, lon).astype(np.float32)
        k = min(self.k, len(xyz))
        km = faiss.Kmeans(3, k, niter=30, seed=self.seed, spherical=True, verbose=False, max_points_per_centroid=100_000)
        km.cp.min_points_per_centroid = 1  # small reference sets are fine; silence faiss's warning
        km.train(xyz)
        self.centroids = km.centroids.copy()

    def _require_centroids(self) -> np.ndarray:
        if self.centroids is None:
            raise RuntimeError("kmeans scheme used before fit/load_state")
        return self.centroids

    def assign(self, lat: np.ndarray, lon: np.ndarray, country: np.ndarray) -> np.ndarray:
        cents = self._require_centroids()
        index = faiss.IndexFlatIP(3)
        index.add(cents)
        _, label = index.search(latlon_to_unit(lat, lon).astype(np.float32), 1)
        return label[:, 0].astype(str)

    def nearest_labels(self, lat: float, lon: float, n: int) -> list[str]:
        """The ``n`` clusters whose centroids are nearest to a point (for priors and widening)."""
        cents = self._require_centroids()
        sims = cents @ latlon_to_unit([lat], [lon])[0]
        return [str(i) for i in np.argsort(-sims)[:n]]

    def centroid(self, label: str) -> tuple[float, float]:
        la, lo = unit_to_latlon(self._require_centroids()[int(label)][None])
        return float(la[0]), float(lo[0])

    def label_name(self, label: str, lat: float, lon: float) -> str:
        from geoguide.geo import landmark_city

        return f"{self.prefix}/{label} — around {landmark_city(lat, lon)}"

    def state(self) -> dict[str, Any]:
        return {"centroids": self._require_centroids().tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.centroids = np.asarray(state["centroids"], dtype=np.float32)

    # ---- query time ----------------------------------------------------------------------------
    def hypotheses(self, index: MapView, prior: PriorHint) -> list[str]:
        """The ``prior.clusters`` clusters nearest a point prior; else every cluster holding
        references in the prior's country, largest first."""
        table = self.table(index)
        present = set(table.spans)
        if prior.point is not None:
            labels = [x for x in self.nearest_labels(*prior.point, prior.clusters * 4) if x in present]
            return [self.submap_id(",".join(labels[: prior.clusters]))]
        if prior.country:
            holding = self.labels_in_country(index, prior.country)
            ordered = [lab for lab in table.submaps if lab in holding]  # stable: ties keep the table's order
            labels = sorted(ordered, key=lambda lab: -table.submaps[lab].size)[:MAX_COUNTRY_CLUSTERS]
            if labels:
                return [self.submap_id(",".join(labels))]
        return []

    def widen(self, index: MapView, labels: list[str], near: tuple[float, float] | None) -> tuple[str, str]:
        """Adds the clusters nearest the union's centroid (at least 3, at most as many as it has)."""
        table = self.table(index)
        present = set(table.spans)
        if set(labels) >= present:
            return WHOLE_MAP, "all clusters -> the whole map"
        lat, lon = spherical_centroid([table.submaps[x].lat for x in labels], [table.submaps[x].lon for x in labels],
                                      [table.submaps[x].size for x in labels])
        ranked = [x for x in self.nearest_labels(lat, lon, len(present) + 1) if x in present]
        extra = [x for x in ranked if x not in labels][: max(3, len(labels))]
        return self.submap_id(",".join(labels + extra)), f"added the {len(extra)} nearest clusters"
