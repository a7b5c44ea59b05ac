"""Backend exceptions. Model misbehaviour is *reported* in outcomes; these are for the rest."""

from __future__ import annotations


class BackendError(RuntimeError):
    """Base class of everything the backend layer raises on purpose."""


class BackendConfigError(BackendError):
    """Bad spec, missing API key, unreadable model folder: fix the configuration, do not retry."""


class NotSupportedError(BackendError):
    """The backend cannot do this (tool calling on a local LLaVA, chat on a replay)."""


class CallFailed(BackendError):
    """A model call failed for good (non-retryable error, or retries exhausted)."""

    def __init__(self, message: str, retries: int = 0) -> None:
        super().__init__(message)
        self.retries = retries
