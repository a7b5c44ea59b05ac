"""A real local HTTP server speaking the OpenAI Chat Completions protocol, driven by a script.

Tests exercise the real SDK, sockets, timeouts and status codes instead of mocking the client:
``server.script(reply_json({...}), http_error(429, retry_after=0.2), ...)`` queues what the next
requests get, and ``server.requests`` records what was sent (body and headers). An exhausted
script answers HTTP 418, a non-retryable status, so an unexpected extra call fails loudly.

``FakeOpenAIServer(emulate="openai")`` also checks each request against the real API's documented
constraints before the script is consulted, and answers a violation with HTTP 400 in the real
error shape (``{"error": {"message", "type", "param", "code"}}``, messages worded as the API words
them), without using up a scripted reply: reasoning models (``o1``/``o3``/``o4``/``gpt-5``) refuse a
non-default ``temperature``, ``max_tokens`` and the other sampling parameters; a strict
``response_format`` json_schema and strict tools must obey strict mode (root an object, every
object ``additionalProperties: false`` with every property required, no keywords outside the
strict subset); ``tool_choice`` needs ``tools``; ``json_object`` needs the word "json" in the
messages. ``emulate="no_tools"`` is a server without tool calling (Ollama with a model that has
none, llama.cpp without ``--jinja``): any ``tools`` gets a 400. ``emulate="ignores_tools"`` is
llama.cpp serving SmolLM2 (``tests/llama_server.py``): a request with ``tools`` gets HTTP 200 and
plain text, no ``tool_calls``. ``emulate="no_vision"`` is llama.cpp serving a model without an
mmproj: a request with an ``image_url`` part gets its HTTP 500, body and wording as measured.
Emulations combine: ``emulate=("openai", "no_tools")``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Scripted:
    """One scripted answer: an HTTP status and JSON body, optionally after a delay."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw: bytes | None = None  # sent instead of ``body`` as JSON: an HTML page, a torn JSON document
    content_type: str = "application/json"
    trickle_s: float = 0.0  # > 0: the whole response (status line, headers, body) one byte at a time


