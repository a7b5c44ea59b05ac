"""Replies from an OpenAI-compatible server that are HTTP 200 but no chat completion.

Their own module so that ``retry`` can recognise them without importing the OpenAI SDK (0.4 s of a
cold ``locate`` that uses no OpenAI backend): only ``openai_backend`` raises them, and it imports
this module.
"""

from __future__ import annotations

import openai


class NotJSONReply(openai.APIError):
    """HTTP 200 whose body is not a chat completion (HTML from a base URL without /v1, torn JSON)."""

    def __init__(self, what: str) -> None:
        Exception.__init__(self, what)
        self.message = what
        self.request = None  # type: ignore[assignment]
        self.body = None


class ErrorReply(NotJSONReply):
    """HTTP 200 whose JSON body is an error object (``{"error": {"message": ...}}``), not a
    completion: the server cannot be used as it is; its own message is kept for the person."""

    def __init__(self, error: object) -> None:
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(f"HTTP 200 with an error instead of a completion: {str(message or error)[:300]}")
