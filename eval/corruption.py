"""Prior corruption, the paper's robustness test: how much does a wrong VLM prior cost?

``CorruptedPriorBackend`` wraps any backend and post-processes what ``perceive`` returns, so the
agent runs unchanged on a deliberately wrong prior. Each photo is corrupted with probability ``p``
from a generator seeded by (seed, image id): a run is reproducible whatever the order or number of
workers, and for one seed the photos corrupted at p = 0.2 are a subset of those at p = 0.4, so a
p-sweep varies one thing only.

A corruption replaces the prior's country (``mode``) and/or moves its point by Gaussian noise
(``noise_km``). A replaced country moves the point to that country's centroid, as a model that
named the wrong country would put it there.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field, model_validator

from geoguide.agent.backends.base import ChatBackend, PriorProvider
from geoguide.agent.backends.media import ImageInput
from geoguide.agent.schemas import CountryGuess, Perception, PerceptionOutcome
from geoguide.geo.geometry import EARTH_RADIUS_KM, latlon_to_unit, unit_to_latlon


def _random_country(iso2: str | None, rng: np.random.Generator) -> str:
    """Any other country, uniformly."""
    from geoguide.geo import countries

    pool = sorted(c for c in countries() if c != iso2)
    return pool[int(rng.integers(len(pool)))]


def _neighbour_country(iso2: str | None, rng: np.random.Generator) -> str:
    """A land neighbour on the same continent (France -> Spain, not French Guiana's Brazil);
    any neighbour if none shares the continent; a random country for islands and unknowns."""
    from geoguide.geo import all_neighbours, continent_of

    near = all_neighbours(iso2)
    same = [c for c in near if continent_of(c) == continent_of(iso2)]
    pool = same or near
    return pool[int(rng.integers(len(pool)))] if pool else _random_country(iso2, rng)


CORRUPTION_MODES: dict[str, Callable[[str | None, np.random.Generator], str] | None] = {
    "neighbour": _neighbour_country,
    "random": _random_country,
    "none": None,  # keep the country; only the noise applies
}


class CorruptionSpec(BaseModel):
    """What to do to the prior; recorded in the run's config."""

    p: float = Field(ge=0.0, le=1.0, description="probability that a photo's prior is corrupted")
    mode: str = Field("neighbour", description=f"country replacement: {' | '.join(CORRUPTION_MODES)}")
    noise_km: float = Field(
        0.0, ge=0.0, description="std-dev (km, per axis) of Gaussian noise added to the point"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> CorruptionSpec:
        if self.mode not in CORRUPTION_MODES:
            raise ValueError(
                f"unknown corruption mode {self.mode!r}; choose from {', '.join(CORRUPTION_MODES)}"
            )
        if CORRUPTION_MODES[self.mode] is None and self.noise_km == 0:
            raise ValueError("corruption mode 'none' needs noise_km > 0 (otherwise nothing is corrupted)")
        return self


class CorruptionApplied(BaseModel):
    """What happened to one photo's prior (None in a run record = not corrupted)."""

    from_country: str | None = None
    to_country: str | None = None
    from_point: tuple[float, float] | None = None
    to_point: tuple[float, float] | None = None


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, image id): order- and thread-independent."""
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def add_noise_km(lat: float, lon: float, sigma_km: float, rng: np.random.Generator) -> tuple[float, float]:
    """Move a point by an isotropic Gaussian step (sigma per east/north axis), exactly on the sphere."""
    east_km, north_km = rng.normal(0.0, sigma_km, size=2)
    d = float(np.hypot(east_km, north_km))
    if d == 0.0:
        return lat, lon
    la, lo = np.radians(lat), np.radians(lon)
    east = np.array([-np.sin(lo), np.cos(lo), 0.0])
    north = np.array([-np.sin(la) * np.cos(lo), -np.sin(la) * np.sin(lo), np.cos(la)])
    heading = (east_km * east + north_km * north) / d
    angle = d / EARTH_RADIUS_KM
    moved = np.cos(angle) * latlon_to_unit(lat, lon) + np.sin(angle) * heading
    nla, nlo = unit_to_latlon(moved[None])
    return float(nla[0]), float(nlo[0])


def corrupt_perception(
    perception: Perception, spec: CorruptionSpec, rng: np.random.Generator
) -> tuple[Perception, CorruptionApplied]:
    """The corrupted prior and what changed. The rationale is replaced: it names the true place."""
    from geoguide.geo import countries, country_at, prior_country

    top = perception.top_country
    iso = prior_country(perception)
    point = (perception.lat, perception.lon) if perception.has_point else None
    applied = CorruptionApplied(from_country=iso, to_country=iso, from_point=point, to_point=point)
    update: dict[str, Any] = {}
    pick = CORRUPTION_MODES[spec.mode]
    if pick is not None:
        new = pick(iso, rng)
        c = countries()[new]
        probability = top.probability if top else 1.0
        rest = [g for g in perception.countries[1:] if (g.iso2 or g.name) not in (new, c.name)]
        update["countries"] = [CountryGuess(iso2=new, name=c.name, probability=probability), *rest]
        update["rationale"] = c.name
        applied.to_country = new
        if point is not None:
            point = (c.lat, c.lon)
    if spec.noise_km > 0 and point is not None:
        point = add_noise_km(point[0], point[1], spec.noise_km, rng)
        if pick is None:  # the country named is the one under the new point, as a model would say
            moved_to = country_at(*point)
            applied.to_country = moved_to
            if moved_to and moved_to != iso:
                prob = top.probability if top else 1.0
                update["countries"] = [
                    CountryGuess(iso2=moved_to, probability=prob),
                    *perception.countries[1:],
                ]
            update["rationale"] = ""
    if point is not None:
        update.update(lat=point[0], lon=point[1])
    applied.to_point = point
    return perception.model_copy(update=update), applied


class CorruptedPriorBackend(PriorProvider):
    """Any backend, with its priors corrupted per ``CorruptionSpec``; the planner is the wrapped one's.

    ``applied(image_id)`` tells the runner whether (and how) that photo's prior was corrupted.
    A photo without a prior (the model gave none) is left alone: there is nothing to corrupt.
    """

    kind: ClassVar[str] = "corrupt"

    def __init__(self, inner: PriorProvider, spec: CorruptionSpec) -> None:
        super().__init__(inner.model)
        self.inner = inner
        self.corruption = spec
        self._applied: dict[str, CorruptionApplied | None] = {}
        self._lock = threading.Lock()

    @property
    def spec(self) -> str:
        s = self.corruption
        return f"{self.inner.spec}+corrupt(p={s.p:g},mode={s.mode},noise_km={s.noise_km:g},seed={s.seed})"

    def perceive(
        self,
        image: ImageInput | None,
        prompt_text: str | None = None,
        *,
        image_id: str | None = None,
        deadline: float | None = None,
    ) -> PerceptionOutcome:
        outcome = self.inner.perceive(image, prompt_text, image_id=image_id, deadline=deadline)
        if image_id is None:
            raise ValueError("prior corruption needs the image id (it seeds the per-photo draw)")
        applied = None
        rng = image_rng(self.corruption.seed, image_id)
        if outcome.perception is not None and rng.random() < self.corruption.p:
            perception, applied = corrupt_perception(outcome.perception, self.corruption, rng)
            outcome = outcome.model_copy(update={"perception": perception})
        with self._lock:
            self._applied[image_id] = applied
        return outcome

    def applied(self, image_id: str) -> CorruptionApplied | None:
        with self._lock:
            return self._applied.pop(image_id, None)

    def chat_backend(self) -> ChatBackend | None:
        return self.inner.chat_backend()

    def close(self) -> None:
        self.inner.close()
