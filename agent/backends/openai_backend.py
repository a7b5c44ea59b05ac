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
- ``tool_mode``: ``native`` (``tools=``), ``json`` (no ``tools=``: the tools are described in the
  system prompt and the reply is one JSON action, constrained by a json_schema over the union of
  the tools' calls), ``auto`` (the default: native, settled on the first call that offers tools).
  ``auto`` steps down to json for good when that first call is refused with a 400/422 that names
  tools (Ollama, llama.cpp without ``--jinja``), *or* answered HTTP 200 with no tool call at all:
  llama.cpp serving SmolLM2 does exactly that (its chat template drops ``tools=``, see
  ``tests/llama_server.py``), so without this a planner made 0 tool calls. That one native reply is
  the only wasted call (asked with at most ``PROBE_MAX_TOKENS`` reply tokens, so a model that
  rambles instead of calling wastes seconds, not minutes); the same request is asked again in json
  mode, and every later call goes straight to json. A first reply with a call (or a ``<tool_call>``
  block) settles native. The cost of a false alarm (a tool-capable model that chose prose on its
  first turn) is a run in json mode, which every server that takes ``response_format`` handles;
  ``tool_mode=native`` forbids it. In every mode, Hermes/Qwen ``<tool_call>`` blocks in plain
  content are read as calls.
- ``strict_tools``: native tools are sent with strict schemas and ``"strict": true`` (default on
  for ``openai``, off for compatible servers, which may refuse the field).
- ``vision``: False for a text-only planner: image parts are replaced by a one-line note. Left on
  (the default), a chat call that the server refuses because it cannot take images (``retry._NO_VISION``:
  llama.cpp's HTTP 500 "image input is not supported - hint: ... mmproj", the OpenAI API's HTTP 400
  "Invalid content type. image_url is only supported by certain models.", vLLM's HTTP 400 "... is
  not a multimodal model") is asked again without the image and the backend stays text-only from
  then on: the server said exactly why, so this is not a failed model service.

What a server turned out to do (refuses images, ignores or refuses ``tools=``, refuses a
``response_format``) is remembered per base URL and model in the response cache (``servers``
table), so the next run starts from it instead of spending a refused image and a probe again; an
option the user sets wins over a remembered fact. A json-mode action is asked with at most
``ACTION_MAX_TOKENS`` reply tokens (unless ``max_tokens`` is set) and a thought of at most
``structured.ACTION_THOUGHT_CHARS`` (compatible servers only: the API's strict subset has no
``maxLength``): an action needs a few dozen tokens.

What the backend changed on its own (``adaptations()``) is one line each, which the ``llm`` policy
puts in the run's notes, so a result never hides that it was planned in json mode or blind.

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
from langchain_core.messages import AIMessage
from openai.types.chat import ChatCompletion

from geoguide.agent.backends.base import ModelBackend
from geoguide.agent.backends.completion import Completion, refusal_of, usage_of, with_usage
from geoguide.agent.backends.errors import BackendConfigError, CallFailed, NotSupportedError
from geoguide.agent.backends.http import call_deadline, deadline_transport
from geoguide.agent.backends.media import ImageInput, without_images
from geoguide.agent.backends.openai_replies import ErrorReply, NotJSONReply
from geoguide.agent.backends.options import BackendOptions, ReasoningEffort, ToolMode
from geoguide.agent.backends.pricing import FREE, openai_price
from geoguide.agent.backends.registry import register_backend
from geoguide.agent.backends.retry import lacks_vision
from geoguide.agent.backends.structured import (
    ACTION_THOUGHT_CHARS,
    CallDict,
    action_schema,
    json_mode_messages,
    parse_action_reply,
    parse_tool_call_blocks,
    strict_json_schema,
    strict_tools,
)
from geoguide.agent.schemas import Perception, PerceptionOutcome, Usage
from geoguide.core.availability import Availability

log = logging.getLogger(__name__)

# Preferred JSON mode first; a server that rejects one is asked with the next (remembered).
RESPONSE_FORMATS: tuple[str, ...] = ("json_schema", "json_object", "none")
TOOL_MODES: tuple[str, ...] = get_args(ToolMode)
REASONING_EFFORTS: tuple[str, ...] = get_args(ReasoningEffort)
DEFAULT_MAX_TOKENS = 1024
# The reply limit of ``tool_mode=auto``'s first native call, the one that finds out whether the
# server does tools. plan/v2 asks for one or two sentences between calls, so a real call fits in
# far less; a server that ignores tools= lets the model ramble to the limit instead. SmolLM2 under
# llama.cpp (one CPU thread, shared machine) wrote all 1,024 tokens of the default limit in ~45 s,
# so the probe alone outlived the 60 s call timeout; 256 tokens take ~11 s. Reasoning models are
# not capped: their hidden tokens count against the limit.
PROBE_MAX_TOKENS = 256
# The reply limit of a json-mode action (unless max_tokens is set): an action is a short thought
# (at most ACTION_THOUGHT_CHARS, which a grammar-constrained server such as llama.cpp enforces) and
# one call's arguments, 40-120 tokens. Unbounded, SmolLM2 on a busy 2-core machine wrote 650 tokens
# of one action at 16 tokens/s and outlived its call timeout, so the run answered with no search.
ACTION_MAX_TOKENS = 192
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


def _format(kind: str, name: str, schema: Callable[[], dict[str, Any]], strict: bool = True) -> dict[str, Any] | None:
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema(), "strict": strict}}
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


