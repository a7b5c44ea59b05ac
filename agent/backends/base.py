"""The backend interfaces and the machinery every model-calling backend shares.

Two interfaces, because two jobs: a ``PriorProvider`` turns a photo into a geographic prior
(``perceive``: every backend, from a recorded CSV to GPT-4o), a ``ChatBackend`` holds one turn of a
conversation, optionally with tool calls (``chat``: the models that plan and answer follow-ups,
reached by the graph through ``agent.backends.chat_model.PlannerModel``, a LangChain chat model).
``Backend`` is what both are as plugins: a spec, the options it takes, whether it runs here.
``ModelBackend`` is both, implemented once on top of a single hook, ``_complete`` (one real model
call), and adds what must not differ per backend: image encoding, the response cache, retries,
token/cost accounting, and the parse-repair loop that turns a reply into a ``Perception`` or an
error saying why it could not.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from langchain_core.messages import AIMessage

from geoguide.agent.backends.cache import ResponseCache, make_key, open_cache
from geoguide.agent.backends.completion import Completion, parse_perception
from geoguide.agent.backends.errors import CallFailed, NotSupportedError
from geoguide.agent.backends.media import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_SIDE,
    ImageInput,
    image_content_part,
)
from geoguide.agent.backends.pricing import FREE, Price, cost_usd
from geoguide.agent.backends.retry import RetryPolicy, call_with_retries
from geoguide.agent.schemas import PerceptionOutcome, Usage
from geoguide.core.availability import NO_WEIGHTS, Availability
from geoguide.prompts.loader import PromptTemplate, load_prompt

log = logging.getLogger(__name__)

DEFAULT_PERCEIVE_PROMPT = "perceive/v1"
DEFAULT_PERCEIVE_VARS: dict[str, Any] = {"max_countries": 3}
MAX_ECHOED_REPLY_CHARS = 4000  # a runaway reply is cut before it is sent back for repair


class Backend(ABC):
    """A backend as a plugin: registered under a spec prefix (see ``registry``), with the options it
    takes and whether it can run here. What it can do is said by the interfaces it implements:
    ``PriorProvider`` (a photo's prior), ``ChatBackend`` (a conversation turn), or both."""

    kind: ClassVar[str]
    # The per-model options (``agent.backends.options.BackendOptions``) this backend takes;
    # ``make_backend`` refuses the others with a message instead of a TypeError.
    model_options: ClassVar[frozenset[str]] = frozenset()
    # What ``agent.factory.open_backend`` gives a backend that computes its answers (a model, here
    # or behind a server): the response cache, the per-call timeout and the number of attempts.
    # A backend that only reads recorded answers (``replay``) or has none (``none``) takes none.
    runtime_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, model: str) -> None:
        self.model = model

    @classmethod
    def from_spec(cls, rest: str, **options: Any) -> Backend:
        """Build from the part of the spec after ``PREFIX:``; by default that is the model."""
        return cls(rest, **options)

    @classmethod
    def availability(cls) -> Availability:
        """Whether this backend can run here and where it looks for weights (``geoguide models``)."""
        return NO_WEIGHTS

    @property
    def spec(self) -> str:
        """The spec string that recreates this backend (recorded with every run)."""
        return f"{self.kind}:{self.model}"

    def adaptations(self) -> list[str]:
        """What this backend changed on its own about how it asks its server, one line each, in the
        order it happened (e.g. json tool mode after the server ignored ``tools=``, text-only after
        it refused an image). Sticky for the backend's life; the ``llm`` policy puts them in the
        run's notes so a result never hides how it was produced."""
        return []

    def close(self) -> None:
        """Release files and models; the backend is unusable afterwards."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"

    def chat_backend(self) -> ChatBackend | None:
        """The model that holds a conversation for this backend: itself when it is a ``ChatBackend``,
        else None (a wrapper such as eval's prior corruption answers with the model it wraps)."""
        return self if isinstance(self, ChatBackend) else None


class PriorProvider(Backend):
    """Photo -> geographic prior: what the graph's ``perceive`` node calls."""

    @abstractmethod
    def perceive(
        self,
        image: ImageInput | None,
        prompt_text: str | None = None,
        *,
        image_id: str | None = None,
        deadline: float | None = None,
    ) -> PerceptionOutcome:
        """Geographic prior for one photo; model failures are reported in the outcome, not raised.

        ``deadline`` (``time.time()`` instant) is the end of the photo's budget: no call outlives it.
        """

    def restrict_countries(self, codes: list[str]) -> None:
        """Only these countries (ISO2, those the map holds) may be named. A backend that answers
        with a point or any country ignores it; one that picks among names (``clip-zeroshot``)
        narrows its choice, so it never names a country the map cannot search."""
        return


class ChatBackend(Backend):
    """One assistant turn for a conversation in the OpenAI Chat Completions format (the wire format
    of every served model and of the response cache's keys), as a LangChain ``AIMessage``.

    The graph never calls this directly: ``chat_model.PlannerModel`` wraps it as a LangChain chat
    model, which converts the state's messages once, here, on their way to the wire."""

    supports_tools: ClassVar[bool] = False  # can ``chat`` take ``tools``?
    vision: bool = True  # False: a text-only model, never sent the photo

    @abstractmethod
    def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, *, deadline: float | None = None
    ) -> AIMessage:
        """One assistant turn; its tool calls are parsed (``invalid_tool_calls`` for arguments that
        are not a JSON object) and ``usage_of(message)`` is what it cost; raises ``CallFailed`` if
        the call fails. ``deadline`` (``time.time()`` instant): no call outlives it."""


