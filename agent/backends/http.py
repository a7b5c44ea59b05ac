"""HTTP for model servers with a wall-clock limit on every call, enforced at the socket.

httpx's timeouts are per operation (connect, each read, each write): a server that sends its
reply one byte every 0.5 s never trips a 5 s read timeout, so ``--timeout 5 --max-seconds 15
--attempts 1`` still ran after 45 s. Here every socket read and write of a call is given at most
the time left before that call's deadline (``call_deadline``), and none starts after it: a
trickling server is cut off at ``--timeout`` (or the photo's budget, whichever comes first) with
the same ``APITimeoutError`` a silent one gets, so the retry policy and the budget treat both
alike. Without a deadline set, sockets behave exactly as httpx's own.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import openai

# The HTTP stack the installed OpenAI SDK speaks: httpx / httpcore, or (openai 3.x) their forks
# httpx2 / httpcore2, which have the same API under other names.
_HTTPX_NAME = next(c.__module__ for c in openai.DefaultHttpxClient.__mro__ if c.__module__.startswith("httpx"))
httpx: Any = importlib.import_module(_HTTPX_NAME.split(".")[0])
httpcore: Any = importlib.import_module(_HTTPX_NAME.split(".")[0].replace("httpx", "httpcore"))

_DEADLINE: ContextVar[float | None] = ContextVar("geoguide_call_deadline", default=None)


@contextmanager
def call_deadline(seconds: float | None) -> Iterator[None]:
    """Every socket operation of the HTTP calls made in this block ends within ``seconds``."""
    token = _DEADLINE.set(None if seconds is None else time.monotonic() + max(0.0, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _capped(timeout: float | None, what: type[Exception]) -> float | None:
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise what("the call's time limit passed before the server finished answering")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):  # type: ignore[misc,name-defined]
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _capped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _capped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname,
                                                     _capped(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(host, port, _capped(timeout, httpcore.ConnectTimeout),
                                                       local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, _capped(timeout, httpcore.ConnectTimeout),
                                                               socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(**kwargs: Any) -> Any:
    """The SDK's ``HTTPTransport`` (same arguments) whose sockets honour ``call_deadline``."""
    transport = httpx.HTTPTransport(**kwargs)
    # httpx (0.28-0.29, and httpx2 2.17) takes no network backend argument; its pool keeps this one.
    # tests/unit/test_cli_faults.py's trickling server fails if this ever stops taking effect.
    transport._pool._network_backend = _DeadlineBackend()
    return transport
