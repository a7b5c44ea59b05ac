"""Command-line options shared by every command that runs the agent (locate, chat, eval).

One definition each, so ``--timeout`` or ``--policy`` mean and check the same thing everywhere.
Registry-backed choices (policies, backends) are checked by callbacks when a command runs, not
when the module is imported, so ``--help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from indices.errors import GeoguideError


def _known_policy(value: str) -> str:
    """Check ``--policy`` against the registry when the command runs (not at ``--help`` time)."""
    from agent.policies import POLICIES

    if value not in POLICIES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(repr, sorted(POLICIES)))}")
    return value


def _known_backend(value: str) -> str:
    from agent.backends import available_backends, parse_spec

    if parse_spec(value)[0] not in available_backends():
        raise typer.BadParameter(
            f"{value!r}: unknown backend; use one of {', '.join(available_backends())} (e.g. replay:CSV, openai:gpt-4o)"
        )
    return value


VlmOpt = Annotated[str, typer.Option("--vlm", callback=_known_backend,
                                     help="none | replay:CSV | openai:MODEL | openai-compatible:URL:MODEL | llava:PATH")]
PolicyOpt = Annotated[str, typer.Option("--policy", callback=_known_policy, help="rules | llm | prior")]
IndexOpt = Annotated[Path, typer.Option("--index", help="index directory")]
CacheOpt = Annotated[Path | None, typer.Option("--cache", help="SQLite response cache (default: ~/.cache/geoguide/responses.sqlite; 'none' disables)")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.1, help="seconds one model call may take (each call is also capped by the time left for the photo)")]
AttemptsOpt = Annotated[int, typer.Option("--attempts", min=1, help="tries per model call, the first included (timeouts, 429 and 5xx are retried)")]
MaxSecondsOpt = Annotated[float, typer.Option("--max-seconds", min=0.1, help="time budget per photo, model calls included")]
Fallback = Literal["none", "retrieval"]
FallbackOpt = Annotated[Fallback, typer.Option("--fallback", help="when the model cannot be used: 'none' stops with an error (exit 3); 'retrieval' answers from retrieval alone and says so")]
VlmOptOpt = Annotated[list[str] | None, typer.Option("--vlm-opt", help="KEY=VALUE model option for the VLM, repeatable: temperature, reasoning_effort, max_completion_tokens, max_tokens, seed, tool_mode (native|json|auto), response_format, strict_tools, vision")]
PlannerOpt = Annotated[str | None, typer.Option("--planner", callback=lambda v: v if v is None else _known_backend(v), help="the model that plans with --policy llm (default: the --vlm model), e.g. openai-compatible:http://127.0.0.1:8080/v1:smollm2")]
PlannerOptOpt = Annotated[list[str] | None, typer.Option("--planner-opt", help="KEY=VALUE option for the planner (as --vlm-opt), e.g. tool_mode=json, vision=false")]
DEFAULT_TIMEOUT_S, DEFAULT_ATTEMPTS, DEFAULT_MAX_SECONDS = 60.0, 4, 180.0


class CLIError(GeoguideError):
    """A user-facing failure: printed as one line, exit code 2."""


def echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
