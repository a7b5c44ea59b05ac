"""Typed values at the language-model boundary.

Everything a model says is parsed into these models before the graph sees it, so a malformed
reply is caught once, here, instead of as a ``KeyError`` deep in a policy. Parsing is lenient
where a real model is predictably sloppy (``"country": "France"`` instead of ``"name"``, a clue
kind we did not list) and strict where a wrong value would mislead retrieval (coordinates out
of range, probabilities outside 0..1).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, computed_field, field_validator, model_validator

ClueKind = Literal[
    "script",
    "language",
    "driving_side",
    "vegetation",
    "architecture",
    "road_markings",
    "plates",
    "landmark",
    "climate",
    "terrain",
    "signage",
    "people",
    "other",
]
CLUE_KINDS: tuple[str, ...] = get_args(ClueKind)

# ISO 3166-1 has no "UK" or "EL"; models use them anyway (they are the EU's codes).
_ISO2_ALIASES = {"UK": "GB", "EL": "GR"}


class Clue(BaseModel):
    """One visible piece of evidence, e.g. ``Clue(kind="script", text="Cyrillic on shop signs")``."""

    kind: ClueKind = "other"
    text: str = Field(min_length=1)

    @field_validator("kind", mode="before")
    @classmethod
    def _unknown_kind_is_other(cls, v: Any) -> Any:
        # A new clue category must not cost a repair round-trip: keep the text, file it as "other".
        if isinstance(v, str):
            norm = v.strip().lower().replace(" ", "_").replace("-", "_")
            return norm if norm in CLUE_KINDS else "other"
        return v


class CountryGuess(BaseModel):
    """A ranked country hypothesis; at least one of ``iso2`` / ``name`` is set."""

    iso2: str | None = None  # ISO 3166-1 alpha-2, upper case ("FR")
    name: str | None = None  # English short name ("France")
    probability: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _accept_country_key(cls, data: Any) -> Any:
        # Models often write {"country": "FR"} or {"country": "France"}; route it to iso2 or name.
        if isinstance(data, dict) and "country" in data:
            data = dict(data)
            value = data.pop("country")
            if isinstance(value, str) and len(value.strip()) == 2 and value.strip().isalpha():
                data.setdefault("iso2", value)
            else:
                data.setdefault("name", value)
        if isinstance(data, dict) and isinstance(data.get("iso2"), str):
            code = data["iso2"].strip().upper()
            if len(code) == 2 and code.isalpha():
                data = {**data, "iso2": _ISO2_ALIASES.get(code, code)}
            else:  # "USA", "France" in the code slot: keep it as a name rather than reject the reply
                data = {**data, "iso2": None, "name": data.get("name") or data["iso2"]}
        return data

    @model_validator(mode="after")
    def _needs_identity(self) -> CountryGuess:
        if not self.iso2 and not self.name:
            raise ValueError("a country guess needs an iso2 code or a name")
        return self

    @property
    def label(self) -> str:
        return self.iso2 or self.name or "?"


class Perception(BaseModel):
    """The VLM's geographic prior: clues, ranked countries, an optional point and its spread."""

    clues: list[Clue] = Field(default_factory=list)
    countries: list[CountryGuess] = Field(default_factory=list)  # most likely first
    lat: float | None = Field(default=None, ge=-90.0, le=90.0)
    lon: float | None = Field(default=None, ge=-180.0, le=180.0)
    uncertainty_km: float | None = Field(default=None, gt=0.0)
    rationale: str = ""

    @model_validator(mode="after")
    def _point_is_whole(self) -> Perception:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give both lat and lon, or neither")
        return self

    @property
    def has_point(self) -> bool:
        return self.lat is not None and self.lon is not None

    @property
    def top_country(self) -> CountryGuess | None:
        return self.countries[0] if self.countries else None


class Usage(BaseModel):
    """What producing an answer cost.

    Tokens and ``cost_usd`` are those of the completions behind the answer *as recorded when they
    were made*, so a benchmark table re-run from the cache reports the same cost as the original
    run; ``cached`` says no new spend happened now. ``model_calls`` counts completions (a repaired
    reply is two), ``cache_hits`` how many of them came from the cache or a recording.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    model_calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    seconds: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cached(self) -> bool:
        return self.model_calls > 0 and self.cache_hits == self.model_calls

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            model_calls=self.model_calls + other.model_calls,
            cache_hits=self.cache_hits + other.cache_hits,
            retries=self.retries + other.retries,
            seconds=self.seconds + other.seconds,
        )


PriorFailure = Literal["refused", "invalid", "no_answer", "rejected", "unreachable", "misconfigured", "exhausted"]


class PerceptionOutcome(BaseModel):
    """Result of ``Backend.perceive``: never raises for model misbehaviour, reports it instead.

    ``perception`` None with ``error`` None means "no VLM configured" (retrieval only);
    ``perception`` None with an ``error`` means the model was asked and gave nothing usable;
    ``failure`` says which kind: the model answered but gave no usable prior (``refused``,
    ``invalid``, ``no_answer`` for a replay without a row) or it could not be used at all
    (``unreachable``, ``misconfigured``, ``exhausted``; see ``agent.backends.errors``).
    ``raw`` is the last reply text, kept for debugging and the chat transcript.
    """

    perception: Perception | None = None
    usage: Usage = Field(default_factory=Usage)
    error: str | None = None
    failure: PriorFailure | None = None
    raw: str | None = None
