"""The ``llama_server`` pytest fixture: one real llama.cpp server (SmolLM2-135M-Instruct) per test
process, from ``geoguide.app.llama`` (the same code ``geoguide llama-server`` runs). Skips, naming
the packages and ``make test``, where they are missing."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from geoguide.app.llama import (  # noqa: F401 - re-exported for the tests
    GGUF_FILE,
    MODEL_NAME,
    THREADS_ENV,
    LlamaServer,
    LlamaServerError,
    LlamaServerUnavailable,
    missing_reason,
    smollm2_gguf_path,
    start_llama_server,
)

# One server per test process, shared by every user of the fixture (even if the fixture is
# registered twice, e.g. imported by conftest.py and by a test module); stopped when the last
# user's session teardown runs.
_shared: LlamaServer | None = None
_users = 0
_lock = threading.Lock()


def require_packages() -> None:
    """``pytest.skip`` with the reason when the server or the model is not installed."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(f"{reason}; make test installs them")


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """A real llama.cpp server with SmolLM2-135M-Instruct: ``.base_url``, ``.model``, ``.spec``, ``.client()``."""
    global _shared, _users
    require_packages()
    with _lock:
        if _shared is None or not _shared.running:
            _shared = start_llama_server()
        _users += 1
        server = _shared
    try:
        yield server
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _shared is not None:
                _shared.stop()
                _shared = None
