"""One SQLite file shared by threads and processes: the response cache (``agent/backends/cache.py``)
and the OCR cache (``tools/read_text.py``) open theirs here.

WAL journal (readers never wait for the writer), one connection used under the caller's lock
(``check_same_thread=False``), autocommit, a 30 s busy timeout for the other processes of a pooled
run, and the parent folder made on first use.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_shared(path: str | Path, schema: str) -> sqlite3.Connection:
    """Open (creating) ``path`` in WAL mode and run ``schema`` (``CREATE TABLE IF NOT EXISTS ...``
    statements, ``;``-separated)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, timeout=30.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for statement in schema.split(";"):
        if statement.strip():
            db.execute(statement)
    return db
