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

A session file is read back by ``SessionSerializer``: only plain values and geoguide's own state
models come out of it, so a doctored file fails with ``SessionError`` instead of running code.
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, get_args

import ormsgpack
from langgraph.checkpoint.serde import jsonplus
from langgraph.checkpoint.sqlite import SqliteSaver
from pydantic import BaseModel, ValidationError

from agent.backends import BackendError, NotSupportedError
from agent.context import AgentContext
from agent.graph import build_graph, locate
from agent.rerank import Evidence
from agent.rerank import answer as answer_from
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
# What a re-answer that rests only on the user's suggested place is worth: the floor
# ``choose_answer`` gives a country-centre guess, since no evidence backs either.
USER_SUGGESTION_CONFIDENCE = 0.1
DID_YOU_MEAN = re.compile(r"Did you mean [^?]*\?")


# ---- session files ---------------------------------------------------------------------------


class SessionError(ValueError):
    """A session file geoguide will not load: doctored, written by another program, or by an
    incompatible geoguide. A ValueError so the CLI reports it in one line and exits."""


@lru_cache(maxsize=1)
def _session_models() -> dict[tuple[str, str], type[BaseModel]]:
    """(module, class name) -> class for every pydantic model a session's state can hold:
    AgentState, the models its fields name (recursively) and their subclasses (``candidates``
    holds ScoredCandidate). Derived from the state's own annotations so that a new field's type
    is allowed without anyone remembering to list it, and nothing else ever is."""
    found: dict[tuple[str, str], type[BaseModel]] = {}
    todo: list[type[BaseModel]] = [AgentState]
    while todo:
        cls = todo.pop()
        key = (cls.__module__, cls.__name__)  # what langgraph's encoder writes for the type
        if key in found:
            continue
        found[key] = cls
        todo += cls.__subclasses__()
        for field in cls.model_fields.values():
            todo += _models_in(field.annotation)
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


class SessionSerializer(jsonplus.JsonPlusSerializer):
    """Checkpoint serializer for chat sessions: writes exactly what langgraph writes, and reads
    back nothing but plain msgpack values and geoguide's own state models.

    Why not langgraph's reader: by default it rebuilds any ``(module, name, args)`` triple found
    in a checkpoint by importing and calling it, so a doctored sessions.sqlite runs
    ``os.system(...)`` on resume; given an allow-list it still only logs a warning for anything
    else and hands back the raw payload. Here any other value (another ext type, a class outside
    the session's models, a 'pickle' or 'json' row) makes loading fail with SessionError before
    anything is imported or called, and a geoguide model is rebuilt with ``model_validate``, which
    runs only geoguide's own validators. Langgraph's per-type warnings go with its reader.
    """

    def __init__(self, db_path: str | Path):
        super().__init__(allowed_msgpack_modules=list(_session_models()))
        self.db_path = Path(db_path)

    def with_msgpack_allowlist(self, extra_allowlist: Iterable[tuple[str, ...] | type]) -> SessionSerializer:
        """Langgraph's strict mode asks to add the graph's types; this reader never widens."""
        return self

    def _refuse(self, reason: str) -> SessionError:
        return SessionError(
            f"session file {self.db_path} cannot be trusted: it was not written by geoguide ({reason}); "
            "nothing from it was run. Start a new session or pass another --db."
        )

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, raw = data
        if type_ in ("null", "bytes", "bytearray"):
            return super().loads_typed(data)
        if type_ != "msgpack":
            raise self._refuse(f"a value stored as {type_!r}, which geoguide never writes")
        problems: list[str] = []

        def ext_hook(code: int, payload: bytes) -> BaseModel:
            try:
                return self._revive(code, payload, ext_hook)
            except Exception as e:  # ormsgpack replaces the exception by "ext_hook failed": keep why
                problems.append(str(e.args[0]) if isinstance(e, SessionError) else f"{type(e).__name__}: {e}")
                raise

        try:
            return ormsgpack.unpackb(raw, ext_hook=ext_hook, option=ormsgpack.OPT_NON_STR_KEYS)
        except Exception as e:
            raise self._refuse(problems[0] if problems else f"unreadable data: {e}") from None

    def _revive(self, code: int, payload: bytes, ext_hook: Callable[[int, bytes], Any]) -> BaseModel:
        if code != jsonplus.EXT_PYDANTIC_V2:
            raise SessionError(f"an encoded object of kind {code}; geoguide stores only its pydantic models")
        tup = ormsgpack.unpackb(payload, ext_hook=ext_hook, option=ormsgpack.OPT_NON_STR_KEYS)
        if not (isinstance(tup, list | tuple) and len(tup) >= 3 and isinstance(tup[2], dict)):
            raise SessionError("a malformed model record")
        module, name, fields = tup[0], tup[1], tup[2]
        cls = _session_models().get((module, name)) if isinstance(module, str) and isinstance(name, str) else None
        if cls is None:
            raise SessionError(f"it asks to rebuild {module}.{name}, which is not part of a geoguide session")
        try:
            return cls.model_validate(fields)
        except ValidationError as e:
            raise SessionError(f"its {name} record does not match geoguide's format: "
                               f"{e.errors()[0]['msg']} at {'.'.join(map(str, e.errors()[0]['loc']))}") from None


