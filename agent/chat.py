"""Chat sessions: attach a photo, watch the agent work, ask follow-ups; sessions survive restarts.

A session is a row in ``geoguide_sessions`` pointing at LangGraph threads in a checkpoint database
(a SQLite file, or PostgreSQL when servers scale out: ``agent.session_db``), one thread per photo: locating a photo runs the graph on a new thread, and each
follow-up runs it again on that thread, so ``geoguide chat --session ID`` picks up exactly where
it stopped and a second photo never inherits the first one's evidence.

A follow-up question is a run of the same graph on the photo's thread: its ``follow_up`` node
answers (see ``agent.followup``), the same way for every policy and backend.

A session file is read back by ``SessionSerializer``: only plain values and geoguide's own state
models come out of it, so a doctored file fails with ``SessionError`` instead of running code.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, get_args

import ormsgpack
from langgraph.checkpoint.serde import jsonplus
from pydantic import BaseModel, ValidationError

from geoguide.agent.context import AgentContext
from geoguide.agent.followup import summary
from geoguide.agent.graph import build_graph, locate
from geoguide.agent.session_db import SessionDatabase, open_session_database
from geoguide.agent.state import AgentState, Event, Prediction
from geoguide.core.atomic import write_bytes
from geoguide.core.validation import describe_validation

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


# geoguide 0.1.0 installed six top-level packages; sessions it wrote name their models' modules so
# (``agent.state``), and some of those modules have moved since. Maps an old name to today's.
_RELEASE_0_1_MOVES = {"indices.geography": "geo", "indices.geometry": "geo.geometry", "indices.outlines": "geo.outlines",
                      "eval.datasets": "indices.photosets",
                      **{f"indices.{m}": f"core.{m}" for m in ("errors", "registry", "sqlite", "atomic", "progress",
                                                               "images", "availability")}}
_RELEASE_0_1_TOP = frozenset({"agent", "app", "eval", "indices", "prompts", "tools"})


def current_module(module: str) -> str:
    """Today's module path for one a session stored: ``agent.state`` -> ``geoguide.agent.state``."""
    if module.split(".", 1)[0] not in _RELEASE_0_1_TOP:
        return module
    for old, new in _RELEASE_0_1_MOVES.items():
        if module == old or module.startswith(old + "."):
            module = new + module[len(old):]
    return "geoguide." + module


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

    def __init__(self, where: str | Path):
        """``where``: the session database's path or (password-free) URL, for messages."""
        super().__init__(allowed_msgpack_modules=list(_session_models()))
        self.where = str(where)

    def with_msgpack_allowlist(self, extra_allowlist: Iterable[tuple[str, ...] | type]) -> SessionSerializer:
        """Langgraph's strict mode asks to add the graph's types; this reader never widens."""
        return self

    def _refuse(self, reason: str) -> SessionError:
        return SessionError(
            f"session database {self.where} cannot be trusted: it was not written by geoguide ({reason}); "
            "nothing from it was run. Start a new session or pass another --db / --state-url."
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
        cls = (_session_models().get((current_module(module), name))
               if isinstance(module, str) and isinstance(name, str) else None)
        if cls is None:
            raise SessionError(f"it asks to rebuild {module}.{name}, which is not part of a geoguide session")
        try:
            return cls.model_validate(fields)
        except ValidationError as e:
            raise SessionError(f"its {name} record does not match geoguide's format: "
                               f"{describe_validation(e, whole=name, limit=1)}") from None


# ---- sessions --------------------------------------------------------------------------------


def session_origin(ctx: AgentContext) -> dict:
    """What a session's answers depend on besides its photos: checked when it is resumed."""
    m = ctx.index.manifest
    return {"index": str(ctx.index.root.resolve()), "index_build": m.build_key or f"{m.n_references} refs",
            "descriptor": m.descriptor.name, "vlm": ctx.backend.spec,
            "planner": ctx.planner.spec if ctx.planner is not None else None, "policy": ctx.config.policy,
            "exclude_authors": list(ctx.config.exclude_authors)}


class ChatSession:
    def __init__(self, ctx: AgentContext, db: SessionDatabase | str | Path, session_id: str | None = None,
                 on_event: Callable[[Event], None] | None = None, *, must_exist: bool = False):
        """``db``: an open ``SessionDatabase`` (shared, left open) or where one is (a SQLite path or a
        ``postgresql://`` URL: opened here, closed with the session). ``must_exist``: resuming
        ``session_id`` (an unknown id is an error, not a new empty session)."""
        self.ctx = ctx
        self._owns_db = not isinstance(db, SessionDatabase)
        self.db = open_session_database(db) if self._owns_db else db
        self.session_id = session_id or uuid.uuid4().hex[:8]
        self.on_event = on_event
        try:
            with self.db.guard():
                self._rows = self.db.rows(self.session_id, SessionSerializer(self.db.where))
                self.origin: dict = self._origin(ctx, must_exist)
            self.graph = build_graph(checkpointer=self._rows.checkpointer)
        except BaseException:
            self.close()
            raise

    def _origin(self, ctx: AgentContext, must_exist: bool) -> dict:
        """The stored session's origin; a new session's row written; SessionError for an unknown id."""
        origin = self._rows.origin()
        if origin is None and must_exist:
            if self._rows.legacy():
                raise SessionError(f"chat session {self.session_id!r} in {self.db.where} was written by an older "
                                   "geoguide (one thread for all photos) and cannot be resumed; start a new one "
                                   "without --session")
            known = self.db.recent(5)
            raise SessionError(f"no chat session {self.session_id!r} in {self.db.where}"
                               + (f" (recent: {', '.join(known)})" if known else " (it holds no sessions)")
                               + "; start a new one without --session")
        if origin is None:
            origin = session_origin(ctx)
            self._rows.create(origin)
        return origin

    @property
    def thread_id(self) -> str | None:
        """The LangGraph thread of the session's current photo: one thread per photo, so a second
        photo never inherits the first one's trail, candidates or answer."""
        with self.db.guard():
            return self._rows.thread()

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
        where = f"--db {self.db.where}" if self.db.scheme == "sqlite" else f"--state-url {self.db.where}"
        parts += [where, f"--session {self.session_id}"]
        return " ".join(parts)

    @property
    def _config(self) -> dict:
        return {"configurable": {"thread_id": self.thread_id or self.session_id}}

    def state(self) -> AgentState | None:
        """The session's state; SessionError when the file holds anything geoguide did not write."""
        with self.db.guard():
            snap = self.graph.get_state(self._config)
        if not snap.values:
            return None
        v = snap.values
        return v if isinstance(v, AgentState) else AgentState.model_validate(v)

    def _save(self, update: dict) -> None:
        """Write changes to the current photo's state. Fields with reducers (trail, candidates,
        messages, notes) append what they are given, so pass only new items; ``chat`` has none and
        takes the whole transcript."""
        with self.db.guard():
            self.graph.update_state(self._config, update, as_node="finalize")

    def turn(self, wait_s: float = 30.0) -> contextlib.AbstractContextManager[None]:
        """This session to itself across every process sharing its database (``SessionBusy`` after
        ``wait_s``): hold it around ``attach`` and ``ask`` when others may use the session too."""
        return self.db.turn(self.session_id, wait_s)

    def photo_here(self, folder: Path, st: AgentState | None = None) -> Path | None:
        """Where the current photo is on this machine: ``folder/<session>/<name>`` when it is there
        or the database holds it (copied there once: another machine took it), else the path stored
        with the session (a state folder that moved keeps its photos under ``folder``; never reach
        back into the old one when the new one has it). ``st``: the state, when already read."""
        st = self.state() if st is None else st
        if st is None or not st.image_path:
            return None
        stored = Path(st.image_path)
        here = folder / self.session_id / stored.name
        if not here.is_file():
            with self.db.guard():
                data = self.db.photo(self.session_id, stored.name)
            if data is not None:
                here.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(here, data)
        return here if here.is_file() else stored

    def use_photo_here(self, folder: Path, st: AgentState | None = None) -> None:
        """Point the session at ``photo_here``'s path. Hold ``turn`` around it: written outside a
        turn, it could land on top of another process's turn and undo it."""
        st = self.state() if st is None else st
        here = self.photo_here(folder, st)
        if st is not None and here is not None and here != Path(st.image_path):
            self._save({"image_path": str(here)})

    def close(self) -> None:
        if (rows := getattr(self, "_rows", None)) is not None:
            rows.close()
        if self._owns_db:
            self.db.close()

    # ---- turns ---------------------------------------------------------------------------------
    def attach(self, image_path: str | Path, image_id: str | None = None, user_text: str | None = None) -> Prediction:
        """Locate a new photo in this session (the transcript carries over). ``image_id`` names the
        photo in the transcript (the server's uploads live under a private path)."""
        previous = self.state()
        with self.db.guard():
            n = self._rows.photos() + 1
            thread = f"{self.session_id}/photo-{n}"
            pred = locate(self.ctx, image_path, image_id=image_id, user_text=user_text, on_event=self.on_event,
                          graph=self.graph, thread_id=thread)
            self._rows.point_to(thread, n)  # only now: a failed /image keeps the session on its current photo
            self.db.keep_photo(self.session_id, Path(image_path))
        chat = (previous.chat if previous else []) + [{"role": "user", "text": f"/image {image_id or image_path}"},
                                                      {"role": "assistant", "text": summary(pred)}]
        self._save({"chat": chat})
        return pred

    def ask(self, text: str) -> str:
        st = self.state()
        if st is None or st.prediction is None:
            return "Attach a photo first: /image PATH"
        with self.db.guard():
            out = self.graph.invoke({"question": text.strip()}, self._config, context=self.ctx)
        return out["reply"]


