"""Priors without a language model: ``geoclip:CLIP_DIR`` and ``clip-zeroshot:CLIP_DIR``.

Both read the photo with a CLIP image tower from the user's own folder (a ``save_pretrained``
copy, or a hub id already in the local Hugging Face cache: ``indices.descriptors.clip`` resolves
it and never downloads) and turn what they see into an ordinary ``Perception``, so every policy,
``eval`` and ``ablate`` use them like any VLM, cached per photo like model replies.

* ``geoclip`` (Vivanco Cepeda et al., NeurIPS 2023): CLIP ViT-L/14 image embedding -> GeoCLIP's
  image head -> cosine against its location encoder's embedding of a 100K-point GPS gallery. The
  head, the location encoder and the gallery ship in the ``geoclip`` package (installed without
  its torchvision/pandas requirements); this module re-implements the two small networks so the
  package's state dicts load key for key (strict) without importing its modules. GeoCLIP alone
  reaches 14.1 / 34.5 / 50.7 / 69.7 / 83.8 % on IM2GPS3k.
* ``clip-zeroshot`` (StreetCLIP or any full CLIP): the image against the text "a photo taken in
  {country}." for each country (the reference map's countries when the context knows them),
  softmax at CLIP's logit scale -> ranked countries, no point.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from geoguide.agent.backends.base import PriorProvider
from geoguide.agent.backends.cache import ResponseCache, make_key, open_cache
from geoguide.agent.backends.media import ImageInput, as_image
from geoguide.agent.backends.registry import register_backend
from geoguide.agent.schemas import Clue, CountryGuess, Perception, PerceptionOutcome, Usage
from geoguide.core.availability import Availability, local_weights

GEOCLIP_TOP_K = 100  # gallery points kept per photo: ~97% of the softmax mass on IM2GPS3k-like photos
MAX_COUNTRIES = 5


class LocalPriorBackend(PriorProvider):
    """A prior computed here by a local network: cached per photo (the image's hash and the
    model's identity), timed, and never a "service failure": broken weights fail at construction.
    The CLIP folder is the spec's argument, else ``$env_var``, else ``hub_id`` in the local
    Hugging Face cache."""

    env_var: ClassVar[str]
    hub_id: ClassVar[str]
    runtime_options: ClassVar[frozenset[str]] = frozenset({"cache", "timeout", "max_attempts"})

    def __init__(self, model: str, *, cache: ResponseCache | str | None = None, timeout: float | None = None,
                 max_attempts: int | None = None, device: str | None = None) -> None:
        del timeout, max_attempts  # a local forward pass has no server to wait for
        model = model or os.environ.get(self.env_var, "") or self.hub_id
        super().__init__(model)
        from geoguide.indices.descriptors.clip import resolve_clip_weights

        # WeightsNotFoundError (exit 2) names where to put them
        self.folder = resolve_clip_weights(model, f"{self.kind}:/path/to/folder or ${self.env_var}", self.kind)
        self.device = device or "cpu"
        self.cache = open_cache(cache)
        self._owns_cache = cache is not None and not isinstance(cache, ResponseCache)
        self._lock = threading.Lock()

    @classmethod
    def availability(cls) -> Availability:
        from geoguide.indices.descriptors.clip import resolve_clip_weights

        return local_weights(option=f"{cls.kind}:FOLDER", env_var=cls.env_var, hub_id=cls.hub_id,
                             check=resolve_clip_weights, how_to_get=f"on a connected machine: huggingface-cli "
                             f"download {cls.hub_id} (or save_pretrained it), then copy the folder here")

    def identity(self) -> dict[str, Any]:
        """What the prior depends on: part of the cache key."""
        return {"backend": self.kind, "model": str(self.folder)}

    def _predict(self, image: Any) -> Perception:
        raise NotImplementedError

    def perceive(self, image: ImageInput | None, prompt_text: str | None = None, *, image_id: str | None = None,
                 deadline: float | None = None) -> PerceptionOutcome:
        """The prompt is ignored: these models answer the one question they were trained for."""
        start = time.perf_counter()
        if image is None:
            return PerceptionOutcome()
        pil = as_image(image)
        digest = hashlib.sha256(pil.tobytes()).hexdigest()
        key = make_key(self.identity(), [{"role": "user", "content": f"image:{digest}"}], None, {})
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            perception = Perception.model_validate(hit)
            usage = Usage(model_calls=1, cache_hits=1)
        else:
            with self._lock:  # one forward pass at a time: torch modules are not promised thread-safe
                perception = self._predict(pil)
            if self.cache is not None:
                self.cache.put(key, perception.model_dump(mode="json"))
            usage = Usage(model_calls=1)
        usage.seconds = time.perf_counter() - start
        return PerceptionOutcome(perception=perception, usage=usage, raw=perception.rationale)

    def close(self) -> None:
        if self.cache is not None and self._owns_cache:
            self.cache.close()


def country_ranking(lats: np.ndarray, lons: np.ndarray, probs: np.ndarray) -> list[CountryGuess]:
    """Countries under the points, ranked by the probability mass they hold (renormalised)."""
    from geoguide.geo import country_at

    mass: dict[str, float] = {}
    for lat, lon, p in zip(lats, lons, probs, strict=True):
        code = country_at(float(lat), float(lon))
        if code:
            mass[code] = mass.get(code, 0.0) + float(p)
    total = sum(mass.values()) or 1.0
    ranked = sorted(mass.items(), key=lambda kv: -kv[1])[:MAX_COUNTRIES]
    return [CountryGuess(iso2=c, probability=round(m / total, 4)) for c, m in ranked]


@register_backend("geoclip")
class GeoCLIPBackend(LocalPriorBackend):
    kind: ClassVar[str] = "geoclip"
    env_var: ClassVar[str] = "GEOGUIDE_CLIP_DIR"
    hub_id: ClassVar[str] = "openai/clip-vit-large-patch14"

    @classmethod
    def availability(cls) -> Availability:
        try:
            from geoguide.agent.backends._geoclip_model import package_weights_digest

            package_weights_digest()
        except Exception as e:  # noqa: BLE001 - reported, not raised
            return Availability(runs_here=False, detail=str(e).splitlines()[0],
                                how_to_get="pip install --no-deps geoclip (make setup does)")
        return super().availability()

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        from geoguide.agent.backends._geoclip_model import package_weights_digest

        package_weights_digest()  # the geoclip package's files are checked now, not at the first photo
        self._parts: Any = None  # GeoCLIPHead, loaded with the first photo

    def identity(self) -> dict[str, Any]:
        from geoguide.agent.backends._geoclip_model import package_weights_digest

        return {**super().identity(), "geoclip_weights": package_weights_digest(), "top_k": GEOCLIP_TOP_K}

    def _predict(self, image: Any) -> Perception:
        if self._parts is None:
            from geoguide.agent.backends._geoclip_model import GeoCLIPHead

            self._parts = GeoCLIPHead(self.folder, self.device, self.cache.path.parent if self.cache is not None else None)
        lat, lon, prob = self._parts.top_k([image], GEOCLIP_TOP_K)[0]
        countries = country_ranking(lat, lon, prob)
        from geoguide.geo.geometry import haversine_km

        # The answer is the best gallery point; its spread is the distance holding half the top-k mass.
        dist = haversine_km(lat[0], lon[0], lat, lon)
        order = np.argsort(dist)
        cum = np.cumsum(prob[order]) / prob.sum()
        spread = float(dist[order][np.searchsorted(cum, 0.5)])
        return Perception(
            clues=[Clue(kind="other", text=f"GeoCLIP: best gallery point p={prob[0]:.3f}; top {len(prob)} hold "
                                           f"{prob.sum():.2f} of the probability")],
            countries=countries, lat=float(lat[0]), lon=float(lon[0]),
            uncertainty_km=round(max(25.0, min(spread, 2500.0)), 1),
            rationale=f"GeoCLIP gallery match ({lat[0]:.3f}, {lon[0]:.3f})",
        )


@register_backend("clip-zeroshot")
class ClipZeroShotBackend(LocalPriorBackend):
    kind: ClassVar[str] = "clip-zeroshot"
    env_var: ClassVar[str] = "GEOGUIDE_STREETCLIP_DIR"
    hub_id: ClassVar[str] = "geolocal/StreetCLIP"
    TEMPLATE: ClassVar[str] = "a photo taken in {country}."

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.countries: list[str] | None = None  # None = every country geoguide knows
        self._model: Any = None

    def restrict_countries(self, codes: list[str]) -> None:
        """Rank only the reference map's countries (called by the context that opens the index)."""
        self.countries = sorted(set(codes))
        self._model = None

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "template": self.TEMPLATE, "countries": self.countries or "all"}

    def _predict(self, image: Any) -> Perception:
        if self._model is None:
            from geoguide.agent.backends._geoclip_model import ZeroShotCountries

            self._model = ZeroShotCountries(Path(self.folder), self.TEMPLATE, self.countries, self.device)
        codes, probs = self._model.rank(image)
        guesses = [CountryGuess(iso2=c, probability=round(float(p), 4)) for c, p in zip(codes, probs, strict=True)]
        return Perception(
            clues=[Clue(kind="other", text=f"CLIP zero-shot over {self._model.n_countries} countries")],
            countries=guesses[:MAX_COUNTRIES],
            rationale=f"CLIP zero-shot: {', '.join(f'{g.iso2} {g.probability:.2f}' for g in guesses[:3])}",
        )