# ---- sessions --------------------------------------------------------------------------------


_SESSIONS = """CREATE TABLE IF NOT EXISTS geoguide_sessions (
    session_id TEXT PRIMARY KEY, thread_id TEXT, photos INTEGER NOT NULL, origin TEXT NOT NULL)"""


def session_origin(ctx: AgentContext) -> dict:
    """What a session's answers depend on besides its photos: checked when it is resumed."""
    m = ctx.index.manifest
    return {"index": str(ctx.index.root.resolve()), "index_build": m.build_key or f"{m.n_references} refs",
            "descriptor": m.descriptor.name, "vlm": ctx.backend.spec,
            "planner": ctx.planner.spec if ctx.planner is not None else None, "policy": ctx.config.policy,
            "exclude_authors": list(ctx.config.exclude_authors)}


class ChatSession:
    def __init__(self, ctx: AgentContext, db_path: str | Path, session_id: str | None = None,
                 on_event: Callable[[Event], None] | None = None, *, must_exist: bool = False):
        """``must_exist``: resuming ``session_id`` (an unknown id is an error, not a new empty session)."""
        self.ctx = ctx
        self.db_path = Path(db_path)
        self.session_id = session_id or uuid.uuid4().hex[:8]
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(db_path), check_same_thread=False)
        self._conn.execute(_SESSIONS)
        row = self._conn.execute("SELECT origin FROM geoguide_sessions WHERE session_id = ?",
                                 (self.session_id,)).fetchone()
        if row is None and must_exist:
            known = [r[0] for r in self._conn.execute("SELECT session_id FROM geoguide_sessions ORDER BY rowid DESC "
                                                      "LIMIT 5")]
            self._conn.close()
            raise SessionError(f"no chat session {self.session_id!r} in {self.db_path}"
                               + (f" (recent: {', '.join(known)})" if known else " (it holds no sessions)")
                               + "; start a new one without --session")
        self.origin: dict = json.loads(row[0]) if row else session_origin(ctx)
        if row is None:
            with self._conn:
                self._conn.execute("INSERT INTO geoguide_sessions VALUES (?, NULL, 0, ?)",
                                   (self.session_id, json.dumps(self.origin)))
        self.graph = build_graph(checkpointer=SqliteSaver(self._conn, serde=SessionSerializer(db_path)))
        self.on_event = on_event

    @property
    def thread_id(self) -> str | None:
        """The LangGraph thread of the session's current photo: one thread per photo, so a second
        photo never inherits the first one's trail, candidates or answer."""
        row = self._conn.execute("SELECT thread_id FROM geoguide_sessions WHERE session_id = ?",
                                 (self.session_id,)).fetchone()
        return row[0] if row else None

    def _new_thread(self) -> str:
        n = self._conn.execute("SELECT COALESCE(MAX(photos), 0) FROM geoguide_sessions WHERE session_id = ?",
                               (self.session_id,)).fetchone()[0] + 1
        thread = f"{self.session_id}/photo-{n}"
        with self._conn:
            self._conn.execute("UPDATE geoguide_sessions SET thread_id = ?, photos = ? WHERE session_id = ?",
                               (thread, n, self.session_id))
        return thread

    def differences(self) -> list[str]:
        """How this process differs from the one that made the session (index, models, policy...)."""
        now = session_origin(self.ctx)
        return [f"{k}: {self.origin.get(k)!r} then, {now[k]!r} now" for k in now if self.origin.get(k) != now[k]]

    def resume_command(self) -> str:
        """Every option needed to resume exactly this session."""
        o = self.origin
        parts = ["geoguide chat", f"--index {o['index']}", f"--vlm {o['vlm']}", f"--policy {o['policy']}"]
        if o.get("planner"):
            parts.append(f"--planner {o['planner']}")
        parts += [f"--exclude-author {a}" for a in o.get("exclude_authors", [])]
        parts += [f"--db {self.db_path}", f"--session {self.session_id}"]
        return " ".join(parts)

    @property
    def _config(self) -> dict:
        return {"configurable": {"thread_id": self.thread_id or self.session_id}}

    def state(self) -> AgentState | None:
        """The session's state; SessionError when the file holds anything geoguide did not write."""
        snap = self.graph.get_state(self._config)
        if not snap.values:
            return None
        v = snap.values
        return v if isinstance(v, AgentState) else AgentState.model_validate(v)

    def _save(self, update: dict) -> None:
        """Write a turn's changes; lists are appended by the state's reducers, so pass only what is new."""
        self.graph.update_state(self._config, update, as_node="finalize")

    def close(self) -> None:
        self._conn.close()

    # ---- turns ---------------------------------------------------------------------------------
    def attach(self, image_path: str | Path) -> Prediction:
        """Locate a new photo in this session (the transcript carries over)."""
        previous = self.state()
        thread = self._new_thread()
        pred = locate(self.ctx, image_path, on_event=self.on_event, graph=self.graph, thread_id=thread)
        chat = (previous.chat if previous else []) + [{"role": "user", "text": f"/image {image_path}"},
                                                      {"role": "assistant", "text": summary(pred)}]
        self._save({"chat": chat})
        return pred

    def ask(self, text: str) -> str:
        st = self.state()
        if st is None or st.prediction is None:
            return "Attach a photo first: /image PATH"
        reply, new = self._answer(st, text.strip())
        self._save({"chat": [*st.chat, {"role": "user", "text": text}, {"role": "assistant", "text": reply}],
                    "trail": new.trail[len(st.trail):], "candidates": new.candidates[len(st.candidates):],
                    "prediction": new.prediction})
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
        args = retrieval.SearchArgs(submap_id=sid, k=self.ctx.config.k, exclude_authors=self.ctx.config.exclude_authors,
                                    exclude_ids=self.ctx.config.exclude_ids, prior_lat=where.lat, prior_lon=where.lon)
        res = retrieval.search_submap(self.ctx.index, self.ctx.query_vector(st.image_path, st.image_sha256), args)
        if isinstance(res, ToolError):
            return f"Search near {where.name} failed: {res.error}", st
        step = SearchStep(submap_id=sid, reason=f"user: look near {where.name}", summary=res.summary, purpose="user")
        if not res.candidates:
            return (f"There are no reference photos within {NEAR_RADIUS_KM:g} km of {where.name}, so I cannot "
                    f"check it; my answer stays {fmt_point(st.prediction)}."), st.model_copy(update={"trail": [*st.trail, step]})
        # The user's place becomes the prior; the new candidates join the pool and the answer is re-chosen.
        user_prior = Perception(lat=where.lat, lon=where.lon, rationale=f"the user suggested {where.name}")
        pool = [*st.candidates, *res.candidates]
        cfg = self.ctx.config
        answer, scored = answer_from(Evidence(candidates=pool, perception=user_prior, prior_country=where.country), cfg)
        old = st.prediction
        s = res.summary
        suggestion_only = answer.source == "prior"  # the prior here is the user's place, unmoved by retrieval
        if suggestion_only:
            why = (f"your suggestion ({where.name}), not evidence: none of the {s.n_candidates} references within "
                   f"{NEAR_RADIUS_KM:g} km of it matched the photo strongly enough to confirm or move it "
                   f"(best similarity {s.best_similarity:.3f})")
            source, confidence = f"user suggestion (near {where.name})", USER_SUGGESTION_CONFIDENCE
        else:  # choose_answer speaks of "the VLM's point": here that point is the user's place
            why = answer.why.replace("the VLM's point", f"{where.name}, the place you suggested")
            source, confidence = f"{answer.source} (user: near {where.name})", answer.confidence
        new_pred = old.model_copy(update={
            "lat": answer.lat, "lon": answer.lon, "source": source,
            "why": why, "confidence": confidence, "trail": [*old.trail, step], "top_candidates": scored[:5],
        })
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
    from indices.geography import country_name, lookup_country

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
