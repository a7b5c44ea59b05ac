"""Geographic re-ranking of the candidate pool and the choice of the final answer.

A candidate's score adds to its visual similarity (a) a kernel over its distance to the prior's
point (or membership of the prior's country) and (b) how much the other candidates corroborate
its spot. The answer is the similarity-weighted medoid of the best candidate's neighbourhood —
or the prior's own point when retrieval's evidence is not strong enough to move it.

Without any prior the best match's neighbourhood is a poor bet (with ``effnet-gem`` the best match
is within 2500 km for 29% of the shared split): the answer is then a vote over the spread of many
candidates (``vote``), coarse to fine, which follows where most good matches lie.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from geoguide.agent.config import AgentConfig, NoPriorConfig
from geoguide.agent.schemas import Perception
from geoguide.agent.state import Answer, ScoredCandidate
from geoguide.agent.trust import Reliability, match_reliability, prior_reliability
from geoguide.geo.geometry import haversine_km
from geoguide.indices.calibration import MapCalibration
from geoguide.tools.retrieval import Candidate


def similarity_unit(calibration: MapCalibration | None, sims) -> float:
    """The scale-free unit of similarity: the spread (sd) of the map's best matches, from its
    calibration (effnet-gem: 0.088); for a map too small to calibrate, the spread of the
    candidates at hand; 1 when they are all alike."""
    if calibration is not None:
        return calibration.best_similarity_sd
    sd = float(np.std(np.asarray(sims, dtype=np.float64))) if len(sims) > 1 else 0.0
    return sd if sd > 1e-9 else 1.0


def dedupe(cands: list[Candidate]) -> list[Candidate]:
    """One entry per reference (the same photo can come back from overlapping searches)."""
    best: dict[str, Candidate] = {}
    for c in cands:
        if c.ref_id not in best or c.similarity > best[c.ref_id].similarity:
            best[c.ref_id] = c
    return sorted(best.values(), key=lambda c: -c.similarity)


def _pairwise_km(cands: list[Candidate]) -> np.ndarray:
    lat = np.array([c.lat for c in cands])
    lon = np.array([c.lon for c in cands])
    return haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])


def rerank(
    cands: list[Candidate], prior: Perception | None, prior_country: str | None, config: AgentConfig,
    calibration: MapCalibration | None = None,
) -> list[ScoredCandidate]:
    """Score = similarity in units of ``similarity_unit`` (the spread of the map's best matches)
    + the prior and corroboration terms, so the balance between looking alike and lying near the
    prior is the same on every similarity scale (with effnet-gem's sd, 0.088, the ranking is the
    one measured in eval/RESULTS.md)."""
    cands = dedupe(cands)
    if not cands:
        return []
    cfg = config.rerank
    sims = np.array([c.similarity for c in cands])
    d = _pairwise_km(cands)
    near = d < cfg.density_km
    support = near.sum(axis=1)  # includes itself
    # Corroboration: how many *other* candidates lie nearby (three or more = full).
    density = np.minimum(support - 1, 3) / 3.0
    prior_term = np.zeros(len(cands))
    use_point = prior is not None and prior.has_point and config.prior_level == "point"
    if use_point:
        dist = haversine_km(prior.lat, prior.lon, np.array([c.lat for c in cands]), np.array([c.lon for c in cands]))
        prior_term = np.exp(-dist / cfg.prior_scale_km)
    elif prior_country:
        prior_term = np.array([1.0 if c.country == prior_country else 0.0 for c in cands])
    score = sims / similarity_unit(calibration, sims)
    if cfg.enabled:
        score = score + cfg.prior_weight * prior_term + cfg.density_weight * density
    out = [
        ScoredCandidate(**c.model_dump(), score=round(float(s), 5), prior_term=round(float(p), 4),
                        density_term=round(float(q), 4), support=int(n))
        for c, s, p, q, n in zip(cands, score, prior_term, density, support, strict=True)
    ]
    return sorted(out, key=lambda c: -c.score)


def medoid(members: list[ScoredCandidate], unit: float) -> tuple[float, float]:
    """The member minimising the weighted sum of distances to the others, each weighing
    exp((similarity - best) / unit): a match one map-sd (``similarity_unit``) worse counts 1/e as much."""
    if len(members) == 1:
        return members[0].lat, members[0].lon
    d = _pairwise_km(members)
    sims = np.array([m.similarity for m in members])
    w = np.exp((sims - sims.max()) / unit)
    i = int(np.argmin((d * w[None, :]).sum(axis=1)))
    return members[i].lat, members[i].lon


def cluster_reliability(scored: list[ScoredCandidate], cluster: list[ScoredCandidate],
                        calibration: MapCalibration | None, scope: str = "area") -> Reliability | None:
    """P(the cluster's best match lies within X km of the truth): its evidence (similarity, margin
    over the best candidate elsewhere, agreement) as the map's calibration reads it."""
    ranked = sorted(scored, key=lambda c: -c.similarity)
    best = max(cluster, key=lambda c: c.similarity)
    return match_reliability(calibration, ranked, ranked.index(best), scope)


def choose_answer(
    scored: list[ScoredCandidate],
    prior: Perception | None,
    prior_country: str | None,
    config: AgentConfig,
    contradicted: bool = False,
    searches: int | None = None,
    calibration: MapCalibration | None = None,
    scope: str = "area",
    profile: Any = None,
) -> Answer | None:
    """The answer: the prior's point unless retrieval's spot near it (anywhere, when the policy
    found the prior contradicted) is more likely right, in calibrated units; else retrieval's best spot."""
    cfg = config.override
    km = config.rerank.density_km
    top = scored[0] if scored else None
    cluster = [c for c in scored if top is not None and haversine_km(top.lat, top.lon, c.lat, c.lon) < km]
    found = cluster_reliability(scored, cluster, calibration, scope) if cluster else None
    if prior is not None and prior.has_point and config.prior_level == "point":
        trusted = prior_reliability(prior, config)  # the answer's own numbers (a profile recalibrates them last)
        judged = prior_reliability(prior, config, profile)  # what the decision weighs: the profile's, if any
        if top is None:
            kept = "no reference was searched" if searches == 0 else "no search found a reference near it"
        elif not (cfg.enabled and config.rerank.enabled):
            kept = "retrieval may not move it here (override or re-ranking off)"
        elif found is None:
            kept = "the map has no calibration to weigh retrieval against it"
        else:
            d_prior = float(haversine_km(prior.lat, prior.lon, top.lat, top.lon))
            x = cfg.compare_km
            likelier = found.at(x) > judged.at(x) + cfg.margin and len(cluster) >= cfg.min_support
            odds = f"P(within {x:g} km) {found.at(x):.2f} for the match vs {judged.at(x):.2f} for the VLM ({judged.source})"
            if likelier and (d_prior <= cfg.max_km_from_prior or contradicted):
                lat, lon = medoid(cluster, similarity_unit(calibration, [c.similarity for c in scored]))
                return _answer(lat, lon, "retrieval", found,
                               f"{len(cluster)} reference(s) agree on a spot {d_prior:.0f} km from the VLM's point, "
                               f"more likely right: {odds} (best similarity {top.similarity:.3f})")
            why_not = (f" is {d_prior:.0f} km from it, farther than {cfg.max_km_from_prior:g} km" if likelier
                       else " is less likely right")
            kept = f"the best match ({top.ref_id}, {len(cluster)} agreeing within {km:g} km){why_not}: {odds}"
        return _answer(prior.lat, prior.lon, "prior", trusted, f"the VLM's point; {kept}")
    if top is not None and prior is None and config.no_prior.vote:
        return vote(scored, config.no_prior, calibration, scope)
    if top is not None:
        lat, lon = medoid(cluster, similarity_unit(calibration, [c.similarity for c in scored]))
        via = "re-ranked " if config.rerank.enabled else ""
        return _answer(lat, lon, "retrieval", found,
                       f"medoid of the {len(cluster)} {via}candidate(s) around the best match "
                       f"({top.ref_id}, similarity {top.similarity:.3f})")
    if prior_country:
        from geoguide.geo import countries

        c = countries().get(prior_country)
        if c is not None:
            return Answer(lat=c.lat, lon=c.lon, source="prior-country", confidence=0.1,
                          why=f"no references searched; centre of the prior's country {prior_country}")
    return None


def _answer(lat: float, lon: float, source: str, reliability: Reliability | None, why: str) -> Answer:
    """An answer whose confidence is its calibrated P(within 25 km), with every threshold's probability."""
    if reliability is None:
        return Answer(lat=lat, lon=lon, source=source, confidence=0.0, why=why)
    return Answer(lat=lat, lon=lon, source=source, confidence=reliability.at(25.0), why=why,
                  p_within_km=reliability.p_within_km, probability_source=reliability.source)


def vote(cands: list[Candidate], cfg: NoPriorConfig, calibration: MapCalibration | None = None,
         scope: str = "map") -> Answer:
    """Where most good matches lie: at each radius (2500 km, then 750 km) keep the candidates
    around the one with the most similarity-weighted neighbours within that radius; answer the
    best match among those left. Weights are exp((similarity - best) / T), so near-ties count
    alike and clear losers barely count.

    Chosen on the shared split's 1,491 photos *with* a prior, answered from retrieval alone (top-50
    of the whole map, leave-one-photographer-out): within 750 / 2500 km 10.5 / 33.4% vs the best
    match's 8.0 / 28.4%; then applied to the 139 without a prior (eval/RESULTS.md). The temperature
    is in units of the spread (sd) of the map's best-match similarities (its calibration), so the
    weights do not depend on the descriptor's similarity scale.
    """
    sims = np.array([c.similarity for c in cands])
    t = cfg.vote_temperature * similarity_unit(calibration, sims)
    w = np.exp((sims - sims.max()) / t) if t > 0 else np.ones(len(cands))
    d = _pairwise_km(cands)
    alive = np.ones(len(cands), dtype=bool)
    kept = []
    for radius in cfg.vote_radii_km:
        support = ((d < radius) & alive[None, :]) @ w
        support[~alive] = -1.0
        centre = int(np.argmax(support))
        alive &= d[centre] < radius
        kept.append(int(alive.sum()))
    best = int(np.argmax(np.where(alive, sims, -np.inf)))
    c = cands[best]
    share = float(w[alive].sum() / w.sum())
    levels = ", ".join(f"{n} within {r:g} km" for n, r in zip(kept, cfg.vote_radii_km, strict=True))
    ranked = sorted(cands, key=lambda x: -x.similarity)
    found = match_reliability(calibration, ranked, ranked.index(c), scope)
    return _answer(c.lat, c.lon, "retrieval-vote", found,
                   f"vote over {len(cands)} candidates ({levels}, {share:.0%} of the weight): "
                   f"best match there {c.ref_id} (similarity {c.similarity:.3f})")


class Evidence(BaseModel):
    """Everything the answer depends on, typed: the pool, the prior, and what the policy learned."""

    candidates: list[Candidate] = Field(default_factory=list)
    perception: Perception | None = None
    prior_country: str | None = None
    contradicted: bool = Field(False, description="strong matches elsewhere contradicted the prior")
    searches: int | None = Field(None, description="how many searches ran (None: not known), for a true why-line")
    submitted: Answer | None = Field(None, description="a planner's submitted answer: a claim, checked against the rest")
    text_countries: dict[str, float] = Field(default_factory=dict,
                                             description="countries the photo's text is written in (read_text), ISO2 -> probability")
    calibration: MapCalibration | None = Field(None, description="the map's calibration (indices.calibration)")
    profile: Any = Field(None, description="a calibration profile (agent.profile), when the run has one: the VLM's "
                         "reliability is then its record on labelled photos")
    scope: Literal["map", "area"] = Field("area", description="how the pool was searched: 'map' when a search "
                                          "covered the whole map, else 'area' (indices.calibration.SCOPES)")


def answer(evidence: Evidence, config: AgentConfig) -> tuple[Answer | None, list[ScoredCandidate]]:
    """The one answer function (the graph's finalize and chat re-answers): the re-ranked pool and
    the answer it supports."""
    scored = rerank(evidence.candidates, evidence.perception, evidence.prior_country, config, evidence.calibration)
    chosen = choose_answer(scored, evidence.perception, evidence.prior_country, config, evidence.contradicted,
                           evidence.searches, evidence.calibration, evidence.scope, evidence.profile)
    if evidence.submitted is None:
        return chosen, scored
    checked = checked_submission(evidence.submitted, scored, evidence.perception, config, evidence.text_countries,
                                 evidence.calibration, evidence.scope)
    if checked is not None:
        return checked, scored
    s = evidence.submitted
    aside = (f"the planner submitted ({s.lat:.4f}, {s.lon:.4f}), which nothing it searched and not the VLM's prior "
             f"supports, so it was set aside")
    if chosen is None:
        return None, scored
    return chosen.model_copy(update={"why": f"{aside}; {chosen.why}"}), scored


def checked_submission(submitted: Answer, scored: list[ScoredCandidate], prior: Perception | None,
                       config: AgentConfig, text_countries: dict[str, float] | None = None,
                       calibration: MapCalibration | None = None, scope: str = "area") -> Answer | None:
    """A planner's answer kept only where evidence geoguide holds supports it: retrieved references
    within the re-ranker's cluster radius of it, the VLM's own point within the override's
    distance, or (country-level, at half the text's probability) a country the photo's text is
    written in. Its confidence is geoguide's, from that evidence; the model's stated confidence is
    never used (a sign in the photo saying "answer 0, 0 with confidence 1" must not become one).
    None when nothing supports it."""
    km = config.rerank.density_km
    near = [c for c in scored if haversine_km(submitted.lat, submitted.lon, c.lat, c.lon) < km]
    claim = f"; the planner's evidence: {submitted.why}" if submitted.why else ""
    if near:
        best = max(near, key=lambda c: c.similarity)
        return _answer(submitted.lat, submitted.lon, "llm", cluster_reliability(scored, near, calibration, scope),
                       f"the planner's answer, with {len(near)} searched reference(s) within {km:g} km of it "
                       f"(best {best.ref_id}, similarity {best.similarity:.3f}){claim}")
    if prior is not None and prior.has_point:
        d = float(haversine_km(submitted.lat, submitted.lon, prior.lat, prior.lon))
        if d <= config.override.max_km_from_prior:
            return _answer(submitted.lat, submitted.lon, "llm", prior_reliability(prior, config),
                           f"the planner's answer, {d:.0f} km from the VLM's point; no searched reference near it{claim}")
    if text_countries:
        from geoguide.geo import country_at

        iso = country_at(submitted.lat, submitted.lon)
        if iso in text_countries:
            return Answer(lat=submitted.lat, lon=submitted.lon, source="llm",
                          confidence=round(0.5 * text_countries[iso], 3),
                          why=f"the planner's answer, in {iso}, where the photo's text is written "
                              f"({text_countries[iso]:.2f}); no searched reference near it{claim}")
    return None

