"""A real uvicorn serving an app on a free 127.0.0.1 port, in a thread, for tests that need real HTTP
(the browser tests, the load tests)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """``http://127.0.0.1:PORT/`` while the block runs; the server is stopped on exit."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def wait_until_up(server, url: str, timeout_s: float = 60.0) -> None:
    """Wait for a ``geoguide serve`` subprocess (``subprocess.Popen``, stderr piped) to answer
    ``/api/health``; fail with its stderr if it exits first, or after ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        assert server.poll() is None, server.stderr.read().decode()
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)
