"""OpenAI Chat Completions backends: the OpenAI API, and any server that speaks its protocol.

Specs:
- ``openai:MODEL`` (``openai:gpt-4o``): key from ``$OPENAI_API_KEY``; base URL from
  ``$OPENAI_BASE_URL`` or the SDK's default.
- ``openai-compatible:BASE_URL:MODEL`` (``openai-compatible:http://127.0.0.1:8000/v1:llava-hf/llava-1.5-7b-hf``)
  for vLLM, Ollama, llama.cpp, LM Studio. The URL is ``http(s)://host[:port][/path]`` and the
  model is everything after the ``:`` that ends it, so Ollama tags keep their colon
  (``...:11434/v1:llava:13b`` -> model ``llava:13b``). A path may not contain ``:``. With no URL
  in the spec (``openai-compatible:MODEL``) the ``base_url`` option or ``$OPENAI_BASE_URL`` is
  used. Key from ``$OPENAI_API_KEY``, else ``"EMPTY"`` (local servers ignore it).

Per-model options (``--vlm-opt key=value``, see ``agent.backends.options``) and their defaults:

- Reasoning models are recognised by name: ``o1*``, ``o3*``, ``o4*``, ``gpt-5*`` (but not the
  non-reasoning ``gpt-5*-chat*``), after any ``provider/`` prefix. The API answers HTTP 400 to
  them for a ``temperature`` other than the default and for ``max_tokens``, so for these no
  ``temperature`` and no ``seed`` are sent unless the user set one, the reply limit goes out as
  ``max_completion_tokens`` and defaults to ``REASONING_MAX_COMPLETION_TOKENS`` (25,000, what
  OpenAI's reasoning guide says to reserve: hidden reasoning tokens count against the limit, and
  1,024 leaves an empty reply). ``reasoning_effort`` is sent only when set. Every other model
  keeps ``temperature=0`` and a 1,024-token limit.
- ``response_format`` (perception): ``json_schema`` for ``openai`` (a strict schema from
  ``Perception``, see ``structured.strict_json_schema``), ``json_object`` for ``openai-compatible``
  (servers differ in what they accept). A server that refuses one is asked with the next of
  ``RESPONSE_FORMATS``, and that is remembered.
- ``tool_mode``: ``native`` (``tools=``; default for ``openai``), ``json`` (no ``tools=``: the tools
  are described in the system prompt and the reply is one JSON action, constrained by a json_schema
  over the union of the tools' calls), ``auto`` (default for ``openai-compatible``: native, and on a
  400/422 that names tools the backend steps down to json for good). In every mode, Hermes/Qwen
  ``<tool_call>`` blocks in plain content are read as calls.
- ``strict_tools``: native tools are sent with strict schemas and ``"strict": true`` (default on
  for ``openai``, off for compatible servers, which may refuse the field).
- ``vision``: False for a text-only planner: image parts are replaced by a one-line note.

The key is handed to the SDK client and nowhere else: it is not an attribute of the backend, not
in ``spec``/``repr``, not in the cache key, not logged. The SDK's own retries are off
(``max_retries=0``); ``agent.backends.retry`` does them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from typing import Any, ClassVar, get_args

import openai
from openai.types.chat import ChatCompletion

from agent.backends.base import Completion, ModelBackend
from agent.backends.errors import BackendConfigError, NotSupportedError
from agent.backends.media import ImageInput, without_images
from agent.backends.options import BackendOptions, ReasoningEffort, ToolMode
from agent.backends.pricing import FREE, openai_price
from agent.backends.registry import register_backend
from agent.backends.retry import NotJSONReply
from agent.backends.structured import (
    CallDict,
    action_schema,
    json_mode_messages,
    parse_action_reply,
    parse_tool_call_blocks,
    strict_json_schema,
    strict_tools,
)
from agent.schemas import AssistantTurn, Perception, PerceptionOutcome
from indices.availability import Availability

log = logging.getLogger(__name__)

# Preferred JSON mode first; a server that rejects one is asked with the next (remembered).
RESPONSE_FORMATS: tuple[str, ...] = ("json_schema", "json_object", "none")
TOOL_MODES: tuple[str, ...] = get_args(ToolMode)
REASONING_EFFORTS: tuple[str, ...] = get_args(ReasoningEffort)
DEFAULT_MAX_TOKENS = 1024
REASONING_MAX_COMPLETION_TOKENS = 25_000
_REASONING_MODEL = re.compile(r"^(?:o[134]|gpt-5)(?!.*-chat)")
_URL_AND_MODEL = re.compile(r"^(https?://(?:\[[^\]]+\]|[^/:\[\]]+)(?::\d+)?(?:/[^:]*)?):(.+)$")


class _FamilyDefault:
    """Marker for "not set by the user": the model family decides (see the module docstring)."""

    def __repr__(self) -> str:
        return "<family default>"


FAMILY_DEFAULT = _FamilyDefault()


def is_reasoning_model(model: str) -> bool:
    """``o1``/``o3``/``o4``/``gpt-5`` families (not ``gpt-5-chat-latest``), after any ``provider/`` prefix."""
    return bool(_REASONING_MODEL.match(model.rsplit("/", 1)[-1].lower()))


def split_base_url(rest: str) -> tuple[str | None, str]:
    """``"http://h:8000/v1:llava:13b"`` -> ``("http://h:8000/v1", "llava:13b")``; no URL -> ``(None, rest)``."""
    if not rest.startswith(("http://", "https://")):
        return None, rest
    m = _URL_AND_MODEL.match(rest)
    if not m:
        raise BackendConfigError(
            f"cannot split {rest!r} into BASE_URL:MODEL; expected e.g. http://127.0.0.1:8000/v1:my-model"
        )
    return m.group(1).rstrip("/"), m.group(2)


def _format(kind: str, name: str, schema: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema(), "strict": True}}
    if kind == "json_object":
        return {"type": "json_object"}
    return None


def _perception_schema() -> dict[str, Any]:
    return strict_json_schema(Perception)


def _error_text(exc: openai.APIStatusError) -> str:
    return f"{exc.message} {exc.body}".lower()


def _rejects_response_format(exc: openai.APIStatusError) -> bool:
    text = _error_text(exc)
    return exc.status_code in (400, 422) and any(w in text for w in ("response_format", "json_schema", "json_object"))


def _rejects_tools(exc: openai.APIStatusError) -> bool:
    """A 400/422 about the tools themselves (no tool support, a refused tool schema), not about anything else."""
    text = _error_text(exc)
    return exc.status_code in (400, 422) and any(w in text for w in ("tools", "tool_choice", "tool call", "function"))


@register_backend("openai")
class OpenAIBackend(ModelBackend):
    kind: ClassVar[str] = "openai"

    @classmethod
    def availability(cls) -> Availability:
        key = bool(os.environ.get("OPENAI_API_KEY"))
        return Availability(runs_here=key, detail=("$OPENAI_API_KEY is set; the API must be reachable" if key else
                                                   "$OPENAI_API_KEY is not set"),
                            how_to_get="an API key from platform.openai.com, and network access to the API")
    supports_tools: ClassVar[bool] = True
    model_options: ClassVar[frozenset[str]] = frozenset(BackendOptions.model_fields)
    max_tokens_param: ClassVar[str] = "max_completion_tokens"  # the API's current name; o-series reject max_tokens
    default_response_format: ClassVar[str] = "json_schema"
    default_tool_mode: ClassVar[str] = "native"
    default_strict_tools: ClassVar[bool] = True

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        response_format: str | None = None,
        tool_mode: str | None = None,
        strict_tools: bool | None = None,
        vision: bool | None = None,
        reasoning_effort: str | None = None,
        temperature: float | None | _FamilyDefault = FAMILY_DEFAULT,
        max_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        **options: Any,
    ) -> None:
        """Options as in the module docstring; None means "this backend's default for this model"."""
        if not model:
            raise BackendConfigError(f"{self.kind} spec needs a model name, e.g. {self.kind}:gpt-4o")
        for name, value, allowed in (
            ("response_format", response_format, RESPONSE_FORMATS),
            ("tool_mode", tool_mode, TOOL_MODES),
            ("reasoning_effort", reasoning_effort, REASONING_EFFORTS),
        ):
            if value is not None and value not in allowed:
                raise BackendConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if max_tokens is not None and max_completion_tokens is not None:
            raise BackendConfigError("give max_completion_tokens or max_tokens, not both (they are the same limit)")
        self.reasoning = is_reasoning_model(model)
        if isinstance(temperature, _FamilyDefault):
            temperature = None if self.reasoning else 0.0
        limit = max_completion_tokens or max_tokens or (REASONING_MAX_COMPLETION_TOKENS if self.reasoning else DEFAULT_MAX_TOKENS)
        self.price = self.default_price(model)
        super().__init__(model, temperature=temperature, max_tokens=limit, **options)
        self._max_tokens_name = (
            "max_completion_tokens" if self.reasoning or max_completion_tokens is not None else self.max_tokens_param
        )
        self.reasoning_effort = reasoning_effort
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key_env = api_key_env
        self.response_format = response_format or self.default_response_format
        self.tool_mode = tool_mode or self.default_tool_mode
        self.strict_tools = self.default_strict_tools if strict_tools is None else strict_tools
        self.vision = True if vision is None else vision
        # What the server has been seen to accept; steps down on refusal and is remembered.
        self._active_format = {
            "perception": self.response_format,
            "action": response_format or "json_schema",  # the json tool mode is worth a schema wherever it works
        }
        self._active_tool_mode = "native" if self.tool_mode == "auto" else self.tool_mode
        self._client: openai.OpenAI | None = None
        self._client_lock = threading.Lock()

    @staticmethod
    def default_price(model: str) -> tuple[float, float]:
        return openai_price(model)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "base_url": self.base_url}

    def params(self, json_output: bool) -> dict[str, Any]:
        """The base parameters, plus the options that change replies.

        Options at their old value are left out, so caches written before the options existed stay
        valid. ``tool_mode`` is the mode in force: ``auto`` asks exactly as ``native`` does until
        the server refuses tools, and a reply to a request that was never sent cannot be cached.
        """
        params = {**super().params(json_output), "response_format": self.response_format if json_output else None}
        if self.reasoning_effort is not None:
            params["reasoning_effort"] = self.reasoning_effort
        if self._active_tool_mode != "native":
            params["tool_mode"] = self._active_tool_mode
        if self.strict_tools:
            params["strict_tools"] = True
        if not self.vision:
            params["vision"] = False
        return params

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise BackendConfigError(f"{self.spec} needs an API key in ${self.api_key_env}")
        return key

    def client(self) -> openai.OpenAI:
        """The SDK client, made on first real call so cached re-runs need no key."""
        with self._client_lock:
            if self._client is None:
                self._client = openai.OpenAI(
                    api_key=self._api_key(), base_url=self.base_url, timeout=self.timeout, max_retries=0
                )
            return self._client

    # --- the public calls ---------------------------------------------------------------------

    def perceive(
        self,
        image: ImageInput | None,
        prompt_text: str | None = None,
        *,
        image_id: str | None = None,
        deadline: float | None = None,
    ) -> PerceptionOutcome:
        if not self.vision:
            raise NotSupportedError(f"{self.spec} was configured with vision=false; it cannot look at a photo")
        return super().perceive(image, prompt_text, image_id=image_id, deadline=deadline)

    def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, *, deadline: float | None = None
    ) -> AssistantTurn:
        """As ``ModelBackend.chat``; a text-only model (``vision=False``) gets no image parts."""
        return super().chat(messages if self.vision else without_images(messages), tools, deadline=deadline)

    # --- one request ------------------------------------------------------------------------------

    def _request(self, timeout: float | None) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            self._max_tokens_name: self.max_tokens,
            "timeout": self.timeout if timeout is None else timeout,
        }
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if self.seed is not None:
            request["seed"] = self.seed
        if self.reasoning_effort is not None:
            request["reasoning_effort"] = self.reasoning_effort
        return request

    def _create(self, request: dict[str, Any]) -> Any:
        try:
            return self.client().chat.completions.create(**request)
        except json.JSONDecodeError as exc:  # the SDK parses the body itself and lets this through
            raise NotJSONReply(f"the reply is not valid JSON ({exc.msg} at character {exc.pos})") from exc

    def _create_formatted(
        self, request: dict[str, Any], purpose: str, name: str, schema: Callable[[], dict[str, Any]]
    ) -> Any:
        """``_create`` with the JSON mode remembered for ``purpose``, stepping down while the server refuses it."""
        while True:
            kind = self._active_format[purpose]
            fmt = _format(kind, name, schema)
            try:
                return self._create({**request, **({"response_format": fmt} if fmt else {})})
            except openai.APIStatusError as exc:
                if fmt is None or not _rejects_response_format(exc):
                    raise
                step_down = RESPONSE_FORMATS[RESPONSE_FORMATS.index(kind) + 1]
                log.warning("%s: server refused response_format %s; using %s", self.spec, kind, step_down)
                self._active_format[purpose] = step_down

    def _complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None,
        json_output: bool,
        timeout: float | None = None,
    ) -> Completion:
        request = {**self._request(timeout), "messages": messages}
        if json_output:
            return self._to_completion(self._create_formatted(request, "perception", "perception", _perception_schema))
        if not tools:
            return self._to_completion(self._create(request))
        if self._active_tool_mode == "native":
            native = strict_tools(tools) if self.strict_tools else tools
            try:
                return self._to_completion(self._create({**request, "tools": native}), tools=True)
            except openai.APIStatusError as exc:
                if self.tool_mode != "auto" or not _rejects_tools(exc):
                    raise
                log.warning("%s: server refused native tools (HTTP %s); asking for JSON actions", self.spec, exc.status_code)
                self._active_tool_mode = "json"
        request["messages"] = json_mode_messages(messages, tools)
        response = self._create_formatted(request, "action", "tool_call", lambda: action_schema(tools))
        return self._to_completion(response, tools=True, json_actions=True)

    def _to_completion(self, response: Any, *, tools: bool = False, json_actions: bool = False) -> Completion:
        """The reply as a ``Completion``; with ``tools``, calls written into the content are read too."""
        if not isinstance(response, ChatCompletion):  # e.g. the SDK hands back an HTML page as a str
            snippet = " ".join(str(response)[:80].split())
            raise NotJSONReply(f"HTTP 200 but not a chat completion: {snippet!r}")
        message = response.choices[0].message if response.choices else None
        calls: list[CallDict] = [
            {"id": c.id, "name": c.function.name, "arguments_json": c.function.arguments or "{}"}
            for c in (message.tool_calls or [] if message else [])
            if getattr(c, "function", None) is not None
        ]
        content = message.content if message else None
        if tools and not calls:
            content, calls = parse_action_reply(content) if json_actions else parse_tool_call_blocks(content)
        usage = response.usage
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return Completion(
            content=content,
            tool_calls=calls,
            refusal=getattr(message, "refusal", None) if message else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self._cost(prompt_tokens, completion_tokens),
        )


@register_backend("openai-compatible")
class OpenAICompatibleBackend(OpenAIBackend):
    kind: ClassVar[str] = "openai-compatible"

    @classmethod
    def availability(cls) -> Availability:
        return Availability(runs_here=None, detail="needs a server you run: openai-compatible:http://127.0.0.1:8080/v1:MODEL",
                            how_to_get="llama.cpp's llama-server, vLLM or Ollama serving a vision model")
    max_tokens_param: ClassVar[str] = "max_tokens"  # what vLLM, Ollama and llama.cpp all accept
    default_response_format: ClassVar[str] = "json_object"  # servers vary; json_schema is opt-in
    default_tool_mode: ClassVar[str] = "auto"  # many local servers have no (or a switched-off) tool parser
    default_strict_tools: ClassVar[bool] = False  # some servers refuse the unknown "strict" field

    @classmethod
    def from_spec(cls, rest: str, **options: Any) -> OpenAICompatibleBackend:
        base_url, model = split_base_url(rest)
        if base_url is not None:
            if options.get("base_url") not in (None, base_url):
                raise BackendConfigError(f"spec URL {base_url!r} and base_url option {options['base_url']!r} differ")
            options["base_url"] = base_url
        elif not (options.get("base_url") or os.environ.get("OPENAI_BASE_URL")):
            raise BackendConfigError("openai-compatible needs a server: openai-compatible:BASE_URL:MODEL")
        return cls(model, **options)

    @staticmethod
    def default_price(model: str) -> tuple[float, float]:
        return FREE  # self-hosted: pass price=(in, out) to account a paid endpoint

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.base_url}:{self.model}"

    def _api_key(self) -> str:
        return os.environ.get(self.api_key_env) or "EMPTY"
