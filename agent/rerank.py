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

import numpy as np
from pydantic import BaseModel, Field

from geoguide.agent.config import AgentConfig, NoPriorConfig
from geoguide.agent.schemas import Perception
from geoguide.agent.state import Answer, ScoredCandidate
from geoguide.geo.geometry import haversine_km
from geoguide.tools.retrieval import Candidate


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
    cands: list[Candidate], prior: Perception | None, prior_country: str | None, config: AgentConfig
) -> list[ScoredCandidate]:
    cands = dedupe(cands)
    if not cands:
        return []
    cfg = config.rerank
    sims = np.array([c.similarity for c in cands])
    d = _pairwise_km(cands)
    near = d < cfg.density_km
    support = near.sum(axis=1)  # includes itself
    # Corroboration: similarity mass of the *other* candidates nearby, relative to the best match.
    density = ((near * sims[None, :]).sum(axis=1) - sims) / max(float(sims.max()), 1e-6)
    density = np.minimum(density, 3.0) / 3.0
    prior_term = np.zeros(len(cands))
    use_point = prior is not None and prior.has_point and config.prior_level == "point"
    if use_point:
        dist = haversine_km(prior.lat, prior.lon, np.array([c.lat for c in cands]), np.array([c.lon for c in cands]))
        prior_term = np.exp(-dist / cfg.prior_scale_km)
    elif prior_country:
        prior_term = np.array([1.0 if c.country == prior_country else 0.0 for c in cands])
    score = sims.copy()
    if cfg.enabled:
        score = score + cfg.prior_weight * prior_term + cfg.density_weight * density
    out = [
        ScoredCandidate(**c.model_dump(), score=round(float(s), 5), prior_term=round(float(p), 4),
                        density_term=round(float(q), 4), support=int(n))
        for c, s, p, q, n in zip(cands, score, prior_term, density, support, strict=True)
    ]
    return sorted(out, key=lambda c: -c.score)


def medoid(members: list[ScoredCandidate]) -> tuple[float, float]:
    """The member minimising the similarity-weighted sum of distances to the others."""
    if len(members) == 1:
        return members[0].lat, members[0].lon
    d = _pairwise_km(members)
    w = np.array([m.similarity for m in members])
    i = int(np.argmin((d * w[None, :]).sum(axis=1)))
    return members[i].lat, members[i].lon


def choose_answer(
    scored: list[ScoredCandidate],
    prior: Perception | None,
    prior_country: str | None,
    config: AgentConfig,
    contradicted: bool = False,
    searches: int | None = None,
) -> Answer | None:
    """The answer: the prior's point unless retrieval is strong near it (or, when the policy found
    the prior contradicted by strong matches elsewhere, strong anywhere); else retrieval's best spot."""
    cfg = config.override
    km = config.rerank.density_km
    top = scored[0] if scored else None
    cluster = [c for c in scored if top is not None and haversine_km(top.lat, top.lon, c.lat, c.lon) < km]
    if prior is not None and prior.has_point and config.prior_level == "point":
        if top is None:
            kept = "no reference was searched" if searches == 0 else "no search found a reference near it"
        elif not (cfg.enabled and config.rerank.enabled):
            kept = "retrieval may not move it here (override or re-ranking off)"
        else:
            d_prior = float(haversine_km(prior.lat, prior.lon, top.lat, top.lon))
            best = max(c.similarity for c in cluster)
            strong = len(cluster) >= cfg.min_support and best >= cfg.min_similarity
            if strong and (d_prior <= cfg.max_km_from_prior or contradicted):
                lat, lon = medoid(cluster)
                return Answer(lat=lat, lon=lon, source="retrieval", confidence=_confidence(cluster),
                              why=f"{len(cluster)} references agree on a spot {d_prior:.0f} km from the VLM's point "
                                  f"(best similarity {top.similarity:.2f})")
            kept = (f"the best match ({top.ref_id}, similarity {top.similarity:.2f}, {d_prior:.0f} km away, "
                    f"{len(cluster)} agreeing within {km:g} km) is not strong enough to move it")
        return Answer(lat=prior.lat, lon=prior.lon, source="prior", confidence=_prior_confidence(prior),
                      why=f"the VLM's point; {kept}")
    if top is not None and prior is None and config.no_prior.vote:
        return vote(scored, config.no_prior)
    if top is not None:
        lat, lon = medoid(cluster)
        via = "re-ranked " if config.rerank.enabled else ""
        return Answer(lat=lat, lon=lon, source="retrieval", confidence=_confidence(cluster),
                      why=f"medoid of the {len(cluster)} {via}candidate(s) around the best match "
                          f"({top.ref_id}, similarity {top.similarity:.2f})")
    if prior_country:
        from geoguide.geo import countries

        c = countries().get(prior_country)
        if c is not None:
            return Answer(lat=c.lat, lon=c.lon, source="prior-country", confidence=0.1,
                          why=f"no references searched; centre of the prior's country {prior_country}")
    return None


