"""The server's chat sessions: ``geoguide chat``'s ``ChatSession`` behind HTTP.

Sessions live in one session database (``agent.session_db``: ``sessions.sqlite`` under
``--state-dir`` by default, or PostgreSQL with ``--state-url`` when servers run on several
machines) and uploaded photos in a folder under ``--state-dir`` (with PostgreSQL, also in the
database, copied to a server's folder when it first needs one), so sessions survive a server
restart and a follow-up can search the photo again, on whichever server it reaches. Session ids are 128-bit random hex; a request names a session only by that id,
checked against a strict pattern before it reaches SQLite, and the photo of a session is found
through the session's own state, never through a path from a request. One lock per session
serialises its turns (two tabs asking at once), across threads *and* processes (the database's
own: an ``flock`` beside the SQLite file, a PostgreSQL advisory lock): two ``geoguide serve`` processes sharing a state folder once kept 7
of 12 concurrent follow-ups to one session, each answered 200 (read-modify-write of the thread's
checkpoint with no guard across processes); now every one is kept, or refused with 503 when the
session stays locked for the whole wait, never acknowledged and dropped. Different sessions run
concurrently.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from geoguide.agent.chat import ChatSession, SessionError
from geoguide.agent.context import AgentContext, SerialDescriptor
from geoguide.agent.session_db import SessionBusy, open_session_database
from geoguide.agent.state import Event, Prediction
from geoguide.core.atomic import space_error
from geoguide.geo.geometry import haversine_km

SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


class Truth(BaseModel):
    """Where a photo of an eval set was really taken (from ``serve --labels``)."""

    lat: float
    lon: float
    author: str | None = None


class TruthView(BaseModel):
    lat: float
    lon: float
    error_km: float | None = Field(None, description="great-circle distance from the answer")


class ChatTurn(BaseModel):
    role: Literal["user", "assistant"]
    text: str


class SessionView(BaseModel):
    """What the page and scripts see of a session: its current photo's answer and the transcript."""

    session_id: str
    photo: str | None = Field(None, description="the current photo's file name as uploaded")
    prediction: Prediction | None = None
    truth: TruthView | None = Field(None, description="known only for photos listed in serve --labels")
    excluded_author: str | None = Field(None, description="photographer whose references were not searched")
    chat: list[ChatTurn] = Field(default_factory=list)


class UnknownSession(LookupError):
    """No session with that id (or an id that cannot be one)."""


class Busy(RuntimeError):
    """Every agent slot stayed taken for the whole wait: the server answers 503 with Retry-After."""


