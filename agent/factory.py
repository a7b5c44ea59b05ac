"""The one way every shell (CLI, chat, web server, eval runner, demo) opens an ``AgentContext``:
from an ``agent.settings.ContextSpec``, so the same options open the same index, backends and config
everywhere. Kept apart from ``agent.context`` because it needs the policy registry, whose policies
import the context type.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoguide.agent.backends import (
    Backend,
    ChatBackend,
    PriorProvider,
    backend_class,
    make_backend,
    parse_backend_options,
)
from geoguide.agent.context import AgentContext
from geoguide.agent.policies import make_policy
from geoguide.agent.policies.base import Policy
from geoguide.agent.settings import ContextSpec, default_cache_path
from geoguide.core.errors import first_line
from geoguide.core.validation import describe_validation
from geoguide.indices.store import ReferenceIndex

if TYPE_CHECKING:
    from geoguide.indices.photosets import Sample


def open_backend(spec: str, cache: Path | None, *, timeout: float, attempts: int,
                 opts: list[str] | None = None) -> Backend:
    """One backend from its spec: model backends get the cache, the call budget and ``--*-opt`` options."""
    options: dict[str, Any] = parse_backend_options(opts or [])
    runtime = {"cache": None if str(cache) == "none" else str(cache or default_cache_path()), "timeout": timeout,
               "max_attempts": attempts}
    takes = backend_class(spec).runtime_options
    return make_backend(spec, **options, **{k: v for k, v in runtime.items() if k in takes})


def open_models(spec: ContextSpec, policy: Policy) -> tuple[PriorProvider, ChatBackend | None]:
    """The VLM and the planner (None: the VLM plans), each checked for the job it is given; on a
    refusal nothing is left open (a cache file, a loaded model)."""
    opened: list[Backend] = []
    try:
        backend = open_backend(spec.vlm, spec.cache, timeout=spec.timeout, attempts=spec.attempts, opts=spec.vlm_opts)
        opened.append(backend)
        if not isinstance(backend, PriorProvider):
            raise ValueError(f"--vlm {spec.vlm}: this backend cannot give a photo's prior (it only chats); "
                             "give it as --planner")
        planning = None
        if spec.planner is not None and (spec.planner != spec.vlm or spec.planner_opts):
            opened.append(open_backend(spec.planner, spec.cache, timeout=spec.timeout, attempts=spec.attempts,
                                       opts=spec.planner_opts))
            planning = opened[-1].chat_backend()
            if planning is None:
                raise ValueError(f"--planner {spec.planner}: this backend only gives priors and cannot plan; "
                                 "a planner is a chat model (openai:, openai-compatible:, llava:)")
        chat = planning if planning is not None else backend.chat_backend()
        if policy.needs_tool_calling and chat is None:
            raise ValueError(f"--policy {policy.name} plans with a chat model, and --vlm {spec.vlm} gives priors "
                             "only: add --planner (e.g. openai-compatible:URL:MODEL, see geoguide llama-server)")
        if policy.needs_tool_calling and not chat.supports_tools:
            raise ValueError(f"--policy {policy.name} plans with tool calls, which {chat.spec} cannot make: serve "
                             "the model behind an OpenAI-compatible server (vLLM, llama.cpp) and give it as --planner")
    except BaseException:
        for opened_backend in opened:
            opened_backend.close()
        raise
    return backend, planning


def build_context(spec: ContextSpec, samples: Sequence[Sample] | None = None) -> AgentContext:
    """Open the index, the model backends and the config the same way for every shell.

    The config and the policy are checked before anything is loaded, so a typo fails at once; a
    backend that can only name countries (``clip-zeroshot``) is restricted to the map's countries.
    ``samples``: the labelled photos a ``.npy`` of query vectors follows row by row (eval)."""
    if spec.index is None:
        raise ValueError("give the reference index (--index DIR, or index = ... in a plan)")
    cfg = spec.agent_config()
    policy = make_policy(cfg.policy)  # an unknown policy fails before anything is loaded
    index = ReferenceIndex(spec.index)
    vectors = None
    if spec.query_vectors is not None:
        from geoguide.indices.importing import QueryVectors, open_vectors

        vectors = QueryVectors(open_vectors(spec.query_vectors), samples)
        if vectors.table.dim != index.manifest.descriptor.dim:
            raise ValueError(f"--query-vectors {spec.query_vectors}: {vectors.table.dim} dimensions, but the index's "
                             f"vectors have {index.manifest.descriptor.dim}")
    backend, planning = open_models(spec, policy)
    if (countries := index.scheme_of("country")) is not None:
        backend.restrict_countries(list(countries.spans))
    return AgentContext(index=index, backend=backend, config=cfg, planner=planning, query_vectors=vectors,
                        profile=load_profile(spec.calibration) if spec.calibration is not None else None)


def load_profile(path: Path):
    """A calibration profile file, or one ValueError line saying what is wrong with it."""
    from pydantic import ValidationError

    from geoguide.agent.profile import CalibrationProfile

    try:
        return CalibrationProfile.model_validate_json(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--calibration {path}: no such file (make one with geoguide calibrate)") from None
    except ValidationError as e:
        raise ValueError(f"--calibration {path}: not a calibration profile ({describe_validation(e, limit=3)})") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise ValueError(f"--calibration {path}: not a calibration profile ({first_line(e)})") from None