def vote(cands: list[Candidate], cfg: NoPriorConfig) -> Answer:
    """Where most good matches lie: at each radius (2500 km, then 750 km) keep the candidates
    around the one with the most similarity-weighted neighbours within that radius; answer the
    best match among those left. Weights are exp((similarity - best) / T), so near-ties count
    alike and clear losers barely count.

    Chosen on the shared split's 1,491 photos *with* a prior, answered from retrieval alone (top-50
    of the whole map, leave-one-photographer-out): within 750 / 2500 km 10.5 / 33.4% vs the best
    match's 8.0 / 28.4%; then applied to the 139 without a prior (eval/RESULTS.md).
    """
    sims = np.array([c.similarity for c in cands])
    w = np.exp((sims - sims.max()) / cfg.vote_temperature) if cfg.vote_temperature > 0 else np.ones(len(cands))
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
    return Answer(lat=c.lat, lon=c.lon, source="retrieval-vote", confidence=round(float(np.clip(c.similarity, 0, 1)) * share, 3),
                  why=f"vote over {len(cands)} candidates ({levels}, {share:.0%} of the weight): "
                      f"best match there {c.ref_id} (similarity {c.similarity:.2f})")


def _confidence(cluster: list[ScoredCandidate]) -> float:
    """Heuristic in [0, 1]: match strength times corroboration (3+ agreeing references = full)."""
    best = max(c.similarity for c in cluster)
    return round(float(np.clip(best, 0, 1) * min(1.0, len(cluster) / 3)), 3)


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


def answer(evidence: Evidence, config: AgentConfig) -> tuple[Answer | None, list[ScoredCandidate]]:
    """The one answer function (the graph's finalize and chat re-answers): the re-ranked pool and
    the answer it supports."""
    scored = rerank(evidence.candidates, evidence.perception, evidence.prior_country, config)
    chosen = choose_answer(scored, evidence.perception, evidence.prior_country, config, evidence.contradicted,
                           evidence.searches)
    if evidence.submitted is None:
        return chosen, scored
    checked = checked_submission(evidence.submitted, scored, evidence.perception, config, evidence.text_countries)
    if checked is not None:
        return checked, scored
    s = evidence.submitted
    aside = (f"the planner submitted ({s.lat:.4f}, {s.lon:.4f}), which nothing it searched and not the VLM's prior "
             f"supports, so it was set aside")
    if chosen is None:
        return None, scored
    return chosen.model_copy(update={"why": f"{aside}; {chosen.why}"}), scored


def checked_submission(submitted: Answer, scored: list[ScoredCandidate], prior: Perception | None,
                       config: AgentConfig, text_countries: dict[str, float] | None = None) -> Answer | None:
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
        return Answer(lat=submitted.lat, lon=submitted.lon, source="llm", confidence=_confidence(near),
                      why=f"the planner's answer, with {len(near)} searched reference(s) within {km:g} km of it "
                          f"(best {best.ref_id}, similarity {best.similarity:.2f}){claim}")
    if prior is not None and prior.has_point:
        d = float(haversine_km(submitted.lat, submitted.lon, prior.lat, prior.lon))
        if d <= config.override.max_km_from_prior:
            return Answer(lat=submitted.lat, lon=submitted.lon, source="llm", confidence=_prior_confidence(prior),
                          why=f"the planner's answer, {d:.0f} km from the VLM's point; no searched reference "
                              f"near it{claim}")
    if text_countries:
        from geoguide.geo import country_at

        iso = country_at(submitted.lat, submitted.lon)
        if iso in text_countries:
            return Answer(lat=submitted.lat, lon=submitted.lon, source="llm",
                          confidence=round(0.5 * text_countries[iso], 3),
                          why=f"the planner's answer, in {iso}, where the photo's text is written "
                              f"({text_countries[iso]:.2f}); no searched reference near it{claim}")
    return None


def _prior_confidence(prior: Perception) -> float:
    return round(prior.top_country.probability * 0.6 if prior.top_country else 0.4, 3)
