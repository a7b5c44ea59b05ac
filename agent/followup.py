"""Follow-up questions about a located photo, answered by the graph's ``follow_up`` node from the
trail, the candidates and the prior, the same way for every policy and backend:

  * "look near Lyon instead" / "search around Porto": geocode the place, search a radius around
    it (``agent.toolbox.run_search``, the planner's own search, so the run's leakage rules are
    imposed in that one place), and re-answer with that place as the prior;
  * "why not Portugal?" / "is it in Tuscany?" / "is this near 45.76, 4.84?": search that place
    (the same runner, so the same leakage rules) and answer yes, possibly, probably not or can't
    tell, comparing its best match's calibrated probability with the current answer's; the answer
    itself moves only on "look near";
  * "how sure are you?": the answer's calibrated probabilities and, with a calibration profile,
    its radius (``agent.trust``, ``agent.profile``), never a model's improvisation;
  * "what did you see?": the prior's clues and rationale, the text read in the photo;
  * "help": what is understood;
  * anything else: with a chat-capable model, the model answers from the prediction record
    (prompt ``chat/v1``); without one, the help line.

PLACE may be a country, a city, a region or coordinates ("48.85, 2.35").
"""

from __future__ import annotations

import re

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from geoguide.agent.backends import BackendError
from geoguide.agent.backends.chat_model import PlannerModel
from geoguide.agent.context import AgentContext
from geoguide.agent.rerank import Evidence
from geoguide.agent.rerank import answer as answer_from
from geoguide.agent.schemas import Perception
from geoguide.agent.state import AgentState, Prediction, SearchStep
from geoguide.agent.toolbox import run_search
from geoguide.geo.geometry import haversine_km
from geoguide.geo.regions import region_at
from geoguide.indices.submaps.radius import radius_id
from geoguide.prompts.loader import load_prompt
from geoguide.tools import gazetteer, retrieval
from geoguide.tools.base import ToolError

NEAR = re.compile(r"\b(?:near|around|close to|in)\s+(?P<place>[^?.!]+?)\s*(?:instead|then|please)?\s*[?.!]*$", re.I)
SEARCH_VERBS = re.compile(r"\b(look|search|try|check|what about)\b", re.I)
WHY_NOT = re.compile(r"\bwhy\s+not\s+(?P<place>[^?.!]+)", re.I)
IS_IT_IN = re.compile(r"\b(?:is|was)\s+(?:it|this|that|the\s+photo|the\s+picture)\s+(?:taken\s+)?(?:in|near|from|at)\s+"
                      r"(?P<place>[^?!]+)", re.I)
WHAT_SAW = re.compile(r"\bwhat\s+(?:did|do)\s+you\s+(?:see|read|notice)|\bwhich\s+clues|\bwhat\s+clues|"
                      r"\bwhat\s+text\b", re.I)
HELP = re.compile(r"^\s*(?:help|\?|what\s+can\s+(?:i|you)\s+(?:ask|do|say)\b)", re.I)
COORDS = re.compile(r"^\s*\(?\s*(?P<lat>[-+]?\d{1,2}(?:\.\d+)?)\s*[, ]\s*(?P<lon>[-+]?\d{1,3}(?:\.\d+)?)\s*\)?\s*$")
FOLLOW_UP_HELP = ("I understand: 'why not PLACE?' or 'is it in PLACE?' (I search there and compare), 'look near "
                  "PLACE' (I search there and move only if the photos there match better), 'how sure are you?', "
                  "'what did you see?'. PLACE is a country, a city, a region or coordinates such as 45.76, 4.84.")
# How much likelier (P within 25 km) one side must be before the reply takes it: closer calls are "can't tell".
CLEAR_MARGIN = 0.05
HOW_SURE = re.compile(r"\b(how\s+(sure|confident|certain|accurate|precise|reliable)|how\s+far\s+off|confidence|"
                      r"margin\s+of\s+error|error\s+radius|uncertaint)", re.I)
NEAR_RADIUS_KM = 150.0
# What a re-answer that rests only on the user's suggested place is worth: the floor
# ``choose_answer`` gives a country-centre guess, since no evidence backs either.
USER_SUGGESTION_CONFIDENCE = 0.1
DID_YOU_MEAN = re.compile(r"Did you mean [^?]*\?")


def answer_follow_up(ctx: AgentContext, st: AgentState, text: str) -> tuple[str, AgentState]:
    if HELP.search(text):
        return FOLLOW_UP_HELP, st
    if m := WHY_NOT.search(text) or IS_IT_IN.search(text):
        return check_place(ctx, st, m.group("place").strip(" ?.!"), asked_why_not=m.re is WHY_NOT)
    if HOW_SURE.search(text):
        return how_sure(st.prediction), st
    if WHAT_SAW.search(text):
        return what_i_saw(st), st
    m = NEAR.search(text)
    if m and SEARCH_VERBS.search(text):
        return search_near(ctx, st, m.group("place").strip())
    model = ctx.planner_model()
    if model is None:  # replay / none / a local prior: no model to talk to, so say what is understood
        return f"Without a language model I answer a few kinds of question. {FOLLOW_UP_HELP}", st
    try:
        return model_answer(model, ctx, st, text), st
    except BackendError as e:
        return f"(the model could not answer: {e})\n{summary(st.prediction)}", st


