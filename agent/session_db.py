"""Where chat sessions live: LangGraph's own checkpointer plus one table of geoguide's.

``sessions.sqlite`` on local disk is the embedded default (``geoguide chat``, one ``serve`` or
several sharing a state folder on one machine); ``postgresql://...`` keeps the same sessions in a
server database, through ``langgraph-checkpoint-postgres``, so ``serve`` processes on several
machines share them. Chosen by the URL's scheme from ``SESSION_DATABASES`` (a plain path is a
SQLite file).

Each backend gives the three things a session needs besides its checkpoints:
- ``geoguide_sessions``: a session's id, its current photo's thread, how many photos it had, and
  its origin (index, models, policy: checked on resume); in PostgreSQL also the current photo's
  bytes, so a follow-up answered on another machine can search the photo again;
- ``turn``: one turn of a session at a time across every process using the database (an ``flock``
  beside the SQLite file; a PostgreSQL advisory lock), released by the OS or the server when its
  holder dies, even by ``kill -9``; waiting longer than ``wait_s`` raises ``SessionBusy``;
- a per-session ``SessionRows`` handle that ``ChatSession`` reads and writes through.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from geoguide.core.atomic import space_error
from geoguide.core.errors import GeoguideError, first_line
from geoguide.core.registry import Registry
from geoguide.core.sqlite import open_shared

SETUP_WAIT_S = 60.0  # how long a starting server waits for another one's table creation


class SessionBusy(GeoguideError):
    """Another turn of the session held it for the whole wait: refused (503), never queued and lost."""


class SessionDatabaseError(GeoguideError):
    """The session database cannot be reached or used (said in one line, password hidden)."""

    exit_code = 3  # as a model server that is down: the service, not the user's input


class SessionDatabaseURLError(SessionDatabaseError):
    """A ``--state-url`` that names no usable database (an unknown scheme, a URL that cannot be
    parsed): the user's setting, so exit 2 like any other wrong option."""

    exit_code = 2


def redact(url: str) -> str:
    """The URL for messages: whatever sits between ``user:`` and the last ``@`` of its authority,
    and any ``password=`` parameter, as ``***`` (a password may itself hold ``@`` or ``%``)."""
    url = re.sub(r"(://[^:/@?]*:)[^/?]*@", r"\1***@", url)
    return re.sub(r"(?i)(password=)[^&]*", r"\1***", url)


SESSIONS_COLUMNS = ("session_id TEXT PRIMARY KEY, thread_id TEXT, photos INTEGER NOT NULL, "
                    "origin TEXT NOT NULL")


class SessionRows(ABC):
    """One session's row in ``geoguide_sessions`` and the checkpointer its graph runs on."""

    checkpointer: Any

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id

    @abstractmethod
    def _one(self, sql: str, *args: Any) -> tuple | None: ...

    @abstractmethod
    def _write(self, sql: str, *args: Any) -> None: ...

    def origin(self) -> dict | None:
        row = self._one("SELECT origin FROM geoguide_sessions WHERE session_id = ?", self.session_id)
        return json.loads(row[0]) if row else None

    def create(self, origin: dict) -> None:
        self._write("INSERT INTO geoguide_sessions (session_id, thread_id, photos, origin) VALUES (?, NULL, 0, ?)",
                    self.session_id, json.dumps(origin))

    def thread(self) -> str | None:
        row = self._one("SELECT thread_id FROM geoguide_sessions WHERE session_id = ?", self.session_id)
        return row[0] if row else None

    def photos(self) -> int:
        row = self._one("SELECT photos FROM geoguide_sessions WHERE session_id = ?", self.session_id)
        return int(row[0]) if row else 0

    def point_to(self, thread: str, n: int) -> None:
        self._write("UPDATE geoguide_sessions SET thread_id = ?, photos = ? WHERE session_id = ?",
                    thread, n, self.session_id)

    def legacy(self) -> bool:
        """Checkpoints under the session's own id, from an older geoguide (one thread for all photos)."""
        return False

    def close(self) -> None:
        """Let go of what this handle holds (a SQLite connection; nothing for a pooled database)."""
        return