def refuses_images(exc: BaseException) -> str | None:
    """The server's own words when ``exc`` (a ``CallFailed`` or an HTTP error) says it cannot take
    images, else None. Only HTTP errors count: a timeout that mentions nothing is not a refusal."""
    cause = exc.__cause__ if isinstance(exc, CallFailed) else exc
    if not isinstance(cause, openai.APIStatusError):
        return None
    if not lacks_vision(cause):  # the wordings of llama.cpp, OpenAI and vLLM: retry._NO_VISION
        return None
    body = cause.body
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message", message)
    return " ".join(str(message or cause.message).split())[:160]


def _holds_tool_calls(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def has_images(messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(p, dict) and p.get("type") == "image_url"
               for m in messages if isinstance(m.get("content"), list) for p in m["content"])


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
    default_tool_mode: ClassVar[str] = "auto"  # native until the server shows it cannot do tools (module docstring)
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
        self._explicit = {name for name, value in (("vision", vision), ("tool_mode", tool_mode),
                                                   ("response_format", response_format),
                                                   ("max_tokens", max_tokens or max_completion_tokens))
                          if value is not None}
        # What the server has been seen to accept; steps down on refusal and is remembered.
        self._active_format = {
            "perception": self.response_format,
            "action": response_format or "json_schema",  # the json tool mode is worth a schema wherever it works
        }
        self._active_tool_mode = "native" if self.tool_mode == "auto" else self.tool_mode
        # auto: not settled until the first call that offers tools has been answered; then sticky.
        self._tool_mode_settled = self.tool_mode != "auto"
        self._adaptations: list[str] = []
        self._adapt_lock = threading.Lock()
        self._probe = threading.local()  # .on: this thread's call is auto's first native call
        self._client: openai.OpenAI | None = None
        self._client_lock = threading.Lock()
        self._confirmed: dict[str, bool] = {}  # what an explicit option showed the server can do, remembered once
        self._recall()

    # --- what the server was seen to do, remembered across runs -----------------------------------

    @property
    def server_key(self) -> str:
        """Who the remembered facts are about: one model on one server."""
        return f"{self.base_url} {self.model}"

    def _recall(self) -> None:
        """Start from what earlier runs learned about this server (in the response cache): a run no
        longer spends a refused image and a 256-token probe (~20 s on SmolLM2 under load) to find
        out again. An option the user set wins over a remembered fact."""
        facts = self.cache.server_facts(self.server_key) if self.cache is not None else {}
        if facts.get("vision") is False and "vision" not in self._explicit:
            self.vision = False
            self._adapt("the server refused photos on an earlier run; text-only (vision=false; "
                        "--planner-opt vision=true asks again)")
        if facts.get("tool_mode") in ("native", "json") and self.tool_mode == "auto":
            self._active_tool_mode = facts["tool_mode"]
            self._tool_mode_settled = True
            if facts["tool_mode"] == "json":
                self._adapt("the server ignored or refused tools= on an earlier run; planning in JSON-schema "
                            "mode (tool_mode=json; --planner-opt tool_mode=native asks again)")
        formats = facts.get("formats")
        if isinstance(formats, dict) and "response_format" not in self._explicit:
            for purpose, kind in formats.items():
                if purpose in self._active_format and kind in RESPONSE_FORMATS:
                    self._active_format[purpose] = kind

    def _remember(self, **facts: Any) -> None:
        """Record what the server turned out to do; a cache that cannot be written loses only the memory."""
        if self.cache is None:
            return
        try:
            self.cache.remember_server(self.server_key, facts)
        except Exception as exc:  # noqa: BLE001 - the run goes on without the memory
            log.warning("%s: could not remember the server's capabilities: %s", self.spec, exc)

    @staticmethod
    def default_price(model: str) -> tuple[float, float]:
        return openai_price(model)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "base_url": self.base_url}

    def params(self, json_output: bool) -> dict[str, Any]:
        """The base parameters, plus the options that change replies.

        Options at their old value are left out, so caches written before the options existed stay
        valid. ``tool_mode`` is the mode in force: ``auto`` asks exactly as ``native`` does until
        the server refuses or ignores tools, and a reply to a request that was never sent cannot
        be cached. ``vision`` is likewise the current one (off after the server refused an image).
        """
        params = {**super().params(json_output), "response_format": self.response_format if json_output else None}
        if self._probing():
            params["max_tokens"] = self._reply_limit()
        if self.reasoning_effort is not None:
            params["reasoning_effort"] = self.reasoning_effort
        if self._active_tool_mode != "native":
            params["tool_mode"] = self._active_tool_mode
            if self._action_limit() != self.max_tokens:  # json actions are asked with a shorter limit
                params["action_max_tokens"] = self._action_limit()
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
                    api_key=self._api_key(), base_url=self.base_url, timeout=self.timeout, max_retries=0,
                    http_client=openai.DefaultHttpxClient(transport=deadline_transport()),
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
            why = ("was configured with vision=false" if "vision" in self._explicit else
                   "refused photos on an earlier run (remembered in the response cache; --vlm-opt vision=true asks again)")
            raise NotSupportedError(f"{self.spec} {why}; it cannot look at a photo")
        outcome = super().perceive(image, prompt_text, image_id=image_id, deadline=deadline)
        self._confirm_vision(outcome.failure is None and image is not None)
        return outcome

    def _confirm_vision(self, saw_a_photo: bool) -> None:
        """A photo the user asked to send (vision=true) went through: forget an old refusal (once)."""
        if saw_a_photo and self.vision and "vision" in self._explicit and not self._confirmed.get("vision"):
            self._confirmed["vision"] = True
            self._remember(vision=True)

    def _confirm_native(self, turn: AIMessage) -> None:
        """A native tool call the user asked for (tool_mode=native) came back: forget an old json."""
        if self.tool_mode == "native" and (turn.tool_calls or turn.invalid_tool_calls) and not self._confirmed.get("tool_mode"):
            self._confirmed["tool_mode"] = True
            self._remember(tool_mode="native")

    def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, *, deadline: float | None = None
    ) -> AIMessage:
        """As ``ModelBackend.chat``, adapting to what the server turns out to be (module docstring).

        A text-only model (``vision=False``) gets no image parts; an image the server refuses makes
        the backend text-only and the same turn is asked again without it. With ``tool_mode=auto``
        the first turn that offers tools settles the mode: a reply with no tool call means the
        server ignored ``tools=``, and the turn is asked again in json mode (one wasted call).
        Only a conversation with no tool call in it yet is judged: once calls have been made (a
        resumed chat), prose is the model's choice, not the server's. The returned usage includes
        the wasted call.
        """
        wasted: Usage | None = None
        judged = (bool(tools) and not self._tool_mode_settled and self._active_tool_mode == "native"
                  and not _holds_tool_calls(messages))
        probe = judged and not self.reasoning  # capped reply (PROBE_MAX_TOKENS)
        try:
            turn = self._chat_once(messages, tools, deadline, probe=probe)
        except CallFailed as exc:
            words = refuses_images(exc) if self.vision and has_images(messages) else None
            if words is None:
                raise
            log.warning("%s: the server refused the image (%s); continuing text-only", self.spec, words)
            self.vision = False
            self._adapt(f"the server refused the photo ({words!r}); continuing text-only (vision=false)")
            self._remember(vision=False)
            wasted = Usage(model_calls=1, retries=exc.retries)
            turn = self._chat_once(messages, tools, deadline, probe=probe)
        else:
            self._confirm_vision(has_images(messages))
        self._confirm_native(turn)
        if judged:
            # A native reply with no call: the server ignored tools=. Settled once, under the lock;
            # a concurrent first call (eval workers share the planner) that lost the race to settle
            # is asked again too when the winner found json, and keeps its prose when it found native.
            ignored = ((getattr(self._probe, "answered_in", None) or "native") == "native"
                       and not (turn.tool_calls or turn.invalid_tool_calls) and refusal_of(turn) is None)
            with self._adapt_lock:
                first = not self._tool_mode_settled
                self._tool_mode_settled = True
                if first and ignored:
                    self._active_tool_mode = "json"
            if first:
                self._remember(tool_mode=self._active_tool_mode)
            if first and ignored:
                log.warning("%s: the server answered with no tool call although tools= were offered; "
                            "asking for JSON-schema actions from now on", self.spec)
                self._adapt("the server ignored tools= (a plain-text reply with no tool call); "
                            "planning in JSON-schema mode (tool_mode=json)")
            if ignored and self._active_tool_mode == "json":
                wasted = usage_of(turn) if wasted is None else wasted + usage_of(turn)
                turn = self._chat_once(messages, tools, deadline)
        return turn if wasted is None else with_usage(turn, wasted + usage_of(turn))

    def _chat_once(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, deadline: float | None,
        *, probe: bool = False,
    ) -> AIMessage:
        """One ``ModelBackend.chat``; ``probe``: with the reply limit of auto's first native call.
        ``_complete`` records in ``self._probe.answered_in`` which mode answered (a cache hit leaves
        it None: the mode in force when the key was made, native for a judged call)."""
        self._probe.on = probe
        self._probe.answered_in = None
        try:
            return super().chat(messages if self.vision else without_images(messages), tools, deadline=deadline)
        finally:
            self._probe.on = False

    def _probing(self) -> bool:
        return bool(getattr(self._probe, "on", False))

    def _action_limit(self) -> int:
        """A json action's reply limit: ACTION_MAX_TOKENS, unless the user set one or the model
        reasons (its hidden reasoning counts against the limit: 192 tokens would leave nothing)."""
        if "max_tokens" in self._explicit or self.reasoning:
            return self.max_tokens
        return min(self.max_tokens, ACTION_MAX_TOKENS)

    def _reply_limit(self) -> int:
        return min(self.max_tokens, PROBE_MAX_TOKENS) if self._probing() else self.max_tokens

    def adaptations(self) -> list[str]:
        with self._adapt_lock:
            return list(self._adaptations)

    def _adapt(self, note: str) -> None:
        with self._adapt_lock:
            if note not in self._adaptations:
                self._adaptations.append(note)

    # --- one request ------------------------------------------------------------------------------

    def _request(self, timeout: float | None) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            self._max_tokens_name: self._reply_limit(),
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
        """One request, its whole exchange bounded by its timeout in wall-clock time (``http``)."""
        try:
            with call_deadline(request.get("timeout")):
                return self.client().chat.completions.create(**request)
        except json.JSONDecodeError as exc:  # the SDK parses the body itself and lets this through
            raise NotJSONReply(f"the reply is not valid JSON ({exc.msg} at character {exc.pos})") from exc

    def _create_formatted(
        self, request: dict[str, Any], purpose: str, name: str, schema: Callable[[], dict[str, Any]],
        strict: bool = True,
    ) -> Any:
        """``_create`` with the JSON mode remembered for ``purpose``, stepping down while the server refuses it."""
        while True:
            kind = self._active_format[purpose]
            fmt = _format(kind, name, schema, strict)
            try:
                return self._create({**request, **({"response_format": fmt} if fmt else {})})
            except openai.APIStatusError as exc:
                if fmt is None or not _rejects_response_format(exc):
                    raise
                step_down = RESPONSE_FORMATS[RESPONSE_FORMATS.index(kind) + 1]
                log.warning("%s: server refused response_format %s; using %s", self.spec, kind, step_down)
                self._active_format[purpose] = step_down
                self._remember(formats={purpose: step_down})

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
            self._probe.answered_in = "native"
            try:
                return self._to_completion(self._create({**request, "tools": native}), tools=True)
            except openai.APIStatusError as exc:
                if self.tool_mode != "auto" or not _rejects_tools(exc):
                    raise
                log.warning("%s: server refused native tools (HTTP %s); asking for JSON actions", self.spec, exc.status_code)
                self._active_tool_mode = "json"
                self._remember(tool_mode="json")
                self._adapt(f"the server refused tools= (HTTP {exc.status_code}); planning in JSON-schema mode "
                            "(tool_mode=json)")
        self._probe.answered_in = "json"
        request[self._max_tokens_name] = self._action_limit()
        request["messages"] = json_mode_messages(messages, tools)
        # A strict schema (the OpenAI API's subset) may not bound the thought's length; a compatible
        # server gets the bound, in a non-strict schema that its grammar enforces all the same.
        bounded = not self.strict_tools
        response = self._create_formatted(
            request, "action", "tool_call", lambda: action_schema(tools, ACTION_THOUGHT_CHARS if bounded else None),
            strict=not bounded)
        return self._to_completion(response, tools=True, json_actions=True)

    def _to_completion(self, response: Any, *, tools: bool = False, json_actions: bool = False) -> Completion:
        """The reply as a ``Completion``; with ``tools``, calls written into the content are read too."""
        if not isinstance(response, ChatCompletion):  # e.g. the SDK hands back an HTML page as a str
            snippet = " ".join(str(response)[:80].split())
            raise NotJSONReply(f"HTTP 200 but not a chat completion: {snippet!r}")
        error = (response.model_extra or {}).get("error")
        if error is not None and not response.choices:  # some proxies and servers answer 200 {"error": ...}
            raise ErrorReply(error)
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
