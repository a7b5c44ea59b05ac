"""Trust in calibrated units: how likely a retrieved match, or the VLM's point, is within
1 / 25 / 200 / 750 / 2500 km of the truth.

Why: the agent's central decision (should retrieval move the VLM's answer?) was made in raw
cosine units tuned on effnet-gem (override at similarity 0.80). On a synthetic retriever 20x
better but on a lower similarity scale it never fired (0 of 533 photos); on the same retriever
plus one component every vector shares (every cosine s -> (s + 4) / 5) it fired on 266 of 533,
on scale, not evidence (``benchmarks/retriever_quality.py``). Probabilities mean the same on
every descriptor: a match's come from the map's own calibration (``indices.calibration``, its
evidence standardised, so exactly invariant to an affine change of the similarity scale), the
prior's from a calibration profile, the model's stated uncertainty, or a stated default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

from geoguide.agent.schemas import Perception
from geoguide.indices.calibration import THRESHOLDS_KM, MapCalibration, evidence_of

if TYPE_CHECKING:
    from geoguide.agent.config import AgentConfig
    from geoguide.tools.retrieval import Candidate

KEYS = tuple(f"{km:g}" for km in THRESHOLDS_KM)

# agent.config.DEFAULT_PRIOR: Gemini 2.0 Flash's recorded answers on the shared split, over the 1,491 photos it
# answered, within 1 / 25 / 200 / 750 / 2500 km. A strong VLM's, so "conservative": retrieval must
# beat a good prior to move it; a weaker model is trusted too much until a profile says otherwise.


class Reliability(BaseModel):
    """P(within X km of the truth) for one answer or match, and where the numbers come from."""

    p_within_km: dict[str, float] = Field(description="threshold (km, as '1', '25', ...) -> probability")
    source: Literal["map", "profile", "stated", "default"] = Field(
        description="map: the index's own calibration; profile: a labelled calibration profile; stated: the "
        "model's stated uncertainty; default: the measured default for a strong VLM (agent.config.DEFAULT_PRIOR)")

    def at(self, km: float) -> float:
        return self.p_within_km[f"{km:g}"]


def prior_reliability(perception: Perception | None, config: AgentConfig, profile=None) -> Reliability:
    """How far to trust the VLM's point: a calibration profile's recalibration of it when there is
    one (``agent.profile``: this VLM's record on labelled photos); else its stated uncertainty
    (read as the sigma of a 2-D Gaussian error: P(within X) = 1 - exp(-X^2 / 2 sigma^2)), never
    below the default, which is a strong model's measured record; else the default."""
    base = _stated_or_default(perception, config)
    if profile is None:
        return base
    from geoguide.agent.profile import group_of

    p, _ = profile.apply(group_of("prior", base.source), base.p_within_km)
    return Reliability(p_within_km=p, source="profile")


def _stated_or_default(perception: Perception | None, config: AgentConfig) -> Reliability:
    default = dict(config.trust.prior_default)
    sigma = perception.uncertainty_km if perception is not None else None
    if sigma and config.trust.use_stated_uncertainty:
        stated = {k: max(default[k], round(1.0 - float(np.exp(-(km / sigma) ** 2 / 2)), 4))
                  for k, km in zip(KEYS, THRESHOLDS_KM, strict=True)}
        return Reliability(p_within_km=stated, source="stated")
    return Reliability(p_within_km=default, source="default")


def prior_country_reliability(perception: Perception | None, config: AgentConfig, profile=None) -> float:
    """P(the VLM's country is right): its stated probability, else its 750 km reliability."""
    top = perception.top_country if perception is not None else None
    if top is not None and top.probability < 1.0 and config.trust.use_stated_uncertainty:
        return float(top.probability)
    return prior_reliability(perception, config, profile).at(750.0)


def match_reliability(calibration: MapCalibration | None, ranked: Sequence[Candidate],
                      focus: int = 0, scope: str = "area") -> Reliability | None:
    """P(candidate ``ranked[focus]`` lies within X km of the truth), from its evidence as the
    map's calibration reads it: its similarity, its margin over the best other candidate, and the
    share of the top ``k`` near it. ``ranked`` is best first by similarity; None without a
    calibration or candidates. ``scope`` says how they were searched (``indices.calibration.SCOPES``)."""
    if calibration is None or not ranked:
        return None
    order = [focus, *[i for i in range(len(ranked)) if i != focus]]
    cands = [ranked[i] for i in order]
    ev = evidence_of([c.similarity for c in cands], [c.lat for c in cands], [c.lon for c in cands], calibration.k)
    return Reliability(p_within_km=calibration.probabilities(ev, scope), source="map")
