"""The options every command that runs the agent takes (locate, chat, serve, eval), defined once.

``@agent_options`` adds them to a command's signature and hands the command one ``AgentOptions``:
``--index``, the models (``--vlm``, ``--planner`` and their ``--*-opt``), the policy, the call
budget, the response cache, the config shortcuts (``--prior-level``, ``--scheme``,
``--no-rerank``, ``--max-seconds``, ``--fallback``, ``--exclude-author``) and ``--set KEY=VALUE``
for any other agent-config key. ``AgentOptions.settings_map()`` is the flat mapping that
``ContextSpec.from_settings`` (and ``RunSpec``, for eval) reads, so a flag means and checks the
same thing everywhere. Registry-backed choices (policies, backends) are checked by callbacks when a
command runs, not when this module is imported, so ``--help`` stays instant.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel

from geoguide.agent.settings import DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT_S, ContextSpec, parse_assignment
from geoguide.core.errors import GeoguideError


class CLIError(GeoguideError):
    """A user-facing failure: printed as one line, exit code 2."""


class NoAnswer(GeoguideError):
    """The run went through but found nothing to answer with (no prior, nothing searched or
    matched): not "done", so not exit 0; 4 tells scripts apart from bad input (2) and a dead model (3)."""

    exit_code = 4


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def _index_folder(value: Path | None) -> Path | None:
    """A missing index folder is reported at once, before any model or registry is imported."""
    if value is not None and not value.is_dir():
        raise typer.BadParameter(f"{value}: no such index folder (make one with geoguide index build)")
    return value


def _known_policy(value: str) -> str:
    """Check ``--policy`` against the registry when the command runs (not at ``--help`` time)."""
    from geoguide.agent.policies import POLICIES

    if value not in POLICIES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(repr, sorted(POLICIES)))}")
    return value


def _known_backend(value: str | None) -> str | None:
    from geoguide.agent.backends import BACKENDS, available_backends, parse_spec

    if value is not None and parse_spec(value)[0] not in BACKENDS:  # one module imported, not every backend
        raise typer.BadParameter(
            f"{value!r}: unknown backend; use one of {', '.join(available_backends())} (e.g. replay:CSV, openai:gpt-4o)"
        )
    return value


Fallback = Literal["none", "retrieval"]

# name -> (annotation, default): the one definition of the shared options. ``None`` defaults mean
# "the agent config's own default" (agent/config.py), so no command restates a default.
SHARED: dict[str, tuple[Any, Any]] = {
    "index": (Annotated[Path, typer.Option("--index", callback=_index_folder, help="reference index directory")],
              inspect.Parameter.empty),
    "vlm": (Annotated[str, typer.Option("--vlm", callback=_known_backend, help=(
        "none | replay:CSV | openai:MODEL | openai-compatible:URL:MODEL | llava:PATH | geoclip:DIR | "
        "clip-zeroshot:DIR"))], "none"),
    "policy": (Annotated[str, typer.Option("--policy", callback=_known_policy, help="rules | llm | prior")], "rules"),
    "vlm_opt": (Annotated[list[str] | None, typer.Option("--vlm-opt", help=(
        "KEY=VALUE model option for the VLM, repeatable: temperature, reasoning_effort, max_completion_tokens, "
        "max_tokens, seed, tool_mode (auto|native|json), response_format, strict_tools, vision"))], None),
    "planner": (Annotated[str | None, typer.Option("--planner", callback=_known_backend, help=(
        "the model that plans with --policy llm (default: the --vlm model), e.g. "
        "openai-compatible:http://127.0.0.1:8080/v1:smollm2"))], None),
    "planner_opt": (Annotated[list[str] | None, typer.Option("--planner-opt", help=(
        "KEY=VALUE option for the planner (as --vlm-opt); tool_mode=auto (the default) and a server's refusal "
        "of images are detected on the first call"))], None),
    "prior_level": (Annotated[Literal["point", "country"] | None, typer.Option(
        "--prior-level", help="point | country (only the prior's country, as in the paper)")], None),
    "scheme": (Annotated[str | None, typer.Option(
        "--scheme", help="country | kmeans | any stored scheme: the submaps the rules policy searches")], None),
    "rerank": (Annotated[bool, typer.Option("--rerank/--no-rerank", help="geographic re-ranking (the paper's ablation)")], True),
    "exclude_author": (Annotated[list[str] | None, typer.Option(
        "--exclude-author", help="never retrieve this photographer's photos; repeatable")], None),
    "max_seconds": (Annotated[float | None, typer.Option(
        "--max-seconds", min=0.1, help="time budget per photo, model calls included (default 180)")], None),
    "fallback": (Annotated[Fallback | None, typer.Option("--fallback", help=(
        "when the model cannot be used: 'none' (default) stops with an error (exit 3); 'retrieval' answers "
        "from retrieval alone and says so"))], None),
    "timeout": (Annotated[float, typer.Option("--timeout", min=0.1, help=(
        "seconds one model call may take (each call is also capped by the time left for the photo)"))],
        DEFAULT_TIMEOUT_S),
    "attempts": (Annotated[int, typer.Option("--attempts", min=1, help=(
        "tries per model call, the first included (timeouts, 429 and 5xx are retried)"))], DEFAULT_ATTEMPTS),
    "query_vectors": (Annotated[Path | None, typer.Option("--query-vectors", help=(
        "the photos' vectors computed elsewhere: .npy in the labels' row order (eval) or .parquet with IMG_ID "
        "(the file name for locate); needed for an index made by 'index import'"))], None),
    "calibration": (Annotated[Path | None, typer.Option("--calibration", help=(
        "a calibration profile (geoguide calibrate): recalibrated probabilities and a radius holding the truth "
        "with the profile's coverage; without one the radius is uncalibrated"))], None),
    "cache": (Annotated[Path | None, typer.Option("--cache", help=(
        "SQLite response cache (default: ~/.cache/geoguide/responses.sqlite; 'none' disables)"))], None),
    "settings": (Annotated[list[str] | None, typer.Option("--set", help=(
        "KEY=VALUE agent config override (JSON value), e.g. override.compare_km=1 or k=50; repeatable"))],
        None),
}


class AgentOptions(BaseModel):
    """The shared options as given on the command line (one value per ``SHARED`` entry)."""

    index: Path
    vlm: str = "none"
    policy: str = "rules"
    vlm_opt: list[str] | None = None
    planner: str | None = None
    planner_opt: list[str] | None = None
    prior_level: Literal["point", "country"] | None = None
    scheme: str | None = None
    rerank: bool = True
    exclude_author: list[str] | None = None
    max_seconds: float | None = None
    fallback: Fallback | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    attempts: int = DEFAULT_ATTEMPTS
    query_vectors: Path | None = None
    calibration: Path | None = None
    cache: Path | None = None
    settings: list[str] | None = None

    def settings_map(self) -> dict[str, Any]:
        """The flat settings these options make: spec fields by name, anything else a dotted
        agent-config key. ``--set`` comes first, so a dedicated flag given too wins."""
        out: dict[str, Any] = dict(parse_assignment(s) for s in self.settings or [])
        shortcuts = {"prior_level": self.prior_level, "scheme": self.scheme,
                     "rerank.enabled": None if self.rerank else False, "caps.max_seconds": self.max_seconds,
                     "fallback": self.fallback, "exclude_authors": self.exclude_author or None}
        out.update({k: v for k, v in shortcuts.items() if v is not None})
        out.update(index=self.index, vlm=self.vlm, policy=self.policy, cache=self.cache, timeout=self.timeout,
                   attempts=self.attempts, vlm_opts=self.vlm_opt or [], planner=self.planner,
                   planner_opts=self.planner_opt or [], query_vectors=self.query_vectors,
                   calibration=self.calibration)
        return out

    def context_spec(self, **extra: Any) -> ContextSpec:
        """The context these options open; ``extra`` adds settings only this command has."""
        return ContextSpec.from_settings({**self.settings_map(), **extra})


def agent_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the shared options to ``command``'s signature (after its own) and call it with them
    gathered in one ``opts: AgentOptions`` argument. Typer reads ``__signature__``, so the options
    appear in ``--help`` and are parsed and checked like the command's own."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "opts"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
              for name, (annotation, default) in SHARED.items()]

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        opts = AgentOptions(**{name: kwargs.pop(name) for name in SHARED})
        return command(**kwargs, opts=opts)

    run.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in [*own, *shared]}
    return run
