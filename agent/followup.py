"""Follow-up questions about a located photo, answered by the graph's ``follow_up`` node from the
trail, the candidates and the prior, the same way for every policy and backend:

  * "look near Lyon instead" / "search around Porto": geocode the place, search a radius around
    it (``agent.toolbox.run_search``, the planner's own search, so the run's leakage rules are
    imposed in that one place), and re-answer with that place as the prior;
  * "why not Portugal?": what the evidence says about that country;
  * "how sure are you?": the answer's calibrated probabilities and, with a calibration profile,
    its radius (``agent.trust``, ``agent.profile``), never a model's improvisation;
  * anything else: with a chat-capable model, the model answers from the prediction record
    (prompt ``chat/v1``); otherwise a summary of the evidence.
"""

from __future__ import annotations

import re

from geoguide.agent.backends import BackendError, NotSupportedError
from geoguide.agent.context import AgentContext
from geoguide.agent.rerank import Evidence
from geoguide.agent.rerank import answer as answer_from
from geoguide.agent.schemas import Perception
from geoguide.agent.state import AgentState, Prediction, SearchStep
from geoguide.agent.toolbox import run_search
from geoguide.geo.geometry import haversine_km
from geoguide.indices.submaps.radius import radius_id
from geoguide.prompts.loader import load_prompt
from geoguide.tools import gazetteer, retrieval
from geoguide.tools.base import ToolError

NEAR = re.compile(r"\b(?:near|around|close to|in)\s+(?P<place>[^?.!]+?)\s*(?:instead|then|please)?\s*[?.!]*$", re.I)
SEARCH_VERBS = re.compile(r"\b(look|search|try|check|what about)\b", re.I)
WHY_NOT = re.compile(r"\bwhy\s+not\s+(?P<place>[^?.!]+)", re.I)
HOW_SURE = re.compile(r"\b(how\s+(sure|confident|certain|accurate|precise|reliable)|how\s+far\s+off|confidence|"
                      r"margin\s+of\s+error|error\s+radius|uncertaint)", re.I)
NEAR_RADIUS_KM = 150.0
# What a re-answer that rests only on the user's suggested place is worth: the floor
# ``choose_answer`` gives a country-centre guess, since no evidence backs either.
USER_SUGGESTION_CONFIDENCE = 0.1
DID_YOU_MEAN = re.compile(r"Did you mean [^?]*\?")


def answer_follow_up(ctx: AgentContext, st: AgentState, text: str) -> tuple[str, AgentState]:
    if m := WHY_NOT.search(text):
        return why_not(st, m.group("place").strip()), st
    if HOW_SURE.search(text):
        return how_sure(st.prediction), st
    m = NEAR.search(text)
    if m and SEARCH_VERBS.search(text):
        return search_near(ctx, st, m.group("place").strip())
    try:
        return model_answer(ctx, st, text), st
    except NotSupportedError:  # replay / none: no model to talk to, so summarise the evidence
        return summary(st.prediction), st
    except BackendError as e:
        return f"(the model could not answer: {e})\n{summary(st.prediction)}", st

def model_answer(ctx: AgentContext, st: AgentState, text: str) -> str:
    system = load_prompt(ctx.config.chat_prompt).render(prediction=st.prediction.model_dump_json(indent=1))
    history = [{"role": m["role"], "content": m["text"]} for m in st.chat[-10:] if not m["text"].startswith("/image")]
    turn = ctx.planner_backend.chat([{"role": "system", "content": system}, *history, {"role": "user", "content": text}])
    return (turn.content or "").strip() or summary(st.prediction)

