"""Backend exceptions. Model misbehaviour is *reported* in outcomes; these are for the rest.

A failed call says which of three things went wrong, because they call for different actions:

- ``unreachable``: nothing answers (connection refused, DNS failure): start the server, fix the URL;
- ``misconfigured``: the server answers but refuses the request (401/403 key, 404 model or URL,
  400 parameters, a 200 whose body is not JSON, e.g. HTML from a base URL without ``/v1``);
- ``exhausted``: the server is there but did not answer usefully in time (timeouts, 429, 5xx
  after every retry, or the photo's time budget ran out);
- ``rejected``: the server refused this one request, not the setup (a context window
  overflowed, a content-policy block, an image it cannot read): a per-photo failure, not fatal.

The first two are configuration errors: retrying or evaluating on without the model would only
produce a retrieval-only number labelled as the agent, so the graph raises ``ModelServiceError``
unless the user asked for a retrieval fallback. An exhausted model still leaves an answer from
retrieval (``locate`` prints it and exits 3; ``eval`` does not record the photo unless the
fallback was asked for, and retries it on the next run).
"""

from __future__ import annotations

from typing import Literal

from geoguide.core.errors import GeoguideError

FailureKind = Literal["unreachable", "misconfigured", "exhausted", "rejected"]
SERVICE_FAILURES: frozenset[str] = frozenset({"unreachable", "misconfigured", "exhausted"})
FATAL_FAILURES: frozenset[str] = frozenset({"unreachable", "misconfigured"})


class BackendError(GeoguideError, RuntimeError):
    """Base class of everything the backend layer raises on purpose."""


class BackendConfigError(BackendError):
    """Bad spec, missing API key, unreadable model folder: fix the configuration, do not retry."""


class NotSupportedError(BackendError):
    """The backend cannot do this (tool calling on a local LLaVA, chat on a replay)."""


class CallFailed(BackendError):
    """A model call failed for good (non-retryable error, or retries or time exhausted)."""

    def __init__(self, message: str, retries: int = 0, kind: FailureKind = "exhausted", hint: str = "") -> None:
        super().__init__(message)
        self.retries = retries
        self.kind: FailureKind = kind
        self.hint = hint

    def one_line(self) -> str:
        """Cause and fix, for a user: ``<what failed>: <why> — <what to do>``."""
        return f"{self}" + (f" — {self.hint}" if self.hint else "")


class ModelServiceError(BackendError):
    """The model cannot be reached or is misconfigured (or stayed exhausted without a fallback).

    Exit code 3 tells scripts "the model service", apart from 2 (bad input or options).
    """

    exit_code = 3
