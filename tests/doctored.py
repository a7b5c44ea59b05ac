"""A session database doctored to run a command when loaded, and the check that loading it is
refused and runs nothing (for SQLite files and PostgreSQL alike)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest


def evil_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when unpickled."""

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    return pickle.dumps(Evil())


def assert_refused_and_ran_nothing(ctx, db, session_id: str, marker: Path) -> None:
    from geoguide.agent.chat import ChatSession, SessionError

    resumed = ChatSession(ctx, db, session_id)
    try:
        with pytest.raises(SessionError, match="cannot be trusted"):
            resumed.state()
    finally:
        resumed.close()
    assert not marker.exists(), "loading the session ran the command stored in it"
