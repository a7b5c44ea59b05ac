"""Chat sessions: attach a photo, watch the agent work, ask follow-ups; sessions survive restarts.

A session is a LangGraph thread in a SQLite checkpoint database: locating a photo runs the graph
on that thread, and each follow-up is written back into the thread's state, so
``geoguide chat --session ID`` picks up exactly where it stopped.

Follow-ups understood without a language model (what works offline with ``replay``/``none``):
  * "look near Lyon instead" / "search around Porto": geocode the place, search a radius around
    it, and re-answer with that place as the prior;
  * "why not Portugal?": what the evidence says about that country;
  * anything else: a summary of the evidence; with a chat-capable model, the model answers from
    the prediction record (prompt ``chat/v1``).
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver

from agent.backends import BackendError, NotSupportedError
from agent.context import AgentContext
from agent.graph import build_graph, locate
from agent.rerank import choose_answer, rerank
from agent.schemas import Perception
from agent.state import AgentState, Event, Prediction, SearchStep
from indices.geometry import haversine_km
from indices.submaps.radius import radius_id
from prompts.loader import load_prompt
from tools import gazetteer, retrieval
from tools.base import ToolError

NEAR = re.compile(r"\b(?:near|around|close to|in)\s+(?P<place>[^?.!]+?)\s*(?:instead|then|please)?\s*[?.!]*$", re.I)
SEARCH_VERBS = re.compile(r"\b(look|search|try|check|what about)\b", re.I)
WHY_NOT = re.compile(r"\bwhy\s+not\s+(?P<place>[^?.!]+)", re.I)
NEAR_RADIUS_KM = 150.0


class ChatSession:
    def __init__(self, ctx: AgentContext, db_path: str | Path, session_id: str | None = None,
                 on_event: Callable[[Event], None] | None = None):
        self.ctx = ctx
        self.session_id = session_id or uuid.uuid4().hex[:8]
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(db_path), check_same_thread=False)
        self.graph = build_graph(ctx, checkpointer=SqliteSaver(self._conn))
        self.on_event = on_event

    @property
    def _config(self) -> dict:
        return {"configurable": {"thread_id": self.session_id}}

    def state(self) -> AgentState | None:
        snap = self.graph.get_state(self._config)
        if not snap.values:
            return None
        v = snap.values
        return v if isinstance(v, AgentState) else AgentState.model_validate(v)

    def _save(self, state: AgentState) -> None:
        self.graph.update_state(self._config, state.model_dump(), as_node="finalize")

    def close(self) -> None:
        self._conn.close()

    # ---- turns ---------------------------------------------------------------------------------
    def attach(self, image_path: str | Path) -> Prediction:
        """Locate a new photo in this session (the transcript carries over)."""
        previous = self.state()
        pred = locate(self.ctx, image_path, on_event=self.on_event, graph=self.graph, thread_id=self.session_id)
        st = self.state()
        chat = (previous.chat if previous else []) + [{"role": "user", "text": f"/image {image_path}"},
                                                      {"role": "assistant", "text": summary(pred)}]
        self._save(st.model_copy(update={"chat": chat}))
        return pred

    def ask(self, text: str) -> str:
        st = self.state()
        if st is None or st.prediction is None:
            return "Attach a photo first: /image PATH"
        reply, st = self._answer(st, text.strip())
        st = st.model_copy(update={"chat": [*st.chat, {"role": "user", "text": text}, {"role": "assistant", "text": reply}]})
        self._save(st)
        return reply

    def _answer(self, st: AgentState, text: str) -> tuple[str, AgentState]:
        if m := WHY_NOT.search(text):
            return why_not(st, m.group("place").strip()), st
        m = NEAR.search(text)
        if m and SEARCH_VERBS.search(text):
            return self._search_near(st, m.group("place").strip())
        try:
            return self._model_answer(st, text), st
        except NotSupportedError:  # replay / none: no model to talk to, so summarise the evidence
            return summary(st.prediction), st
        except BackendError as e:
            return f"(the model could not answer: {e})\n{summary(st.prediction)}", st

    def _model_answer(self, st: AgentState, text: str) -> str:
        system = load_prompt(self.ctx.config.chat_prompt).render(prediction=st.prediction.model_dump_json(indent=1))
        history = [{"role": m["role"], "content": m["text"]} for m in st.chat[-10:] if not m["text"].startswith("/image")]
        turn = self.ctx.backend.chat([{"role": "system", "content": system}, *history, {"role": "user", "content": text}])
        return (turn.content or "").strip() or summary(st.prediction)

    def _search_near(self, st: AgentState, place: str) -> tuple[str, AgentState]:
        geo = gazetteer.geocode(gazetteer.GeocodeArgs(name=place, limit=1))
        if isinstance(geo, ToolError) or not geo.matches:
            return f"I could not find {place!r} in the offline gazetteer.", st
        where = geo.matches[0]
        sid = radius_id(where.lat, where.lon, NEAR_RADIUS_KM)
        args = retrieval.SearchArgs(submap_id=sid, k=self.ctx.config.k, exclude_authors=self.ctx.config.exclude_authors,
                                    exclude_ids=self.ctx.config.exclude_ids, prior_lat=where.lat, prior_lon=where.lon)
        res = retrieval.search_submap(self.ctx.index, self.ctx.query_vector(st.image_path, st.image_sha256), args)
        if isinstance(res, ToolError):
            return f"Search near {where.name} failed: {res.error}", st
        step = SearchStep(submap_id=sid, reason=f"user: look near {where.name}", summary=res.summary)
        if not res.candidates:
            return (f"There are no reference photos within {NEAR_RADIUS_KM:g} km of {where.name}, so I cannot "
                    f"check it; my answer stays {fmt_point(st.prediction)}."), st.model_copy(update={"trail": [*st.trail, step]})
        # The user's place becomes the prior; the new candidates join the pool and the answer is re-chosen.
        user_prior = Perception(lat=where.lat, lon=where.lon, rationale=f"the user suggested {where.name}")
        pool = [*st.candidates, *res.candidates]
        cfg = self.ctx.config
        scored = rerank(pool, user_prior, where.country, cfg)
        answer = choose_answer(scored, user_prior, where.country, cfg)
        old = st.prediction
        why = answer.why if answer.source != "prior" else (
            f"the place you suggested ({where.name}); no reference there matched strongly enough to move it")
        new_pred = old.model_copy(update={
            "lat": answer.lat, "lon": answer.lon, "source": f"{answer.source} (user: near {where.name})",
            "why": why, "confidence": answer.confidence, "trail": [*old.trail, step], "top_candidates": scored[:5],
        })
        rg = gazetteer.reverse_geocode(gazetteer.ReverseGeocodeArgs(lat=answer.lat, lon=answer.lon))
        if not isinstance(rg, ToolError):
            new_pred = new_pred.model_copy(update={"country": rg.country, "country_name": rg.country_name,
                                                   "nearest_city": rg.nearest_city})
        s = res.summary
        moved = float(haversine_km(old.lat, old.lon, answer.lat, answer.lon)) if old.lat is not None else None
        reply = (f"Searched {s.submap.size} references within {NEAR_RADIUS_KM:g} km of {where.name}: best similarity "
                 f"{s.best_similarity:.3f} ({res.candidates[0].ref_id}). New answer {fmt_point(new_pred)}"
                 + (f", {moved:.0f} km from the previous one." if moved is not None else "."))
        return reply, st.model_copy(update={"trail": [*st.trail, step], "candidates": pool, "prediction": new_pred})


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
    """What the record says about another country: the prior's view and the retrieval evidence."""
    from indices.geography import country_name, lookup_country

    iso = lookup_country(place)
    pred = st.prediction
    if iso is None:
        geo = gazetteer.geocode(gazetteer.GeocodeArgs(name=place, limit=1))
        if isinstance(geo, ToolError) or not geo.matches:
            return f"I don't know a place called {place!r}."
        iso = geo.matches[0].country
    name = country_name(iso) or iso
    parts = []
    if pred.country == iso:
        return f"My answer is in {name} already: {fmt_point(pred)}."
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
    return f"Why not {name}: " + "; ".join(parts) + f". My answer stays {fmt_point(pred)}."
