"""The one retry policy for every backend that talks to a server.

Retried: timeouts and connection errors, HTTP 429 and 5xx, with exponential backoff and jitter
(so a fleet of benchmark workers does not retry in lock-step). A 429 that says how long to wait
(``Retry-After`` / ``retry-after-ms``) is obeyed instead, up to a cap. Not retried: any other
4xx, because repeating a bad request only spends money. The SDK's own retries are disabled by
the backends (``max_retries=0``) so that these are the only ones and are counted in ``Usage``.
"""

from __future__ import annotations

import email.utils
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from geoguide.agent.backends.errors import CallFailed, FailureKind

log = logging.getLogger(__name__)
T = TypeVar("T")



def _openai(*names: str) -> tuple[type[BaseException], ...]:
    """The OpenAI SDK's exception classes ``names``, or () when the SDK was never imported: then no
    exception can be one of them, and a run with no OpenAI backend never pays its 0.4 s import."""
    sdk = sys.modules.get("openai")
    return tuple(getattr(sdk, n) for n in names) if sdk is not None else ()


def _replies() -> Any:
    """``openai_replies`` when an OpenAI backend loaded it (only it raises those replies), else None."""
    return sys.modules.get("geoguide.agent.backends.openai_replies")


def service_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the service did not answer usefully" rather than "our code is wrong"; the
    latter propagate untouched."""
    return (*_openai("APIError"), TimeoutError, ConnectionError)


class BudgetExhausted(TimeoutError):
    """The photo's time budget ran out before (or between) attempts."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4  # total tries, first one included
    initial_s: float = 1.0  # first backoff; doubles each retry, plus up to initial_s of jitter
    max_wait_s: float = 30.0  # cap on one exponential backoff
    retry_after_max_s: float = 60.0  # cap on a server-requested wait


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


# Server faults that are really a request the model can never serve: llama.cpp answers HTTP 500
# "image input is not supported" to a photo sent to a text-only model (measured with xllamacpp).
# A server that cannot take images, in its own words: llama.cpp's 500 ("image input is not supported
# ... mmproj"), OpenAI's 400 ("image_url is only supported by certain models"), vLLM's 400 ("<model>
# is not a multimodal model"). Not retried; the planner goes on text-only (openai_backend.refuses_images).
_NO_VISION = ("image input is not supported", "mmproj", "does not support image", "image_url is not supported",
              "image_url is only supported by certain models", "is not a multimodal model")


# A 400 about this request, not the setup (OpenAI error codes and llama.cpp's message).
_REJECTED = ("context_length_exceeded", "maximum context length", "exceeds the available context size",
             "content_policy_violation", "content management policy", "invalid_image", "image could not be")


def lacks_vision(exc: BaseException) -> bool:
    return any(w in str(exc).lower() for w in _NO_VISION)


def is_transient(exc: BaseException) -> bool:
    """Worth another try: no answer at all (timeout, connection), rate limit, or a server fault."""
    if isinstance(exc, (*_openai("APIConnectionError"), TimeoutError, ConnectionError)):
        return True
    status = _status(exc)
    return status is not None and (status == 429 or status >= 500) and not lacks_vision(exc)


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


