"""``rules``: the paper's pipeline as a deterministic policy, plus widening and switching.

prior -> submap (what the configured scheme offers: the prior's country, the K-means clusters
nearest its point, ...) -> search
(and a whole-map probe) -> agreement test -> widen or switch to the next country hypothesis, a
bounded number of times -> finalize (re-rank, answer). With no prior: read the photo's text
(``read_text``); when its language is clear, search the countries that write it, else the whole
map; the answer is then a vote over the candidates' spread (``agent.rerank.vote``).

Agreement test, after searching submap S, in calibrated units (each search's P(best match within
X km), from the map's own calibration, ``agent.trust``; no similarity threshold, so the same
decisions on any descriptor's similarity scale):
  * contradicted: the whole-map probe's best match beats S's, at least two of the probe's top five
    sit in one other country C, and the probe's best match is more likely within 200 km of the
    truth than the VLM's country is right -> switch to C if the VLM named it, else widen S if C is
    S's land neighbour.
  * weak: S's best match is less than ``weak_ratio`` as likely within 200 km as the whole map's
    best (the probe's; the map's average match without a probe) -> widen S (if widens are left).
  * otherwise the evidence agrees (or is too weak to argue): finalize.
"""

from __future__ import annotations

from langchain_core.messages import AIMessage, ToolMessage
from pydantic import ValidationError

from geoguide.agent.context import AgentContext
from geoguide.agent.policies.base import Decision, Policy, register_policy
from geoguide.agent.state import AgentState, Event, SearchIntent, SearchStep
from geoguide.agent.trust import prior_country_reliability
from geoguide.indices.submaps import WHOLE_MAP
from geoguide.tools.read_text import ReadTextResult

# The whole-map probe tests the prior; its candidates do not enter the answer's pool.
PROBE_REASON = "whole-map probe to test the prior"
REGION_KM = 200.0  # the agreement tests ask: is the best match in the right region?


def _one(submap_id: str, k: int, intent: SearchIntent, n: int) -> Decision:
    return Decision.searches([(submap_id, k, intent)], n)


@register_policy
class RulesPolicy(Policy):
    name = "rules"

    def start(self, state: AgentState, ctx: AgentContext) -> dict:
        return {"hypotheses": hypotheses(state, ctx)}

    def decide(self, state: AgentState, ctx: AgentContext) -> Decision:
        cfg = ctx.config
        n = len(state.intents)
        if not state.trail:
            if not state.hypotheses:
                return _no_prior(state, ctx, n)
            calls = [(state.hypotheses[0], cfg.k, SearchIntent(purpose="hypothesis", reason="the prior's first hypothesis"))]
            if cfg.global_probe and state.hypotheses[0] != WHOLE_MAP:
                calls.append((WHOLE_MAP, cfg.k, SearchIntent(purpose="probe", reason=PROBE_REASON)))
            return Decision.searches(calls, n)
        if not state.hypotheses:
            return Decision(done=True)
        current = _area_steps(state)[-1]
        probe = next((s for s in state.trail if s.purpose == "probe"), None)
        switches = sum(1 for s in state.trail if s.purpose == "switch")
        widens = sum(1 for s in state.trail if s.purpose == "widen")
        if probe is not None and switches < cfg.max_switches:
            other = _contradiction(probe, current, prior_country_reliability(state.perception, cfg, ctx.profile))
            if other is not None:
                searched = {s.submap_id for s in state.trail}
                target = next((h for h in state.hypotheses
                               if h not in searched and ctx.index.countries_of(h) == {other}), None)
                if target is not None:
                    why = f"switch: strong matches in {other}, the VLM's next hypothesis"
                    return _one(target, cfg.k, SearchIntent(purpose="switch", reason=why, contradiction=True), n)
                if widens < cfg.max_widens:
                    wider = self._widen(state, current, ctx, n, f"widen: strong matches in {other} outside the submap",
                                        must_contain=other, contradiction=True)
                    if wider is not None:
                        return wider
        here, there = _region_p(current), _reference_p(probe, ctx)
        if there is not None and here < cfg.weak_ratio * there and widens < cfg.max_widens:
            than = "the whole map's best" if probe is not None else "the map's average match"
            why = (f"widen: the best match in {current.submap_id} is weak (P within {REGION_KM:g} km {here:.2f}, "
                   f"{than} {there:.2f})")
            wider = self._widen(state, current, ctx, n, why)
            if wider is not None:
                return wider
        best = current.summary.best_similarity or 0.0
        return Decision(done=True, events=[Event(node="plan", text=f"evidence settles it (best similarity {best:.3f}, "
                                                                    f"P within {REGION_KM:g} km {here:.2f})")])

    def _widen(self, state: AgentState, current: SearchStep, ctx: AgentContext, n: int, reason: str,
               must_contain: str | None = None, contradiction: bool = False) -> Decision | None:
        """A search of the next wider area, or None when there is none (or it misses ``must_contain``)."""
        from geoguide.tools.base import ToolError
        from geoguide.tools.retrieval import WidenArgs, widen

        p = state.perception
        near = {"near_lat": p.lat, "near_lon": p.lon} if p is not None and p.has_point else {}
        res = widen(ctx.index, WidenArgs(submap_id=current.submap_id, **near))
        if isinstance(res, ToolError):
            return None
        named = ctx.index.countries_of(res.submap_id) if must_contain else None
        if named is not None and must_contain not in named:
            return None  # the strong matches are not in a neighbouring country: keep the prior's area
        intent = SearchIntent(purpose="widen", reason=f"{reason} -> {res.how}", contradiction=contradiction)
        return _one(res.submap_id, ctx.config.k, intent, n)