def search_near(ctx: AgentContext, st: AgentState, place: str) -> tuple[str, AgentState]:
    """Search a radius around the user's place and re-answer with it as the prior.

    The reply says what the new answer rests on: when no reference there is strong enough to
    move it, the answer is the user's own suggestion, so the reply, ``why``, ``source`` and
    ``confidence`` say so (and where the strongest evidence points instead) rather than
    dressing the suggestion up as a finding."""
    where = resolve_place(place)
    if isinstance(where, str):
        return where, st
    if where.country is None:
        return (f"{where.name} is a continent, far wider than the {NEAR_RADIUS_KM:g} km I search around a "
                f"place; name a city or country in it."), st
    sid = radius_id(where.lat, where.lon, NEAR_RADIUS_KM)
    # Through the planner's own search, so the run's leakage rules apply here exactly as there.
    res = run_search(ctx, st, sid, ctx.config.k, prior={"prior_lat": where.lat, "prior_lon": where.lon})
    if isinstance(res, ToolError):
        return f"Search near {where.name} failed: {res.error}", st
    step = SearchStep(submap_id=sid, reason=f"user: look near {where.name}", summary=res.summary, purpose="user")
    if not res.candidates:
        return (f"There are no reference photos within {NEAR_RADIUS_KM:g} km of {where.name}, so I cannot "
                f"check it; my answer stays {fmt_point(st.prediction)}."), st.model_copy(update={"trail": [*st.trail, step]})
    # The user's place becomes the prior; the new candidates join the pool and the answer is re-chosen.
    user_prior = Perception(lat=where.lat, lon=where.lon, rationale=f"the user suggested {where.name}")
    pool = [*st.candidates, *res.candidates]
    cfg = ctx.config
    answer, scored = answer_from(Evidence(candidates=pool, perception=user_prior, prior_country=where.country,
                                             calibration=ctx.calibration()), cfg)
    old = st.prediction
    s = res.summary
    suggestion_only = answer.source == "prior"  # the prior here is the user's place, unmoved by retrieval
    if suggestion_only:
        why = (f"your suggestion ({where.name}), not evidence: none of the {s.n_candidates} references within "
               f"{NEAR_RADIUS_KM:g} km of it matched the photo strongly enough to confirm or move it "
               f"(best similarity {s.best_similarity:.3f})")
        source, confidence = f"user suggestion (near {where.name})", USER_SUGGESTION_CONFIDENCE
        odds: dict = {"p_within_km": {}, "probability_source": None, "radius_km": None, "radius_coverage": None}
    else:  # choose_answer speaks of "the VLM's point": here that point is the user's place
        why = (answer.why.replace("the VLM's point", f"{where.name}, the place you suggested")
               .replace("for the VLM", f"for {where.name}"))
        source, confidence = f"{answer.source} (user: near {where.name})", answer.confidence
        odds = {"p_within_km": answer.p_within_km, "probability_source": answer.probability_source,
                "radius_km": None, "radius_coverage": None}
    new_pred = old.model_copy(update={
        "lat": answer.lat, "lon": answer.lon, "source": source,
        "why": why, "confidence": confidence, "trail": [*old.trail, step], "top_candidates": scored[:5], **odds,
    })
    if ctx.profile is not None and new_pred.p_within_km:
        from geoguide.agent.profile import with_profile

        new_pred = with_profile(new_pred, ctx.profile)
    rg = gazetteer.reverse_geocode(gazetteer.ReverseGeocodeArgs(lat=answer.lat, lon=answer.lon))
    if not isinstance(rg, ToolError):
        new_pred = new_pred.model_copy(update={"country": rg.country, "country_name": rg.country_name,
                                               "nearest_city": rg.nearest_city})
    moved = float(haversine_km(old.lat, old.lon, answer.lat, answer.lon)) if old.lat is not None else None
    reply = (f"Searched {s.submap.size} references within {NEAR_RADIUS_KM:g} km of {where.name}: best similarity "
             f"{s.best_similarity:.3f} ({res.candidates[0].ref_id}). New answer {fmt_point(new_pred)}"
             + (f", {moved:.0f} km from the previous one." if moved is not None else "."))
    if suggestion_only:
        reply += (f" It is your suggestion, not evidence: no reference near {where.name} matches the photo "
                  f"strongly enough to confirm it.") + _strongest_elsewhere(pool, where)
    return reply, st.model_copy(update={"trail": [*st.trail, step], "candidates": pool, "prediction": new_pred})




SOURCES = {"map": "the reference map's own calibration", "profile": "a calibration profile fitted on labelled photos",
           "stated": "the vision model's stated uncertainty",
           "default": "a strong vision model's measured record (no profile for this one)"}


def how_sure(pred: Prediction) -> str:
    """The answer's calibrated probabilities and radius, in words."""
    if pred.lat is None:
        return "I have no answer, so nothing to be sure of."
    if not pred.p_within_km:
        return (f"My answer {fmt_point(pred)} rests on {pred.source}, which carries no calibrated probability; "
                f"treat it as a guess.")
    odds = ", ".join(f"{p:.0%} within {km} km" for km, p in pred.p_within_km.items())
    said = f"For my answer {fmt_point(pred)}: {odds} (from {SOURCES.get(pred.probability_source or '', 'unknown')})."
    if pred.radius_km is not None:
        return said + f" With {pred.radius_coverage:.0%} coverage the true place lies within {pred.radius_km:g} km."
    return said + (" I cannot state a radius with a coverage: no calibration profile was given (geoguide "
                   "calibrate fits one on labelled photos like yours; pass it with --calibration).")


