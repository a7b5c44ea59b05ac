"""A real local HTTP server speaking the OpenAI Chat Completions protocol, driven by a script.

Tests exercise the real SDK, sockets, timeouts and status codes instead of mocking the client:
``server.script(reply_json({...}), http_error(429, retry_after=0.2), ...)`` queues what the next
requests get, and ``server.requests`` records what was sent (body and headers). An exhausted
script answers HTTP 418, a non-retryable status, so an unexpected extra call fails loudly.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
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


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]


class FakeOpenAIServer:
    """``with FakeOpenAIServer() as server: ... server.base_url`` (ends in ``/v1``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
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