def _no_prior(state: AgentState, ctx: AgentContext, n: int) -> Decision:
    """Without a prior: read the photo's text first (once), then search where its language is
    written, or the whole map when it names none."""
    cfg = ctx.config.no_prior
    k = cfg.k if cfg.vote else ctx.config.k
    if not cfg.read_text:
        return _one("global", k, SearchIntent(purpose="no_prior", reason="no usable prior: search the whole map"), n)
    read = text_result(state)
    if read is None:
        call = {"name": "read_text", "args": {}, "id": f"read-text-{len(state.messages)}", "type": "tool_call"}
        return Decision(message=AIMessage(content="", tool_calls=[call]),
                        events=[Event(node="plan", text="no usable prior: read the photo's text", tool="read_text")])
    submap, why = text_submap(read, ctx)
    if submap is None:
        return _one("global", k, SearchIntent(purpose="no_prior", reason=f"no usable prior, {why}: search the whole map"), n)
    return _one(submap, k, SearchIntent(purpose="no_prior", reason=f"no usable prior; {why}"), n)


def text_result(state: AgentState) -> ReadTextResult | None:
    """The latest ``read_text`` reply in the conversation (a legible=False stand-in for an error
    reply); None when the tool has not been called."""
    for m in reversed(state.messages):
        if isinstance(m, ToolMessage) and m.name == "read_text":
            if m.status == "error":
                return ReadTextResult(legible=False, note=m.text[:200])
            try:
                return ReadTextResult.model_validate_json(m.text)
            except ValidationError:
                return ReadTextResult(legible=False, note="the read_text reply could not be read")
    return None


def text_submap(read: ReadTextResult, ctx: AgentContext) -> tuple[str | None, str]:
    """The union of the countries that write the photo's language (the most likely ones up to
    ``text_coverage`` of its probability, those with references), with the reason; None when the
    text is illegible, its language unclear, or none of its countries is in the index."""
    cfg = ctx.config.no_prior
    if not read.legible or not read.languages:
        return None, "no legible text"
    lang = read.languages[0]
    if lang.probability < cfg.min_language_probability:
        return None, f"the text's language is unclear ({lang.name} {lang.probability:.2f})"
    table = ctx.index.scheme_of("country")
    chosen, mass = [], 0.0
    total = sum(c.probability for c in read.countries)  # of the listed countries (the tool lists the top ones)
    for c in read.countries:
        if mass >= cfg.text_coverage * total or len(chosen) >= cfg.max_text_countries:
            break
        mass += c.probability
        if table is not None and c.iso2 in table.spans:
            chosen.append(c.iso2)
    if not chosen:
        return None, f"no references where {lang.name} is written"
    return table.scheme.submap_id(",".join(chosen)), f"the text {read.text[:40]!r} is {lang.name} ({lang.probability:.2f})"


def _area_steps(state: AgentState) -> list[SearchStep]:
    """The searches of hypothesis areas (the probe excluded)."""
    steps = [s for s in state.trail if s.purpose != "probe"]
    return steps or state.trail


def _region_p(step: SearchStep) -> float:
    """P(the search's best match lies within REGION_KM of the truth); 0 without one."""
    p = step.summary.p_within_km
    return p[f"{REGION_KM:g}"] if p else 0.0


def _reference_p(probe: SearchStep | None, ctx: AgentContext) -> float | None:
    """What a good match is worth here: the whole-map probe's, else the map's average (base rate)."""
    if probe is not None:
        return _region_p(probe) if probe.summary.p_within_km else None
    cal = ctx.calibration()
    return next((m.base_rate for m in cal.of("area").models if m.km == REGION_KM), None) if cal is not None else None


def _contradiction(probe: SearchStep, current: SearchStep, country_p: float) -> str | None:
    """The country the whole-map probe points to, when it is outside the current area: its best
    match beats the area's, two of its top five agree on that country, and that match is more
    likely within REGION_KM of the truth than the VLM's country is right (``country_p``)."""
    s = probe.summary
    if not s.best_similarity or not s.top_countries or _region_p(probe) <= country_p:
        return None
    if s.best_similarity <= (current.summary.best_similarity or 0.0):
        return None  # the best match is inside the area already
    country = s.top_countries[0]
    if country in current.summary.countries or s.top_countries.count(country) < 2:
        return None
    return country


def hypotheses(state: AgentState, ctx: AgentContext) -> list[str]:
    """Submap ids to try in order: what the configured scheme offers for the prior."""
    p = state.perception
    if p is None:
        return []
    from geoguide.geo import named_countries
    from geoguide.indices.submaps import PriorHint, SubmapError

    cfg = ctx.config
    try:
        table = ctx.index.stored_table(cfg.scheme)
    except SubmapError as e:
        raise ValueError(f"--scheme {cfg.scheme} needs an index built with that submap scheme: {e}") from None
    point = (p.lat, p.lon) if p.has_point and cfg.prior_level == "point" else None
    prior = PriorHint(point=point, country=state.prior_country, named=named_countries(p), clusters=cfg.kmeans_clusters)
    return table.scheme.hypotheses(ctx.index, prior)