class _Wait:
    """Server-requested wait when given, else exponential backoff with jitter."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy

    def __call__(self, state: RetryCallState) -> float:
        p = self._policy
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_s(exc) if exc is not None else None
        if asked is not None:
            return min(asked, p.retry_after_max_s)
        # initial * 2^(n-1), capped, plus up to `initial` of jitter (tenacity's own helper for
        # this changed its signature across the versions we allow).
        return min(p.max_wait_s, p.initial_s * 2 ** (state.attempt_number - 1)) + random.uniform(0, p.initial_s)


def classify(exc: BaseException) -> tuple[FailureKind, str]:
    """Which kind of failure ``exc`` is (see ``agent.backends.errors``) and the fix to suggest."""
    replies = _replies()
    if replies is not None and isinstance(exc, replies.ErrorReply):
        return "misconfigured", "the server reported that error itself: fix the server (or its proxy), or retry later"
    if replies is not None and isinstance(exc, replies.NotJSONReply):
        return "misconfigured", "the server did not answer with JSON: check that the base URL ends in /v1"
    if isinstance(exc, (*_openai("APITimeoutError"), TimeoutError)):
        return "exhausted", "the model did not answer in time: raise --timeout, or check the server's load"
    if isinstance(exc, (*_openai("APIConnectionError"), ConnectionError)):
        cause = repr(exc.__cause__ or exc).lower()
        if "name or service not known" in cause or "nodename nor servname" in cause or "getaddrinfo" in cause:
            return "unreachable", "the host name does not resolve: check the URL in --vlm"
        return "unreachable", "nothing answers at that address: start the model server or fix the URL in --vlm"
    status = _status(exc)
    if status is not None and lacks_vision(exc):
        return "misconfigured", "this model cannot see images: use a vision model, or pass vision=false for a text-only planner (--planner-opt vision=false)"
    if status is not None and 400 <= status < 500 and any(w in str(exc).lower() for w in _REJECTED):
        return "rejected", "the server refused this request (context length, content policy or the image)"
    if status in (401, 403):
        return "misconfigured", "the server refused the API key: set $OPENAI_API_KEY to a valid key"
    if status == 404:
        return "misconfigured", "model or URL not found: check the model name and that the base URL ends in /v1"
    if status == 429 or (status is not None and status >= 500):
        return "exhausted", "the server kept refusing (rate limit or server errors): retry later or lower --workers"
    if status is not None:
        return "misconfigured", f"the server rejected the request (HTTP {status}): check the model and its options"
    return "misconfigured", "unexpected reply from the server"


def describe(exc: BaseException) -> str:
    status = _status(exc)
    head = f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")
    text = str(exc).strip()
    return f"{head}: {text[:300]}" if text else head


def call_with_retries(
    fn: Callable[[float | None], T], policy: RetryPolicy, label: str, deadline: float | None = None
) -> tuple[T, int]:
    """Run ``fn(time_left)`` under ``policy``; return its result and how many retries it took.

    ``deadline`` (a ``time.time()`` instant, the end of the photo's budget) bounds everything:
    each attempt gets the time left (``fn`` caps its own timeout with it), waits are cut to it,
    and no attempt starts after it. A service error that is not transient, or still failing after
    the last attempt, becomes ``CallFailed`` (with the retry count and its ``kind``) so callers
    handle one exception type.
    """

    def attempt() -> T:
        if deadline is None:
            return fn(None)
        left = deadline - time.time()
        if left <= 0.05:
            raise BudgetExhausted("the photo's time budget is spent")
        return fn(left)

    def out_of_time(state: RetryCallState) -> bool:
        return deadline is not None and time.time() >= deadline - 0.05

    def wait(state: RetryCallState) -> float:
        w = _Wait(policy)(state)
        return w if deadline is None else max(0.0, min(w, deadline - time.time()))

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: %s; retry %d/%d in %.2f s",
            label,
            describe(exc) if exc else "?",
            state.attempt_number,
            policy.max_attempts - 1,
            wait,
        )

    retryer = Retrying(
        stop=stop_after_attempt(policy.max_attempts) | out_of_time,
        wait=wait,
        retry=retry_if_exception(lambda e: is_transient(e) and not isinstance(e, BudgetExhausted)),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        result = retryer(attempt)
    except service_errors() as exc:
        attempts = retryer.statistics.get("attempt_number", 1)
        kind, hint = classify(exc)
        raise CallFailed(
            f"{label}: {describe(exc)} (after {attempts} attempt(s))", retries=attempts - 1, kind=kind, hint=hint
        ) from exc
    return result, retryer.statistics.get("attempt_number", 1) - 1
