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
from typing import Any, ClassVar

import openai
from openai.types.chat import ChatCompletion

from agent.backends.base import Completion, ModelBackend
from agent.backends.errors import BackendConfigError
from agent.backends.pricing import FREE, openai_price
from agent.backends.registry import register_backend
from agent.backends.retry import NotJSONReply
from agent.schemas import Perception

log = logging.getLogger(__name__)

# Preferred JSON mode first; a server that rejects one is asked with the next (remembered).
RESPONSE_FORMATS: tuple[str, ...] = ("json_schema", "json_object", "none")
_URL_AND_MODEL = re.compile(r"^(https?://(?:\[[^\]]+\]|[^/:\[\]]+)(?::\d+)?(?:/[^:]*)?):(.+)$")


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


def _response_format(kind: str) -> dict[str, Any] | None:
    if kind == "json_schema":
        schema = Perception.model_json_schema()
        return {"type": "json_schema", "json_schema": {"name": "perception", "schema": schema, "strict": False}}
    if kind == "json_object":
        return {"type": "json_object"}
    return None


def _rejects_response_format(exc: openai.APIStatusError) -> bool:
    text = f"{exc.message} {exc.body}".lower()
    return exc.status_code in (400, 422) and any(w in text for w in ("response_format", "json_schema", "json_object"))


@register_backend("openai")
class OpenAIBackend(ModelBackend):
    kind: ClassVar[str] = "openai"
    supports_tools: ClassVar[bool] = True
    max_tokens_param: ClassVar[str] = "max_completion_tokens"  # the API's current name; o-series reject max_tokens

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        response_format: str = "json_object",
        **options: Any,
    ) -> None:
        """``response_format``: "json_object" (default: widest support), "json_schema" or "none"."""
        if not model:
            raise BackendConfigError(f"{self.kind} spec needs a model name, e.g. {self.kind}:gpt-4o")
        if response_format not in RESPONSE_FORMATS:
            raise BackendConfigError(f"response_format must be one of {RESPONSE_FORMATS}, got {response_format!r}")
        self.price = self.default_price(model)
        super().__init__(model, **options)
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key_env = api_key_env
        self.response_format = response_format
        self._active_format = response_format  # may step down RESPONSE_FORMATS if the server refuses
        self._client: openai.OpenAI | None = None
        self._client_lock = threading.Lock()

    @staticmethod
    def default_price(model: str) -> tuple[float, float]:
        return openai_price(model)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "base_url": self.base_url}

    def params(self, json_output: bool) -> dict[str, Any]:
        return {**super().params(json_output), "response_format": self.response_format if json_output else None}

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

    def _complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None,
        json_output: bool,
        timeout: float | None = None,
    ) -> Completion:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            self.max_tokens_param: self.max_tokens,
            "timeout": self.timeout if timeout is None else timeout,
        }
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if self.seed is not None:
            request["seed"] = self.seed
        if tools:
            request["tools"] = tools
        while True:
            fmt = _response_format(self._active_format) if json_output else None
            try:
                response = self.client().chat.completions.create(
                    **request, **({"response_format": fmt} if fmt else {})
                )
                break
            except json.JSONDecodeError as exc:  # the SDK parses the body itself and lets this through
                raise NotJSONReply(f"the reply is not valid JSON ({exc.msg} at character {exc.pos})") from exc
            except openai.APIStatusError as exc:
                if fmt is None or not _rejects_response_format(exc):
                    raise
                step_down = RESPONSE_FORMATS[RESPONSE_FORMATS.index(self._active_format) + 1]
                log.warning("%s: server refused response_format %s; using %s", self.spec, self._active_format, step_down)
                self._active_format = step_down
        return self._to_completion(response)

    def _to_completion(self, response: Any) -> Completion:
        if not isinstance(response, ChatCompletion):  # e.g. the SDK hands back an HTML page as a str
            snippet = " ".join(str(response)[:80].split())
            raise NotJSONReply(f"HTTP 200 but not a chat completion: {snippet!r}")
        message = response.choices[0].message if response.choices else None
        calls = [
            {"id": c.id, "name": c.function.name, "arguments_json": c.function.arguments or "{}"}
            for c in (message.tool_calls or [] if message else [])
            if getattr(c, "function", None) is not None
        ]
        usage = response.usage
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return Completion(
            content=message.content if message else None,
            tool_calls=calls,
            refusal=getattr(message, "refusal", None) if message else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self._cost(prompt_tokens, completion_tokens),
        )


@register_backend("openai-compatible")
class OpenAICompatibleBackend(OpenAIBackend):
    kind: ClassVar[str] = "openai-compatible"
    max_tokens_param: ClassVar[str] = "max_tokens"  # what vLLM, Ollama and llama.cpp all accept

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