class SessionDatabase(ABC):
    """One per process: opens ``SessionRows`` for sessions and serialises their turns."""

    scheme: ClassVar[str]
    where: str  # for messages: a path, or the URL with its password hidden
    path: Path | None = None  # the local file it writes, if any (named when the disk is full)

    @abstractmethod
    def rows(self, session_id: str, serde: Any) -> SessionRows: ...

    @abstractmethod
    def recent(self, limit: int = 5) -> list[str]:
        """The newest session ids, for "no such session" messages."""

    @abstractmethod
    def turn(self, session_id: str, wait_s: float) -> contextlib.AbstractContextManager[None]:
        """Exclusive use of ``session_id`` across every process sharing this database."""

    errors: tuple[type[BaseException], ...] = ()  # the driver's failures that ``guard`` turns into one line

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """The driver's failures as ``DiskFull`` (507: the local file's disk) or ``SessionDatabaseError``
        (503, exit 3: the database is down, locked or broken), so no caller sees a driver's traceback."""
        try:
            yield
        except self.errors as e:
            if self.path is not None and (full := space_error(e, self.path)) is not None:
                raise full from None
            raise SessionDatabaseError(f"the session database {self.where} failed: {self.scrub(first_line(e))}") from None

    def scrub(self, text: str) -> str:
        """``text`` with this database's password taken out (a driver's message may quote it)."""
        return text

    def keep_photo(self, session_id: str, path: Path) -> None:
        """Keep the session's current photo where every server can read it (no-op for a local file,
        which therefore never reads it)."""
        return

    def photo(self, session_id: str, name: str) -> bytes | None:
        """The current photo's bytes when this database holds them and they are named ``name``."""
        return None

    def close(self) -> None:
        """Let go of connections."""
        return


SESSION_DATABASES: Registry[type[SessionDatabase]] = Registry("session database", key="scheme",
                                                              builtins=("geoguide.agent.session_db",))


def open_session_database(where: str | Path, **options: Any) -> SessionDatabase:
    """``postgresql://...`` (or ``postgres://``), ``sqlite:///path``, or a plain path to a SQLite file;
    ``options`` go to the database's class (``connections=`` for PostgreSQL's pool)."""
    text = str(where)
    scheme = text.split("://", 1)[0] if "://" in text else "sqlite"
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme not in SESSION_DATABASES:
        raise SessionDatabaseURLError(f"session database {redact(text)!r}: unknown scheme {scheme!r}; "
                                   f"use one of {', '.join(sorted(SESSION_DATABASES.names()))}")
    return SESSION_DATABASES.get(scheme)(text, **options)


def poll_until(try_once, deadline: float, busy: str) -> None:
    """Call ``try_once`` (True once acquired) every 10 ms until ``deadline``, then ``SessionBusy``."""
    while not try_once():
        if time.monotonic() > deadline:
            raise SessionBusy(busy)
        time.sleep(0.01)


# ---- SQLite ------------------------------------------------------------------------------------


class SqliteRows(SessionRows):
    def __init__(self, path: Path, session_id: str, serde: Any) -> None:
        from langgraph.checkpoint.sqlite import SqliteSaver

        super().__init__(session_id)
        self._conn = sqlite3.connect(str(path), check_same_thread=False)  # the table: SqliteSessions made it
        self.checkpointer = SqliteSaver(self._conn, serde=serde)

    def _one(self, sql: str, *args: Any) -> tuple | None:
        return self._conn.execute(sql, args).fetchone()

    def _write(self, sql: str, *args: Any) -> None:
        with self._conn:
            self._conn.execute(sql, args)

    def legacy(self) -> bool:
        return bool(self._one("SELECT name FROM sqlite_master WHERE name = 'checkpoints'")
                    and self._one("SELECT 1 FROM checkpoints WHERE thread_id = ? LIMIT 1", self.session_id))

    def close(self) -> None:
        self._conn.close()