def model_answer(model: PlannerModel, ctx: AgentContext, st: AgentState, text: str) -> str:
    """The chat model's answer from the prediction record (prompt ``chat/v1``) and the last turns."""
    system = load_prompt(ctx.config.chat_prompt).render(prediction=st.prediction.model_dump_json(indent=1))
    history = [(HumanMessage if m["role"] == "user" else AIMessage)(m["text"]) for m in st.chat[-10:]
               if not m["text"].startswith("/image")]
    turn = model.invoke([SystemMessage(system), *history, HumanMessage(text)])
    return turn.text.strip() or summary(st.prediction)


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
    reach = reach_km(where)
    sid = radius_id(where.lat, where.lon, reach)
    # Through the planner's own search, so the run's leakage rules apply here exactly as there.
    res = run_search(ctx, st, sid, ctx.config.k, prior={"prior_lat": where.lat, "prior_lon": where.lon})
    if isinstance(res, ToolError):
        return f"Search near {where.name} failed: {res.error}", st
    step = SearchStep(submap_id=sid, reason=f"user: look near {where.name}", summary=res.summary, purpose="user")
    if not res.candidates:
        return (f"There are no reference photos within {reach:g} km of {where.name}, so I cannot "
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
        why = (f"your suggestion ({where.name}), not evidence: none of the {s.n_candidates} best-matching references within "
               f"{reach:g} km of it matched the photo strongly enough to confirm or move it "
               f"(best similarity {s.best_similarity:.3f})")
        # a suggestion is no evidence: it never raises the confidence
        source, confidence = f"user suggestion (near {where.name})", min(USER_SUGGESTION_CONFIDENCE, old.confidence)
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
    reply = (f"Searched the {s.submap.size} references within {reach:g} km of {where.name}: best similarity "
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


def reach_km(where: gazetteer.GeocodeMatch) -> float:
    """How far around a place to search: NEAR_RADIUS_KM, or a region's own extent when wider
    (California's towns lie within 450 km of its centre, Tuscany's within 101)."""
    return float(round(max(NEAR_RADIUS_KM, where.radius_km or 0.0)))


def resolve_place(text: str) -> gazetteer.GeocodeMatch | str:
    """The gazetteer's reading of a place the user named, or a reply saying why there is none.

    Why not geocode alone: it drops a qualifier it does not know ("Lyon, Narnia" finds Lyon), and
    its error carries "did you mean" suggestions worth passing on. Answering about some other
    place than the one meant, without a word, would mislead; so an unknown qualifier is refused
    too. A continent comes back as a match with ``country`` None: each caller says what that means.
    """
    if m := COORDS.match(text):
        lat, lon = float(m.group("lat")), float(m.group("lon"))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            return f"{text!r} is no point on Earth (latitude -90..90, longitude -180..180)."
        from geoguide.geo import country_at

        return gazetteer.GeocodeMatch(kind="city", name=f"{lat:.4f}, {lon:.4f}", country=country_at(lat, lon) or "XX",
                                      lat=lat, lon=lon)
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
        best = "none" if s.summary.best_similarity is None else f"{s.summary.best_similarity:.3f}"
        lines.append(f"- searched {s.summary.submap.name}: best similarity {best}, "
                     "countries " + (", ".join(f"{c} {n}" for c, n in list(s.summary.countries.items())[:4]) or "none"))
    return "\n".join(lines)


def check_place(ctx: AgentContext, st: AgentState, place: str, asked_why_not: bool = False) -> tuple[str, AgentState]:
    """"Is it in PLACE?" / "why not PLACE?": search PLACE (a country's submap, else a radius around
    the place) and answer yes (the answer is there), possibly / probably not (its best match is
    more / less likely within 25 km of the truth than the answer, by the map's calibration) or
    can't tell, with the numbers; the answer itself does not move ("look near" moves it)."""
    from geoguide.geo import country_name

    where = resolve_place(place)
    if isinstance(where, str):
        return where, st
    pred = st.prediction
    if where.country is None:
        return (f"{where.name} is a continent, too wide to weigh as one place: ask about a country or a city "
                f"in it."), st
    is_country = where.kind == "country"
    name = where.name if not is_country else (country_name(where.country) or where.name)
    reach = reach_km(where)
    if pred.lat is None:
        inside = False
    elif is_country:
        inside = pred.country == where.country
    elif where.kind == "region":  # the region of the answer's nearest town (geo.regions)
        inside = region_at(pred.lat, pred.lon) == (where.name, where.country)
    else:
        inside = float(haversine_km(pred.lat, pred.lon, where.lat, where.lon)) <= reach
    vlm = _vlm_view(st, where.country)
    if not is_country:  # say what was looked up: "Atlantis" is a town in South Africa
        vlm = f" (I read {place!r} as {where.name}, a {where.kind} in {country_name(where.country) or where.country}.)" + vlm
    if inside:
        return f"Yes: my answer {fmt_point(pred)} is in {name}{' already' if asked_why_not else ''}.{vlm}", st
    table = ctx.index.scheme_of("country")
    by_country = is_country and table is not None
    if by_country and where.country not in table.spans:
        return f"Can't tell: there are no reference photos in {name} to compare with the photo.{vlm}", st
    sid = table.scheme.submap_id(where.country) if by_country else radius_id(where.lat, where.lon, reach)
    area = f"in {name}" if by_country else f"within {reach:g} km of {name}" + (
        "'s centre" if where.kind == "region" else "")
    res = run_search(ctx, st, sid, ctx.config.k, prior={"prior_lat": where.lat, "prior_lon": where.lon})
    if isinstance(res, ToolError):
        return f"I could not search {area}: {res.error}", st  # (a radius always resolves; kept for safety)
    step = SearchStep(submap_id=sid, reason=f"user: is it in {name}?", summary=res.summary, purpose="user")
    new = st.model_copy(update={"trail": [*st.trail, step], "candidates": [*st.candidates, *res.candidates]})
    if not res.candidates:
        return f"Can't tell: there are no reference photos {area} to compare with the photo.{vlm}", new
    best = res.candidates[0]
    there, weighed = _against_the_whole_map(ctx, st, res.candidates)
    if weighed is not None:
        new = new.model_copy(update={"trail": [*new.trail, weighed]})
    here = pred.p_within_km.get("25") if pred.p_within_km else None
    match = f"the best match {area} ({best.ref_id}, similarity {best.similarity:.3f})"
    if there is None or here is None:
        whose = "my answer (made before geoguide 0.2)" if here is None else "it"
        return f"Can't tell: {match} was found, but {whose} carries no calibrated probability to weigh.{vlm}", new
    odds = f"P(within 25 km) {there:.2f} for it against {here:.2f} for my answer {fmt_point(pred)}"
    if there > here + CLEAR_MARGIN:
        verdict = f"Possibly: {match} is more likely right, {odds}; say 'look near {name}' to move my answer there."
    elif there < here - CLEAR_MARGIN:
        verdict = f"Probably not: {match} is less likely right, {odds}."
    else:
        verdict = f"Can't tell: {match} and my answer are about as likely right, {odds}."
    return verdict + vlm, new


def _against_the_whole_map(ctx: AgentContext, st: AgentState,
                           found: list[retrieval.Candidate]) -> tuple[float | None, SearchStep | None]:
    """P(within 25 km) of the place's best match read against the whole map's matches (its margin
    and agreement among them), by the whole-map model: a search confined to the place would
    assume the photo is there, which is the question asked."""
    from geoguide.agent.rerank import dedupe
    from geoguide.agent.trust import match_reliability
    from geoguide.indices.submaps import WHOLE_MAP

    everywhere = run_search(ctx, st, WHOLE_MAP, ctx.config.k)
    step = None if isinstance(everywhere, ToolError) else SearchStep(
        submap_id=WHOLE_MAP, reason="user: the whole map, to weigh that place's best match", summary=everywhere.summary,
        purpose="user")
    ranked = dedupe([*found, *([] if isinstance(everywhere, ToolError) else everywhere.candidates)])
    focus = next(i for i, c in enumerate(ranked) if c.ref_id == found[0].ref_id)
    r = match_reliability(ctx.calibration(), ranked, focus, "map")
    return (None if r is None else r.at(25.0)), step


def _vlm_view(st: AgentState, iso: str) -> str:
    """What the vision model said about country ``iso``, as a sentence (empty without a prior)."""
    from geoguide.geo import country_name

    if st.perception is None or not st.perception.countries:
        return ""
    probs = {c.iso2: c.probability for c in st.perception.countries if c.iso2}
    name = country_name(iso) or iso
    return (f" The vision model gave {name} probability {probs[iso]:.2f}." if iso in probs
            else f" The vision model did not name {name} among its hypotheses.")


def what_i_saw(st: AgentState) -> str:
    """The clues the vision model listed, its rationale, and the text read in the photo."""
    from geoguide.agent.policies.rules import text_result

    lines = []
    p = st.perception
    if p is not None and p.clues:
        lines.append("Clues: " + "; ".join(f"{c.kind}: {c.text}" for c in p.clues[:8]) + ".")
    if p is not None and p.rationale:
        lines.append(f"The vision model's reasoning: {p.rationale[:300]}")
    read = text_result(st)
    if read is not None and read.legible:
        langs = ", ".join(f"{lang.name} {lang.probability:.2f}" for lang in read.languages[:3])
        lines.append(f"Text in the photo: {read.text[:120]!r} ({langs}).")
    elif read is not None:
        lines.append(f"I looked for text in the photo: {read.note or 'none legible'}.")
    if not lines:
        why = st.prior_error or "no vision model was used"
        return f"I have no description of the photo ({why}); my answer rests on matching it to reference photos."
    return "\n".join(lines)
