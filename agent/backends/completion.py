"""A model's reply: ``Completion``, the form the response cache stores, and what it becomes.

A chat turn becomes the LangChain ``AIMessage`` the graph's state holds (``Completion.message``:
each call's arguments parsed once, the cost in ``response_metadata``, read back by ``usage_of``);
a perception reply becomes a ``Perception`` or the reason it could not (``parse_perception``,
worded for the repair prompt).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.messages.tool import invalid_tool_call, tool_call
from pydantic import ValidationError

from geoguide.agent.schemas import Perception, Usage
from geoguide.core.validation import describe_validation


@dataclass
class Completion:
    """One model reply, in the form stored in the cache."""

    content: str | None
    tool_calls: list[dict[str, str]] = field(default_factory=list)  # {"id", "name", "arguments_json"}
    refusal: str | None = None  # the API's explicit refusal (structured outputs), never cached
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Completion:
        return cls(**{k: record[k] for k in cls.__dataclass_fields__ if k in record})

    def message(self, usage: Usage) -> AIMessage:
        """The reply as the conversation stores it: each call's arguments parsed once, here (a
        call whose arguments are not a JSON object is an ``invalid_tool_call`` whose error the model
        reads), the cost in ``response_metadata`` (``usage_of``)."""
        calls, invalid = [], []
        for call in self.tool_calls:
            try:
                args = call_arguments(call["name"], call["arguments_json"])
            except ValueError as exc:
                invalid.append(invalid_tool_call(name=call["name"], args=call["arguments_json"], id=call["id"],
                                                 error=str(exc)))
            else:
                calls.append(tool_call(name=call["name"], args=args, id=call["id"]))
        message = AIMessage(content=self.content or "", tool_calls=calls, invalid_tool_calls=invalid,
                            response_metadata={} if self.refusal is None else {"refusal": self.refusal})
        return with_usage(message, usage)

    def usage(self, *, cache_hit: bool, retries: int = 0) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=self.cost_usd,
            model_calls=1,
            cache_hits=int(cache_hit),
            retries=retries,
        )


def call_arguments(name: str, arguments_json: str | None) -> dict[str, Any]:
    """A tool call's arguments as the model wrote them, parsed; ``ValueError`` with a message fit to
    send back to the model (it is told what to fix, not handed a traceback)."""
    try:
        value = json.loads(arguments_json or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"arguments of {name} are not valid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"arguments of {name} must be a JSON object")
    return value


def usage_of(message: AIMessage) -> Usage:
    """What a ``ChatBackend`` turn cost (tokens, money, calls, cache hits, retries, seconds)."""
    return Usage.model_validate(message.response_metadata.get("usage") or {})


def with_usage(message: AIMessage, usage: Usage) -> AIMessage:
    """``message`` costing ``usage`` (e.g. a reply asked twice: both calls are counted)."""
    metadata = {**message.response_metadata, "usage": usage.model_dump(exclude={"cached"})}
    tokens = {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
              "total_tokens": usage.prompt_tokens + usage.completion_tokens}
    return message.model_copy(update={"response_metadata": metadata, "usage_metadata": tokens})


def refusal_of(message: AIMessage) -> str | None:
    """The API's explicit refusal (structured outputs) of a ``ChatBackend`` turn, if any."""
    return message.response_metadata.get("refusal")


_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def parse_perception(text: str | None) -> tuple[Perception | None, str | None]:
    """``(perception, None)`` or ``(None, reason)``; the reason is written for the repair prompt.

    Tolerates code fences and prose around one JSON object, because models add them even when
    told not to and stripping them is cheaper than a repair call.
    """
    if not text or not text.strip():
        return None, "the reply was empty"
    body = text.strip()
    if m := _FENCE.match(body):
        body = m.group(1).strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as first:
        start, end = body.find("{"), body.rfind("}")
        if start < 0 or end <= start:
            return None, f"the reply is not JSON ({first.msg} at character {first.pos}); no JSON object found"
        try:
            data = json.loads(body[start : end + 1])
        except json.JSONDecodeError as exc:
            return None, f"the reply is not valid JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(data, dict):
        return None, f"the reply is JSON but a {type(data).__name__}, not an object"
    try:
        return Perception.model_validate(data), None
    except ValidationError as exc:
        return None, f"the JSON does not match the schema: {describe_validation(exc, whole='(object)', limit=8)}"
