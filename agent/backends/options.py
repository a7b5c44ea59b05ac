"""Per-model options from the command line: ``--vlm-opt temperature=0.2 --vlm-opt reasoning_effort=low``.

``parse_backend_options(["temperature=0.2", "reasoning_effort=low"])`` -> ``{"temperature": 0.2,
"reasoning_effort": "low"}``, typed and checked by ``BackendOptions``; the dict goes to
``make_backend(spec, **options)``. Only the keys given are returned, so everything left out keeps
the backend's per-model default (see ``openai_backend`` for the reasoning-model rule). ``none`` (or
``null``) as the value of ``temperature``, ``seed`` or ``reasoning_effort`` means "do not send it".
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geoguide.agent.backends.errors import BackendConfigError
from geoguide.core.validation import describe_validation

ReasoningEffort = Literal["minimal", "low", "medium", "high"]
ToolMode = Literal["native", "json", "auto"]
ResponseFormatKind = Literal["json_schema", "json_object", "none"]

_NULLABLE = frozenset({"temperature", "seed", "reasoning_effort"})
_NULL_WORDS = frozenset({"none", "null"})


class BackendOptions(BaseModel):
    """The options ``--vlm-opt`` accepts; the field descriptions are the help text."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="sampling temperature; none = do not send (reasoning models' default)"
    )
    reasoning_effort: ReasoningEffort | None = Field(None, description="reasoning models only: minimal|low|medium|high")
    max_completion_tokens: int | None = Field(
        None, gt=0, description="reply token limit, sent as max_completion_tokens (reasoning tokens included)"
    )
    max_tokens: int | None = Field(None, gt=0, description="reply token limit, sent as max_tokens to compatible servers")
    seed: int | None = Field(None, description="sampling seed, where the server supports one")
    tool_mode: ToolMode | None = Field(
        None,
        description="auto (default: native, switching to json for good when the server refuses or ignores tools=), "
        "native (tools=), json (one JSON action per reply)",
    )
    response_format: ResponseFormatKind | None = Field(None, description="perception JSON: json_schema|json_object|none")
    strict_tools: bool | None = Field(None, description="send tool schemas in strict mode (default: on for openai)")
    vision: bool | None = Field(
        None, description="false for a text-only model: image parts are left out (default: on until the server refuses an image)"
    )


def option_help() -> dict[str, str]:
    """``{name: description}`` for every option, in declaration order (for ``--help`` and errors)."""
    return {name: field.description or "" for name, field in BackendOptions.model_fields.items()}


def parse_backend_options(pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> typed ``{key: value}``; raises ``BackendConfigError`` naming the fix.

    Unknown keys, a missing ``=``, a key given twice and values of the wrong type or range are
    refused with a message that lists the allowed keys (or the allowed values).
    """
    allowed = list(BackendOptions.model_fields)
    raw: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise BackendConfigError(f"model option {pair!r} is not KEY=VALUE; allowed keys: {', '.join(allowed)}")
        if key not in BackendOptions.model_fields:
            raise BackendConfigError(f"unknown model option {key!r}; allowed: {', '.join(allowed)}")
        if key in raw:
            raise BackendConfigError(f"model option {key!r} given twice")
        raw[key] = None if key in _NULLABLE and value.lower() in _NULL_WORDS else value
    try:
        parsed = BackendOptions.model_validate(raw)
    except ValidationError as exc:
        raise BackendConfigError(f"bad model option: {describe_validation(exc, with_input=True)}") from exc
    return {key: getattr(parsed, key) for key in raw}
