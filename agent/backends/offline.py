"""Backends that call no model: recorded answers (``replay:CSV``) and no prior at all (``none``).

Replay is how benchmark runs work here without an API: the recorded answers of a real VLM stand
in for ``perceive``, keyed by image file name. ``none`` is the retrieval-only baseline.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from geoguide.agent.backends.base import PriorProvider
from geoguide.agent.backends.errors import BackendConfigError
from geoguide.agent.backends.media import ImageInput
from geoguide.agent.backends.registry import register_backend
from geoguide.agent.schemas import CountryGuess, Perception, PerceptionOutcome, Usage
from geoguide.core.availability import Availability

log = logging.getLogger(__name__)

REPLAY_COLUMNS = ("IMG_ID", "LAT_pred", "LON_pred", "location", "success", "model_name")
NO_ANSWER = "no recorded answer"


def _country_lookup() -> Callable[[float, float], Any] | None:
    """``geo.country_at`` if that module is present; the country guess is optional."""
    try:
        from geoguide.geo import country_at
    except Exception as exc:  # noqa: BLE001 - absent or broken: replay still works without countries
        log.info("replay: no offline country lookup (%s); priors will carry coordinates only", exc)
        return None
    return country_at


def _as_country_guess(found: Any, probability: float) -> CountryGuess | None:
    """Accept what ``country_at`` returns: an ISO2/name string, or an object with ``iso2``/``name``."""
    if found is None:
        return None
    if isinstance(found, str):
        iso2, name = (found, None) if len(found) == 2 else (None, found)
    else:
        iso2, name = getattr(found, "iso2", None), getattr(found, "name", None)
    try:
        return CountryGuess(iso2=iso2, name=name, probability=probability)
    except ValueError:
        return None


@register_backend("replay")
class ReplayBackend(PriorProvider):
    """Recorded answers from a CSV with columns ``REPLAY_COLUMNS`` (the gemini prior file's).

    The recording has a point and a free-text place, no confidence, so the prior is: that point,
    ``location`` as the rationale, and - when an offline reverse geocoder is importable - the
    country under the point with ``country_probability`` (default 1.0: the model committed to
    one answer). Rows with success False, unparsable or out-of-range coordinates are treated as
    missing: the outcome has no perception and an error starting with "no recorded answer".
    """

    kind: ClassVar[str] = "replay"

    @classmethod
    def availability(cls) -> Availability:
        return Availability(runs_here=None, detail="needs a CSV of recorded answers: replay:prior.csv",
                            how_to_get="e.g. the shared split's prior_gemini-2.0-flash.csv")

    def __init__(self, path: str | Path, *, country_probability: float = 1.0, countries: bool = True) -> None:
        super().__init__(str(path))
        if not str(path):
            raise BackendConfigError("replay needs a CSV path: replay:PATH")
        self.path = Path(path)
        if not self.path.is_file():
            raise BackendConfigError(f"replay file {self.path} does not exist")
        with self.path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("IMG_ID", "LAT_pred", "LON_pred") if c not in (reader.fieldnames or [])]
            if missing:
                raise BackendConfigError(f"replay file {self.path} lacks columns {missing}; expected {REPLAY_COLUMNS}")
            self.rows: dict[str, dict[str, str]] = {Path(r["IMG_ID"]).name: r for r in reader}
        names = {r.get("model_name") for r in self.rows.values() if r.get("model_name")}
        self.recorded_model = ",".join(sorted(n for n in names if n)) or "unknown"
        self.country_probability = country_probability
        self._country_at = _country_lookup() if countries else None

    def _perception(self, row: dict[str, str]) -> tuple[Perception | None, str | None]:
        if str(row.get("success", "True")).strip().lower() not in ("true", "1", "yes"):
            return None, "the recorded call failed"
        try:
            lat, lon = float(row["LAT_pred"]), float(row["LON_pred"])
        except (TypeError, ValueError):
            return None, f"unparsable coordinates {row.get('LAT_pred')!r}, {row.get('LON_pred')!r}"
        if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
            return None, f"coordinates out of range ({lat}, {lon})"
        countries: list[CountryGuess] = []
        if self._country_at is not None:
            try:
                guess = _as_country_guess(self._country_at(lat, lon), self.country_probability)
            except Exception as exc:  # noqa: BLE001 - a lookup failure must not lose the recorded point
                log.debug("replay: country lookup failed at (%s, %s): %s", lat, lon, exc)
                guess = None
            countries = [guess] if guess else []
        location = (row.get("location") or "").strip()
        return Perception(countries=countries, lat=lat, lon=lon, rationale=location), None

    def perceive(
        self,
        image: ImageInput | None,
        prompt_text: str | None = None,
        *,
        image_id: str | None = None,
        deadline: float | None = None,
    ) -> PerceptionOutcome:
        """Look up ``image_id`` (or the file name of ``image`` when it is a path); the prompt is ignored."""
        start = time.perf_counter()
        if image_id is None and isinstance(image, (str, Path)):
            image_id = Path(image).name
        if image_id is None:
            raise ValueError("replay backend needs image_id (the image file name) or an image path")
        row = self.rows.get(Path(image_id).name)
        if row is None:
            perception, reason = None, f"{image_id} is not in {self.path.name}"
        else:
            perception, reason = self._perception(row)
        usage = Usage(model_calls=1, cache_hits=1) if perception is not None else Usage()
        usage.seconds = time.perf_counter() - start
        return PerceptionOutcome(
            perception=perception,
            usage=usage,
            error=None if perception is not None else f"{NO_ANSWER}: {reason}",
            failure=None if perception is not None else "no_answer",
            raw=None if row is None else ",".join(str(row.get(c, "")) for c in REPLAY_COLUMNS),
        )


@register_backend("none")
class NoneBackend(PriorProvider):
    """No VLM: every outcome is "no prior, no error", which the graph reads as retrieval only."""

    kind: ClassVar[str] = "none"

    @classmethod
    def availability(cls) -> Availability:
        return Availability(runs_here=True, detail="no prior: retrieval only")

    def __init__(self, model: str = "") -> None:
        if model:
            raise BackendConfigError(f"backend 'none' takes no argument, got {model!r}")
        super().__init__("")

    @property
    def spec(self) -> str:
        return "none"

    def perceive(
        self,
        image: ImageInput | None,
        prompt_text: str | None = None,
        *,
        image_id: str | None = None,
        deadline: float | None = None,
    ) -> PerceptionOutcome:
        return PerceptionOutcome()