class SessionStore:
    def __init__(self, ctx: AgentContext, state_dir: Path, descriptor: SerialDescriptor,
                 truth: dict[str, Truth] | None = None, *, state_url: str | None = None, max_runs: int = 4,
                 wait_s: float = 30.0) -> None:
        """``state_url``: a ``postgresql://`` database for sessions (default: ``sessions.sqlite`` in
        ``state_dir``, which always holds the uploaded photos, or with PostgreSQL their local copies)."""
        self.ctx = ctx
        self.uploads = state_dir / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        # two connections per agent run (its lock, its checkpoints) and a few for reads
        self.db = open_session_database(state_url or state_dir / "sessions.sqlite", connections=2 * max_runs + 4)
        self.descriptor = descriptor
        self.truth = truth or {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # Agent runs at once (locates and follow-ups): each holds a photo, a graph run and model calls;
        # more would only share the CPU slower. A run waits up to ``wait_s`` for a slot, then Busy.
        self._runs = threading.BoundedSemaphore(max_runs)
        self.wait_s = wait_s

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if not self._runs.acquire(timeout=self.wait_s):
            raise Busy(f"the server is busy (every agent slot was taken for {self.wait_s:g} s); retry shortly")
        try:
            yield
        finally:
            self._runs.release()

    @contextlib.contextmanager
    def _lock(self, session_id: str) -> Iterator[None]:
        """This session's turn, exclusive across this process's threads and every process sharing
        the session database; ``Busy`` (503) when it stays taken for ``wait_s``."""
        with self._guard:
            local = self._locks.setdefault(session_id, threading.Lock())
        if not local.acquire(timeout=self.wait_s):
            raise Busy(f"session {session_id} is busy with another question; retry shortly")
        try:
            with self.db.turn(session_id, self.wait_s):
                yield
        except SessionBusy as e:
            raise Busy(str(e)) from None
        finally:
            local.release()

    def _context(self, image_id: str, author: str | None) -> AgentContext:
        return self.ctx.for_photo(image_id, author, self.descriptor)

    def _author_for(self, name: str, exclude_author: str | None) -> str | None:
        """The photographer to exclude: the one asked for, else the labelled author of an eval photo
        (as ``eval --exclude-same-author``), so a benchmark photo never finds its own series."""
        if exclude_author:
            return exclude_author
        known = self.truth.get(name)
        return known.author if known else None

    def locate(self, data: bytes, filename: str, *, exclude_author: str | None = None, text: str | None = None,
               on_event: Callable[[Event], None] | None = None) -> SessionView:
        """A new session on one uploaded photo (validated by ``locate`` before any model runs)."""
        with self._slot():
            return self._locate(data, filename, exclude_author=exclude_author, text=text, on_event=on_event)

    def _locate(self, data: bytes, filename: str, *, exclude_author: str | None, text: str | None,
                on_event: Callable[[Event], None] | None) -> SessionView:
        session_id = secrets.token_hex(16)
        folder = self.uploads / session_id
        path = folder / "photo-1"
        try:
            folder.mkdir()
            path.write_bytes(data)
        except OSError as e:  # a full disk: nothing half-written stays, and the reply says so
            shutil.rmtree(folder, ignore_errors=True)
            raise space_error(e, path, len(data)) or e from None
        author = self._author_for(filename, exclude_author)
        try:
            with self._kept():
                chat = ChatSession(self._context(filename, author), self.db, session_id, on_event=on_event)
                try:
                    with self._lock(session_id):
                        chat.attach(path, image_id=filename, user_text=text)
                    return self._view(chat)
                finally:
                    chat.close()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _open(self, session_id: str, *, turn: bool = False) -> ChatSession:
        """The session, its photo found on this machine; ``turn``: under the session's lock, so the
        photo's place here may be written into its state (``ChatSession.use_photo_here``)."""
        if not SESSION_ID.match(session_id):
            raise UnknownSession(f"no session {session_id!r}")
        try:
            chat = ChatSession(self.ctx, self.db, session_id, must_exist=True)
        except SessionError:
            raise UnknownSession(f"no session {session_id!r}") from None
        try:
            st = chat.state()
            if st is None:
                raise UnknownSession(f"session {session_id!r} has no photo")
            chat.ctx = self._context(st.image_id, self._excluded(chat))
            if turn:
                chat.use_photo_here(self.uploads, st)
        except BaseException:
            chat.close()
            raise
        return chat

    def _excluded(self, chat: ChatSession) -> str | None:
        base = set(self.ctx.config.exclude_authors)
        extra = [a for a in chat.origin.get("exclude_authors", []) if a not in base]
        return extra[0] if extra else None

    def view(self, session_id: str) -> SessionView:
        chat = self._open(session_id)
        try:
            return self._view(chat)
        finally:
            chat.close()

    def ask(self, session_id: str, text: str) -> SessionView:
        """A follow-up question on the session's current photo, with ``geoguide chat``'s semantics:
        opened, asked and read back under the session's lock, so no other turn (in this process or
        another sharing the state folder) can come between reading its state and writing it."""
        if not SESSION_ID.match(session_id):  # before the id names a lock file
            raise UnknownSession(f"no session {session_id!r}")
        with self._slot(), self._kept(), self._lock(session_id):
            chat = self._open(session_id, turn=True)
            try:
                chat.ask(text)
                return self._view(chat)
            finally:
                chat.close()

    @contextlib.contextmanager
    def _kept(self) -> Iterator[None]:
        """A turn the session store could not keep on a full disk is a ``DiskFull`` (507), never
        a reply that was acknowledged and then lost."""
        try:
            yield
        except Exception as e:
            if (full := space_error(e, self.db.path or self.uploads)) is not None:
                raise full from None
            raise

    def photo(self, session_id: str) -> Path:
        chat = self._open(session_id)
        try:
            return chat.photo_here(self.uploads)
        finally:
            chat.close()

    def _view(self, chat: ChatSession) -> SessionView:
        st = chat.state()
        if st is None or st.prediction is None:
            return SessionView(session_id=chat.session_id)
        pred = st.prediction.model_copy(update={"image": st.image_id})
        known = self.truth.get(st.image_id)
        truth = None
        if known is not None:
            err = None if pred.lat is None else float(haversine_km(known.lat, known.lon, pred.lat, pred.lon))
            truth = TruthView(lat=known.lat, lon=known.lon, error_km=err)
        turns = [ChatTurn(role=m["role"], text=m["text"]) for m in st.chat if m.get("role") in ("user", "assistant")]
        return SessionView(session_id=chat.session_id, photo=st.image_id, prediction=pred, truth=truth,
                           excluded_author=self._excluded(chat), chat=turns)