class ModelBackend(PriorProvider, ChatBackend):
    """A backend that calls a real model; subclasses implement only ``_complete``."""

    price: Price = FREE
    model_options: ClassVar[frozenset[str]] = frozenset({"temperature", "max_tokens", "seed"})
    runtime_options: ClassVar[frozenset[str]] = frozenset({"cache", "timeout", "max_attempts"})

    def __init__(
        self,
        model: str,
        *,
        cache: ResponseCache | str | None = None,
        temperature: float | None = 0.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        timeout: float = 60.0,
        max_attempts: int = 4,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        retry_after_max_s: float = 60.0,
        max_side: int = DEFAULT_MAX_SIDE,
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
        detail: str | None = None,
        price: Price | None = None,
        repair_prompt: str | PromptTemplate = "repair/v1",
    ) -> None:
        """Options shared by all model backends; every one that changes a reply is in the cache key.

        ``temperature`` None leaves it to the server (models that reject the parameter);
        ``timeout`` is per call, in seconds; ``price`` is (USD per 1M prompt tokens, per 1M
        completion tokens) and overrides the backend's default; ``repair_prompt`` must take
        exactly one variable, ``error``.
        """
        super().__init__(model)
        self.cache = open_cache(cache)
        self._owns_cache = cache is not None and not isinstance(cache, ResponseCache)  # shared caches stay open
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.timeout = timeout
        self.retry = RetryPolicy(max_attempts, retry_initial_s, retry_max_s, retry_after_max_s)
        self.image_options: dict[str, Any] = {"max_side": max_side, "quality": jpeg_quality, "detail": detail}
        if price is not None:
            self.price = (float(price[0]), float(price[1]))
        self.repair = repair_prompt if isinstance(repair_prompt, PromptTemplate) else load_prompt(repair_prompt)
        self._default_prompt: str | None = None
        self._prompt_lock = threading.Lock()

    # --- the hook -------------------------------------------------------------------------

    @abstractmethod
    def _complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None,
        json_output: bool,
        timeout: float | None = None,
    ) -> Completion:
        """Exactly one model call (no retries, no cache). Service errors propagate as raised.

        ``timeout``: seconds this call may take (already capped by the photo's budget); None = ``self.timeout``.
        """

    def identity(self) -> dict[str, Any]:
        """Who answers: part of the cache key. Subclasses add e.g. the server URL."""
        return {"backend": self.kind, "model": self.model}

    def params(self, json_output: bool) -> dict[str, Any]:
        """Everything else that changes the reply: part of the cache key."""
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "json_output": json_output,
        }

    # --- shared machinery -----------------------------------------------------------------

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return cost_usd(self.price, prompt_tokens, completion_tokens)

    def _call(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None,
        json_output: bool,
        usable: Callable[[Completion], bool],
        deadline: float | None = None,
    ) -> tuple[Completion, Usage]:
        """Cache lookup, else ``_complete`` under the retry policy; a reply that is ``usable`` is stored.

        Only validated replies enter the cache: a refusal, an empty or unparseable reply would
        otherwise be replayed on every re-run, with no way to get a fresh answer but deleting the cache.
        """
        key = None
        if self.cache is not None:
            key = make_key(self.identity(), messages, tools, self.params(json_output))
            if (record := self.cache.get(key)) is not None:
                completion = Completion.from_record(record)
                return completion, completion.usage(cache_hit=True)
        completion, retries = call_with_retries(
            lambda left: self._complete(
                messages, tools=tools, json_output=json_output, timeout=self.timeout if left is None else min(self.timeout, left)
            ),
            self.retry,
            self.spec,
            deadline,
        )
        log.debug(
            "%s: %d+%d tokens, %d retries", self.spec, completion.prompt_tokens, completion.completion_tokens, retries
        )
        if self.cache is not None and key is not None and completion.refusal is None and usable(completion):
            self.cache.put(key, completion.to_record())
        return completion, completion.usage(cache_hit=False, retries=retries)

    def default_prompt(self) -> str:
        with self._prompt_lock:
            if self._default_prompt is None:
                self._default_prompt = load_prompt(DEFAULT_PERCEIVE_PROMPT).render(**DEFAULT_PERCEIVE_VARS)
            return self._default_prompt

    def perceive(
        self,
        image: ImageInput | None,
        prompt_text: str | None = None,
        *,
        image_id: str | None = None,
        deadline: float | None = None,
    ) -> PerceptionOutcome:
        """Ask for the prior as JSON; one repair round if the reply does not validate.

        ``prompt_text`` defaults to ``perceive/v1`` rendered with ``DEFAULT_PERCEIVE_VARS``;
        ``image_id`` is accepted for interface parity (replay needs it) and otherwise unused.
        A refusal is final (no repair: asking again costs money and rarely changes a refusal).
        """
        if image is None:
            raise ValueError(f"{self.spec} needs the photo itself; got image=None")
        start = time.perf_counter()
        usage = Usage()
        raw: str | None = None
        messages: list[dict[str, Any]] = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt_text or self.default_prompt()},
                    image_content_part(image, **self.image_options),
                ],
            }
        ]
        failure: str | None = None

        def validates(c: Completion) -> bool:
            return parse_perception(c.content)[0] is not None

        try:
            completion, call_usage = self._call(
                messages, tools=None, json_output=True, usable=validates, deadline=deadline
            )
            usage += call_usage
            raw = completion.content
            perception, reason = parse_perception(raw)
            if perception is None and completion.refusal is None:
                log.info("%s: reply did not validate (%s); asking once for a repair", self.spec, reason)
                messages += [
                    {"role": "assistant", "content": (raw or "")[:MAX_ECHOED_REPLY_CHARS]},
                    {"role": "user", "content": self.repair.render(error=reason)},
                ]
                completion, call_usage = self._call(
                    messages, tools=None, json_output=True, usable=validates, deadline=deadline
                )
                usage += call_usage
                raw = completion.content
                perception, reason = parse_perception(raw)
            if completion.refusal is not None:
                perception, failure = None, "refused"
                error = f"the model refused: {completion.refusal[:300]}"
            elif perception is None:
                failure, error = "invalid", f"reply did not validate after one repair: {reason}"
            else:
                error = None
        except CallFailed as exc:
            perception, failure, error = None, exc.kind, f"model call failed: {exc.one_line()}"
            usage += Usage(retries=exc.retries)
        usage.seconds = time.perf_counter() - start
        return PerceptionOutcome(perception=perception, usage=usage, error=error, failure=failure, raw=raw)

    def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, *, deadline: float | None = None
    ) -> AIMessage:
        if tools and not self.supports_tools:
            raise NotSupportedError(f"backend {self.spec!r} does not support tool calling")
        start = time.perf_counter()
        completion, usage = self._call(
            messages,
            tools=tools or None,
            json_output=False,
            usable=lambda c: bool((c.content or "").strip() or c.tool_calls),
            deadline=deadline,
        )
        usage.seconds = time.perf_counter() - start
        return completion.message(usage)

    def close(self) -> None:
        if self.cache is not None and self._owns_cache:
            self.cache.close()