def _completion(message: dict[str, Any], finish_reason: str, prompt_tokens: int, completion_tokens: int) -> Scripted:
    return Scripted(
        body={
            "id": f"chatcmpl-fake-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "fake-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def reply_text(content: str, *, prompt_tokens: int = 100, completion_tokens: int = 20) -> Scripted:
    """An assistant message with ``content`` (valid JSON or not: that is the test's business)."""
    return _completion({"role": "assistant", "content": content}, "stop", prompt_tokens, completion_tokens)


def reply_refusal(text: str) -> Scripted:
    """The API's explicit refusal (``message.refusal``, as structured outputs return it)."""
    return _completion({"role": "assistant", "content": None, "refusal": text}, "stop", 100, 10)


def raw_reply(raw: bytes, content_type: str = "application/json", status: int = 200) -> Scripted:
    """A body that is not a chat completion: ``raw_reply(b"<html>...", "text/html")``, torn JSON."""
    return Scripted(status=status, raw=raw, content_type=content_type)


def reply_json(obj: Any, **usage: int) -> Scripted:
    return reply_text(json.dumps(obj), **usage)


def reply_tool_calls(*calls: tuple[str, dict[str, Any]], content: str | None = None, **usage: int) -> Scripted:
    """An assistant message requesting ``(name, arguments)`` function calls."""
    tool_calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        for i, (name, args) in enumerate(calls)
    ]
    message = {"role": "assistant", "content": content, "tool_calls": tool_calls}
    return _completion(message, "tool_calls", usage.get("prompt_tokens", 100), usage.get("completion_tokens", 20))


def http_error(status: int, message: str = "scripted error", *, retry_after: float | None = None) -> Scripted:
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    body = {"error": {"message": message, "type": "fake_error", "param": None, "code": str(status)}}
    return Scripted(status=status, body=body, headers=headers)


def delayed(seconds: float, then: Scripted | None = None) -> Scripted:
    """Answer ``then`` (default: a short text reply) only after ``seconds``: longer than a client timeout."""
    base = then or reply_text("late")
    return Scripted(status=base.status, body=base.body, headers=base.headers, delay_s=seconds)


def trickled(seconds_per_byte: float, then: Scripted | None = None) -> Scripted:
    """Answer ``then`` one byte every ``seconds_per_byte``: each read is quick, the whole is endless."""
    base = then or reply_text("late")
    return Scripted(status=base.status, body=base.body, headers=base.headers, trickle_s=seconds_per_byte)


# --- emulating the real API's request validation ----------------------------------------------

EMULATIONS = ("openai", "no_tools", "ignores_tools", "no_vision")
REASONING_MODEL = re.compile(r"^(?:o[134]|gpt-5)(?!.*-chat)")  # written independently of the backend's rule
REASONING_REFUSED_PARAMS = ("max_tokens", "top_p", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias")
# Outside strict mode's documented subset. The API refuses such keywords with "'X' is not permitted";
# this list may be stricter than the live API, never laxer, which is the safe side for a test double.
STRICT_NOT_PERMITTED = (
    "prefixItems", "minLength", "maxLength", "uniqueItems", "patternProperties", "unevaluatedProperties",
    "unevaluatedItems", "propertyNames", "minProperties", "maxProperties", "contains", "oneOf", "not",
    "if", "then", "else", "dependentRequired", "dependentSchemas",
)


def api_error(message: str, *, param: str | None = None, code: str | None = None, status: int = 400,
              kind: str = "invalid_request_error") -> Scripted:
    """An error in the API's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return Scripted(status=status, body={"error": {"message": message, "type": kind, "param": param, "code": code}})


def strict_schema_problem(schema: Any) -> str | None:
    """Why strict mode refuses ``schema`` (worded as the API words it), or None if it accepts it."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        got = schema.get("type") if isinstance(schema, dict) else type(schema).__name__
        return f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{got}\"'."

    def resolve(ref: str) -> Any:
        node: Any = schema
        for part in ref.removeprefix("#/").split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def walk(node: Any, context: tuple[str, ...]) -> str | None:
        if not isinstance(node, dict):
            return None
        where = f"In context={context!r}"
        for keyword in STRICT_NOT_PERMITTED:
            if keyword in node:
                return f"{where}, '{keyword}' is not permitted."
        if isinstance(ref := node.get("$ref"), str) and resolve(ref) is None:
            return f"{where}, reference to component '{ref}' which was not found in the schema."
        if node.get("type") == "object" or "properties" in node:
            if node.get("additionalProperties") is not False:
                return f"{where}, 'additionalProperties' is required to be supplied and to be false."
            properties = node.get("properties") or {}
            required = node.get("required") or []
            if missing := [k for k in properties if k not in required]:
                return (f"{where}, 'required' is required to be supplied and to be an array including every "
                        f"key in properties. Missing '{missing[0]}'.")
            if extra := [k for k in required if k not in properties]:
                return f"{where}, Extra required key '{extra[0]}' supplied."
            for name, sub in properties.items():
                if problem := walk(sub, (*context, "properties", name)):
                    return problem
        if problem := walk(node.get("items"), (*context, "items")):
            return problem
        for i, sub in enumerate(node.get("anyOf") or []):
            if problem := walk(sub, (*context, "anyOf", str(i))):
                return problem
        for defs in ("$defs", "definitions"):
            for name, sub in (node.get(defs) or {}).items():
                if problem := walk(sub, (*context, defs, name)):
                    return problem
        return None

    return walk(schema, ())


def _message_texts(messages: Any) -> str:
    texts = []
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
    return "\n".join(texts)


def openai_violation(body: dict[str, Any]) -> Scripted | None:
    """The 400 the real Chat Completions API gives this request body, or None if it would accept it."""
    model = str(body.get("model", "")).rsplit("/", 1)[-1].lower()
    if REASONING_MODEL.match(model):
        if "temperature" in body and body["temperature"] != 1:
            return api_error(f"Unsupported value: 'temperature' does not support {body['temperature']} with this model. "
                             "Only the default (1) value is supported.", param="temperature", code="unsupported_value")
        for name in REASONING_REFUSED_PARAMS:
            if name in body:
                hint = " Use 'max_completion_tokens' instead." if name == "max_tokens" else ""
                return api_error(f"Unsupported parameter: '{name}' is not supported with this model.{hint}",
                                 param=name, code="unsupported_parameter")
        if body.get("reasoning_effort") == "minimal" and not model.startswith("gpt-5"):
            return api_error("Unsupported value: 'reasoning_effort' does not support 'minimal' with this model. "
                             "Supported values are: 'low', 'medium', and 'high'.", param="reasoning_effort",
                             code="unsupported_value")
    elif "reasoning_effort" in body:
        return api_error("Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                         param="reasoning_effort", code="unsupported_parameter")
    if "tool_choice" in body and not body.get("tools"):
        return api_error("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                         param="tool_choice")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object" and "json" not in _message_texts(body.get("messages")).lower():
        return api_error("'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                         "'json_object'.", param="messages")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        if spec.get("strict") and (problem := strict_schema_problem(spec.get("schema"))):
            return api_error(f"Invalid schema for response_format '{spec.get('name')}': {problem}", param="response_format")
    for i, tool in enumerate(body.get("tools") or []):
        function = tool.get("function") or {}
        if function.get("strict") and (problem := strict_schema_problem(function.get("parameters"))):
            return api_error(f"Invalid schema for function '{function.get('name')}': {problem}",
                             param=f"tools[{i}].function.parameters", code="invalid_function_parameters")
    return None


def no_tools_violation(body: dict[str, Any]) -> Scripted | None:
    """What Ollama answers when the model has no tool support (llama.cpp: "tools param requires --jinja flag")."""
    if body.get("tools"):
        return api_error(f"registry.ollama.ai/library/{body.get('model', 'model')}:latest does not support tools",
                         kind="api_error")
    return None


# What llama.cpp (xllamacpp 2026.10, SmolLM2-135M, no mmproj) answers to an image, measured:
# HTTP 500 {"error": {"code": 500, "message": LLAMA_CPP_NO_VISION, "type": "server_error"}}.
LLAMA_CPP_NO_VISION = "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"
# What SmolLM2 wrote under llama.cpp when offered tools (12 tokens, temperature 0): prose, no call.
IGNORED_TOOLS_TEXT = "Awesome! I'm glad to help. I'm"


def ignores_tools_violation(body: dict[str, Any]) -> Scripted | None:
    """llama.cpp + SmolLM2: ``tools`` are accepted and dropped by the chat template; the reply is prose."""
    if body.get("tools"):
        return reply_text(IGNORED_TOOLS_TEXT, prompt_tokens=300, completion_tokens=12)
    return None


def no_vision_violation(body: dict[str, Any]) -> Scripted | None:
    """llama.cpp without an mmproj: any image part is refused with HTTP 500, in llama.cpp's error shape."""
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    if any(isinstance(p, dict) and p.get("type") == "image_url" for m in messages if isinstance(m, dict)
           and isinstance(m.get("content"), list) for p in m["content"]):
        return Scripted(status=500, body={"error": {"code": 500, "message": LLAMA_CPP_NO_VISION, "type": "server_error"}})
    return None


VALIDATORS = {"openai": openai_violation, "no_tools": no_tools_violation, "ignores_tools": ignores_tools_violation,
              "no_vision": no_vision_violation}


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]


class FakeOpenAIServer:
    """``with FakeOpenAIServer() as server: ... server.base_url`` (ends in ``/v1``).

    ``emulate``: any of ``EMULATIONS`` (see the module docstring); a request an emulation answers
    is recorded in ``requests`` like any other and leaves the script untouched.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, emulate: str | Iterable[str] | None = None) -> None:
        modes = (emulate,) if isinstance(emulate, str) else tuple(emulate or ())
        if unknown := [m for m in modes if m not in VALIDATORS]:
            raise ValueError(f"unknown emulation {unknown}; choose from {EMULATIONS}")
        self.emulate: tuple[str, ...] = modes
        self._queue: deque[Scripted] = deque()
        self._always: Scripted | None = None
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-openai", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *replies: Scripted) -> FakeOpenAIServer:
        with self._lock:
            self._queue.extend(replies)
        return self

    def always(self, reply: Scripted | None) -> FakeOpenAIServer:
        """Answer every request with ``reply`` once the script is used up (a persistent fault)."""
        with self._lock:
            self._always = reply
        return self

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _next(self, request: RecordedRequest) -> Scripted:
        with self._lock:
            self.requests.append(request)
            if request.path.rstrip("/") != "/v1/chat/completions":
                return http_error(404, f"fake server has no {request.path}")
            for mode in self.emulate:
                if (refusal := VALIDATORS[mode](request.body)) is not None:
                    return refusal
            if self._queue:
                return self._queue.popleft()
            if self._always is not None:
                return self._always
        return http_error(418, "fake server: script exhausted")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                return None

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_unparsable": raw.decode("utf-8", "replace")}
                reply = server._next(RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                if reply.trickle_s:
                    head = (f"HTTP/1.1 {reply.status} OK\r\nContent-Type: {reply.content_type}\r\n"
                            f"Content-Length: {len(payload)}\r\n\r\n").encode()
                    try:
                        for i in range(len(head) + len(payload)):
                            self.wfile.write((head + payload)[i : i + 1])
                            time.sleep(reply.trickle_s)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client gave up, as the test intended
                    self.close_connection = True
                    return
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left, as the test intended

        return Handler

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