@SESSION_DATABASES.register()
class SqliteSessions(SessionDatabase):
    """A SQLite file (WAL: readers never wait for a writer); turns locked by ``flock`` on
    ``locks/<id>.lock`` beside it, so processes on one machine sharing the file never interleave."""

    scheme = "sqlite"
    # ``errors`` stays empty: a sqlite3 error inside a turn may come from the response or OCR cache
    # as well, so it is not blamed on the sessions (the server still answers a full disk with 507).

    def __init__(self, where: str | Path, **_: Any) -> None:
        """``where``: the file (``sqlite:///abs/path`` or a plain path); options for other databases ignored."""
        text = str(where)
        self.path = Path(text[len("sqlite://"):] if text.startswith("sqlite://") else text).expanduser()
        self.where = str(self.path)
        # WAL and the sessions table, once per process, not once per request
        open_shared(self.path, f"CREATE TABLE IF NOT EXISTS geoguide_sessions ({SESSIONS_COLUMNS})").close()
        self.locks = self.path.parent / "locks"

    def rows(self, session_id: str, serde: Any) -> SessionRows:
        return SqliteRows(self.path, session_id, serde)

    def recent(self, limit: int = 5) -> list[str]:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            return [r[0] for r in conn.execute("SELECT session_id FROM geoguide_sessions ORDER BY rowid DESC LIMIT ?",
                                               (limit,))]

    @contextlib.contextmanager
    def turn(self, session_id: str, wait_s: float) -> Iterator[None]:
        self.locks.mkdir(exist_ok=True)
        fd = os.open(self.locks / f"{session_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            def take() -> bool:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    return False

            poll_until(take, time.monotonic() + wait_s,
                       f"session {session_id} is busy in another server process; retry shortly")
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# ---- PostgreSQL --------------------------------------------------------------------------------


class PostgresRows(SessionRows):
    def __init__(self, db: PostgresSessions, session_id: str, serde: Any) -> None:
        from langgraph.checkpoint.postgres import PostgresSaver

        super().__init__(session_id)
        self._db = db
        self.checkpointer = PostgresSaver(db.pool, serde=serde)

    def _one(self, sql: str, *args: Any) -> tuple | None:
        return self._db.one(sql, *args)

    def _write(self, sql: str, *args: Any) -> None:
        self._db.one(sql, *args)


@SESSION_DATABASES.register()
class PostgresSessions(SessionDatabase):
    """A PostgreSQL database shared by every server: LangGraph's ``PostgresSaver`` tables (made
    or migrated on first use, under an advisory lock so two servers starting at once do not race)
    and ``geoguide_sessions``. A turn holds ``pg_try_advisory_lock`` on a pooled connection; the
    server drops it if that connection dies. Connections come from one pool per process."""

    scheme = "postgresql"
    SETUP_LOCK = 0x67656F6775696465  # "geoguide": serialises table creation across servers

    def __init__(self, url: str, connections: int = 12) -> None:
        """``connections``: the pool's size. A turn holds one for its lock while the checkpointer and
        the session row take another, so a server needs two per agent run (``SessionStore`` asks for
        2 x --max-runs + 4); mind the server's ``max_connections`` (100 by default) across workers."""
        from geoguide.core.extras import require

        require("psycopg", "postgres", "a postgresql:// session database")
        require("psycopg_pool", "postgres", "a postgresql:// session database")
        require("langgraph.checkpoint.postgres", "postgres", "a postgresql:// session database")
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
        from psycopg_pool import ConnectionPool

        self.url = url.replace("postgres://", "postgresql://", 1)
        self.where = redact(self.url)
        authority = self.url.split("://", 1)[-1].split("/", 1)[0]
        if authority.count("@") > 1:  # libpq would take what follows the first '@' as the host, and say so
            raise SessionDatabaseURLError(f"the session database URL {self.where} has an '@' in its user or "
                                       "password: write it as %40")
        try:
            password = conninfo_to_dict(self.url).get("password")
        except psycopg.Error:  # its message may quote the password: say only where the URL is wrong
            raise SessionDatabaseURLError(f"the session database URL {self.where} cannot be parsed (check its "
                                       "%-escapes and parameters)") from None
        self._secrets = [t for t in {password, quote(password or "", safe="")} if t]
        self.errors = (psycopg.Error,)  # the pool's PoolTimeout is one too
        # autocommit, no prepared statements, dict rows: what PostgresSaver requires of its connections.
        # TCP keepalives: a turn's lock lives on its connection, so a holder whose machine died must be
        # noticed in about a minute, not after the kernel's two hours.
        self.pool = ConnectionPool(self.url, min_size=1, max_size=max(2, connections), open=False, timeout=30,
                                   kwargs={"autocommit": True, "prepare_threshold": 0,
                                           "row_factory": psycopg.rows.dict_row, "keepalives": 1,
                                           "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3})
        try:
            psycopg.connect(self.url, connect_timeout=10).close()  # its error says why; the pool's only "timed out"
            self.pool.open(wait=True, timeout=10)
            self._setup()
        except Exception as e:
            self.pool.close()
            raise SessionDatabaseError(f"cannot use the session database {self.where}: "
                                       f"{self.scrub(first_line(e))}") from None

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _setup(self) -> None:
        from langgraph.checkpoint.postgres import PostgresSaver

        with self.pool.connection() as conn:
            # Polled, not waited for: a pg_advisory_lock that waits is a transaction left open, and
            # the first server's migrations (CREATE INDEX CONCURRENTLY) wait for every open
            # transaction to end; the two then wait for each other until PostgreSQL calls it a
            # deadlock (seen when two servers started at once on a fresh database).
            poll_until(lambda: bool(conn.execute("SELECT pg_try_advisory_lock(%s) AS ok",
                                                 (self.SETUP_LOCK,)).fetchone()["ok"]),
                       time.monotonic() + SETUP_WAIT_S,
                       "another server has been setting up the session database for a minute; retry shortly")
            try:
                PostgresSaver(conn).setup()
                conn.execute(f"CREATE TABLE IF NOT EXISTS geoguide_sessions ({SESSIONS_COLUMNS}, "
                             "created TIMESTAMPTZ NOT NULL DEFAULT now(), photo_name TEXT, photo BYTEA)")
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.SETUP_LOCK,))

    def one(self, sql: str, *args: Any) -> tuple | None:
        """Run one statement (``?`` placeholders, as SQLite's) and return its first row, if any."""
        with self.guard(), self.pool.connection() as conn:
            cur = conn.execute(sql.replace("?", "%s"), args)
            row = cur.fetchone() if cur.description else None
        return tuple(row.values()) if row is not None else None

    def rows(self, session_id: str, serde: Any) -> SessionRows:
        return PostgresRows(self, session_id, serde)

    def recent(self, limit: int = 5) -> list[str]:
        with self.guard(), self.pool.connection() as conn:
            return [r["session_id"] for r in conn.execute(
                "SELECT session_id FROM geoguide_sessions ORDER BY created DESC LIMIT %s", (limit,))]

    @staticmethod
    def _key(session_id: str) -> int:
        return int.from_bytes(hashlib.sha256(session_id.encode()).digest()[:8], "big", signed=True)

    @contextlib.contextmanager
    def turn(self, session_id: str, wait_s: float) -> Iterator[None]:
        import psycopg

        key = self._key(session_id)
        with self.guard(), self.pool.connection(timeout=wait_s) as conn:

            def take() -> bool:
                return bool(conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (key,)).fetchone()["ok"])

            poll_until(take, time.monotonic() + wait_s,
                       f"session {session_id} is busy in another server; retry shortly")
            try:
                yield
            finally:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                except psycopg.Error:  # the turn is kept; closing the connection drops the lock
                    conn.close()

    def keep_photo(self, session_id: str, path: Path) -> None:
        self.one("UPDATE geoguide_sessions SET photo_name = ?, photo = ? WHERE session_id = ?", path.name,
                 path.read_bytes(), session_id)

    def photo(self, session_id: str, name: str) -> bytes | None:
        row = self.one("SELECT photo FROM geoguide_sessions WHERE session_id = ? AND photo_name = ?", session_id, name)
        return bytes(row[0]) if row and row[0] is not None else None

    def close(self) -> None:
        self.pool.close()