def _strongest_elsewhere(pool: list[retrieval.Candidate], where: gazetteer.GeocodeMatch) -> str:
    """Where the best match of all searches lies, when that is away from the user's place: the
    evidence the suggestion overrode, so the user can weigh the two."""
    best = max(pool, key=lambda c: c.similarity, default=None)
    if best is None:
        return ""
    km = float(haversine_km(where.lat, where.lon, best.lat, best.lon))
    if km <= NEAR_RADIUS_KM:
        return ""
    rg = gazetteer.reverse_geocode(gazetteer.ReverseGeocodeArgs(lat=best.lat, lon=best.lon))
    near = "" if isinstance(rg, ToolError) else " near " + ", ".join(x for x in (rg.nearest_city, rg.country_name) if x)
    return f" The strongest match overall is {best.ref_id} (similarity {best.similarity:.3f}){near}, {km:.0f} km away."


def resolve_place(text: str) -> gazetteer.GeocodeMatch | str:
    """The gazetteer's reading of a place the user named, or a reply saying why there is none.

    Why not geocode alone: it drops a qualifier it does not know ("Lyon, Narnia" finds Lyon), and
    its error carries "did you mean" suggestions worth passing on. Answering about some other
    place than the one meant, without a word, would mislead; so an unknown qualifier is refused
    too. A continent comes back as a match with ``country`` None: each caller says what that means.
    """
    first, *rest = (part.strip() for part in text.split(","))
    # geocode's own qualifier reading (countries, US states, territories): the same rule it applies
    unknown = [q for q in rest if q and not gazetteer._qualifier(q)]
    if unknown:
        return (f"I don't know {unknown[0]!r} (in {text!r}) as a country or region, so I cannot tell which "
                f"{first!r} you mean; name one I know, or leave it out.")
    geo = gazetteer.geocode(gazetteer.GeocodeArgs(name=text, limit=1))
    if isinstance(geo, ToolError) or not geo.matches:
        hint = DID_YOU_MEAN.search(geo.error) if isinstance(geo, ToolError) else None
        return f"I don't know a place called {text!r}." + (f" {hint.group(0)}" if hint else "")
    return geo.matches[0]


def fmt_point(pred: Prediction) -> str:
    if pred.lat is None:
        return "(no answer)"
    place = ", ".join(x for x in (pred.nearest_city, pred.country_name) if x)
    return f"{pred.lat:.4f}, {pred.lon:.4f}" + (f" ({place})" if place else "")


def summary(pred: Prediction) -> str:
    lines = [f"My answer: {fmt_point(pred)}, confidence {pred.confidence:.2f}, from {pred.source}. {pred.why}"]
    if pred.prior is not None and pred.prior.has_point:
        lines.append(f"The vision model's prior: ({pred.prior.lat:.4f}, {pred.prior.lon:.4f}) {pred.prior.rationale[:120]}")
    for s in pred.trail:
        lines.append(f"- searched {s.summary.submap.name}: best similarity {s.summary.best_similarity}, "
                     f"countries {dict(list(s.summary.countries.items())[:4])}")
    return "\n".join(lines)


def why_not(st: AgentState, place: str) -> str:
    """What the record says about another country: the prior's view and the retrieval evidence.
    A place that is not a country name is read as the country it lies in, and the reply says so;
    an unknown name or a continent gets a reply saying that, never another place's answer."""
    from geoguide.geo import country_name, lookup_country

    iso = lookup_country(place)
    pred = st.prediction
    read_as = ""
    if iso is None:
        where = resolve_place(place)
        if isinstance(where, str):
            return where
        if where.country is None:
            return (f"{where.name} is a continent, and I weigh countries: ask 'why not <a country in "
                    f"{where.name}>?'.")
        iso = where.country
        read_as = f" (I read {place!r} as {where.name}, a {where.kind} in {country_name(iso) or iso})"
    name = country_name(iso) or iso
    if pred.country == iso:
        return f"My answer is in {name} already{read_as}: {fmt_point(pred)}."
    parts = []
    if st.perception is not None:
        probs = {c.iso2: c.probability for c in st.perception.countries if c.iso2}
        parts.append(f"the vision model gave {name} probability {probs[iso]:.2f}" if iso in probs
                     else f"the vision model did not name {name} among its hypotheses")
    in_c = [c for c in st.candidates if c.country == iso]
    searched = [s.summary.submap.name for s in st.trail if iso in s.summary.countries or f":{iso}" in s.submap_id]
    if in_c:
        best = max(in_c, key=lambda c: c.similarity)
        top = max((c.similarity for c in st.candidates), default=0.0)
        parts.append(f"{len(in_c)} retrieved reference(s) are in {name}, best similarity {best.similarity:.3f} "
                     f"({best.ref_id}) against {top:.3f} for the best match overall")
    elif searched:
        parts.append(f"I searched areas including {name} ({'; '.join(searched[:2])}) and no reference there ranked high")
    else:
        parts.append(f"I did not search {name}; ask me to 'look near <a place in {name}>' to check it")
    return f"Why not {name}{read_as}: " + "; ".join(parts) + f". My answer stays {fmt_point(pred)}."
