"""``geoguide eval`` and ``geoguide ablate``: benchmark runs from the command line or a TOML plan.

Both go through one ``RunSpec`` (what to run) and ``execute`` (run it into a directory), so a
variant in an ablation plan and a hand-typed ``geoguide eval`` with the same settings are the
same run and resume each other's work.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.cli_options import (
    DEFAULT_ATTEMPTS,
    DEFAULT_TIMEOUT_S,
    AttemptsOpt,
    PlannerOpt,
    PlannerOptOpt,
    PolicyOpt,
    TimeoutOpt,
    VlmOpt,
    VlmOptOpt,
)
from agent.config import AgentConfig

if TYPE_CHECKING:  # the runner pulls in langgraph and faiss: imported when a command runs, not for --help
    from eval.corruption import CorruptionSpec
    from eval.datasets import LoadedDataset
    from eval.records import RunSummary
    from eval.runner import DatasetRef

# Short names accepted in --set and ablation plans, for the settings ablations vary most.
CONFIG_ALIASES: dict[str, str] = {
    "rerank": "rerank.enabled",
    "rerank_weight": "rerank.prior_weight",
    "prompt": "perceive_prompt",
}


class RunSpec(BaseModel):
    """Everything that defines one benchmark run; ``config`` holds dotted AgentConfig overrides."""

    model_config = ConfigDict(extra="forbid")

    images: Path | None = Field(None, description="folder of query photos")
    labels: Path | None = Field(None, description="ground-truth file (IMG_ID,AUTHOR,LAT,LON)")
    dataset: str | None = Field(
        None, description="eval.datasets loader; default csv with labels, else shared"
    )
    index: Path | None = Field(None, description="reference index directory")
    vlm: str = "none"
    policy: str = "rules"
    cache: Path | None = None
    exclude_same_author: bool = False
    limit: int | None = Field(None, ge=1)
    workers: int = Field(1, ge=1)
    vlm_opts: list[str] = Field(default_factory=list, description="KEY=VALUE options of the VLM backend")
    planner: str | None = Field(None, description="the planning model's spec (default: the VLM)")
    planner_opts: list[str] = Field(default_factory=list, description="KEY=VALUE options of the planner")
    timeout: float = Field(60.0, gt=0, description="seconds per model call (capped by the photo's budget)")
    attempts: int = Field(4, ge=1, description="tries per model call, the first included")
    corrupt_prior: float = Field(0.0, ge=0.0, le=1.0)
    corrupt_mode: str = "neighbour"
    corrupt_noise_km: float = Field(0.0, ge=0.0)
    seed: int = 0
    oracle: bool = Field(False, description="the nearest other photographer's reference by GPS: the ceiling")
    config: dict[str, Any] = Field(default_factory=dict, description="dotted AgentConfig key -> value")

    def corruption(self) -> CorruptionSpec | None:
        from eval.corruption import CorruptionSpec

        if self.corrupt_prior <= 0:
            return None
        return CorruptionSpec(
            p=self.corrupt_prior, mode=self.corrupt_mode, noise_km=self.corrupt_noise_km, seed=self.seed
        )


RUN_KEYS = frozenset(RunSpec.model_fields) - {"config"}


# ------------------------------------------------------------------------------ config overrides


def config_keys(model: type[BaseModel] = AgentConfig, prefix: str = "") -> list[str]:
    """Every settable dotted key of the agent config (``rerank.enabled``, ``caps.max_steps``, ...)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += config_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"rerank": {"enabled": False}}`` -> ``{"rerank.enabled": False}`` (TOML tables, JSON objects)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def config_override(key: str, value: Any) -> tuple[str, Any]:
    """Resolve an alias and check the key exists: a typo must fail, not be silently ignored."""
    key = CONFIG_ALIASES.get(key, key)
    if key not in config_keys():
        raise ValueError(
            f"unknown setting {key!r}; settable: {', '.join(sorted(RUN_KEYS | set(config_keys())))}"
        )
    return key, value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a JSON value, or the raw text when it is not JSON (``prompt=perceive/v2``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set needs KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def spec_from_settings(settings: dict[str, Any]) -> RunSpec:
    """A flat mapping (a plan's [base] + variant, or CLI options) -> RunSpec, settings routed by name."""
    run: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for key, value in flatten(settings).items():
        if key in RUN_KEYS:
            run[key] = value
        else:
            k, v = config_override(key, value)
            config[k] = v
    return validated(RunSpec, **run, config=config)


def validated(model: type[BaseModel], **values: Any) -> Any:
    """Construct ``model``; a validation error becomes one readable ValueError line."""
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or model.__name__}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"invalid settings: {problems}") from None


# ---------------------------------------------------------------------------------- execution


@lru_cache(maxsize=8)
def _dataset(name: str, labels: str | None, images: str | None) -> LoadedDataset:
    from eval.datasets import load_dataset

    return load_dataset(name, labels=labels, images=images)


def dataset_for(spec: RunSpec) -> tuple[LoadedDataset, DatasetRef]:
    from eval.runner import DatasetRef

    name = spec.dataset or ("csv" if spec.labels else "shared")
    labels = str(spec.labels.resolve()) if spec.labels else None
    images = str(spec.images.resolve()) if spec.images else None
    data = _dataset(name, labels, images)
    return data, DatasetRef(name=name, labels=labels, images=images, report=data.report)


def execute(spec: RunSpec, out: Path, *, restart: bool = False, progress: bool | str = False) -> RunSummary:
    """Run ``spec`` into ``out`` (resuming what is there unless ``restart``)."""
    from agent.cli import make_context
    from eval.oracle import run_oracle
    from eval.runner import run_eval
    from indices.store import ReferenceIndex

    if spec.index is None:
        raise ValueError("give the reference index (--index DIR, or index = ... in the plan)")
    data, ref = dataset_for(spec)
    if not data.samples:
        raise ValueError(f"no usable photos in {ref.labels or ref.name} (see the warnings above)")
    if not spec.oracle and all(s.image_path is None for s in data.samples):
        raise ValueError("the photos are needed to run the agent: give --images DIR (images = ... in a plan)")
    if spec.oracle:
        return run_oracle(
            data.samples,
            ReferenceIndex(spec.index),
            out,
            exclude_same_author=spec.exclude_same_author,
            limit=spec.limit,
            resume=not restart,
            dataset=ref,
        )
    corruption = spec.corruption()
    try:
        ctx = make_context(spec.index, spec.vlm, spec.policy, spec.cache, timeout=spec.timeout,
                           attempts=spec.attempts, vlm_opts=spec.vlm_opts, planner=spec.planner,
                           planner_opts=spec.planner_opts, **nest(spec.config))
    except ValidationError as exc:
        raise ValueError(
            f"invalid agent config: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
        ) from None
    try:
        return run_eval(
            data.samples,
            ctx,
            out,
            exclude_same_author=spec.exclude_same_author,
            limit=spec.limit,
            workers=spec.workers,
            prior_corruption=corruption,
            resume=not restart,
            dataset=ref,
            extra={"spec": spec.model_dump(mode="json")},
            progress=progress,
        )
    finally:
        ctx.close()


# ------------------------------------------------------------------------------------ commands


def eval_cmd(
    out: Annotated[
        Path, typer.Option("--out", help="run directory (re-running the same command resumes it)")
    ],
    index_dir: Annotated[Path, typer.Option("--index", help="reference index directory")],
    images: Annotated[Path | None, typer.Option("--images", help="folder of query photos")] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="ground truth: IMG_ID,AUTHOR,LAT,LON")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="csv | shared | im2gps3k | im2gps | yfcc4k | ... (default: csv with --labels, else shared)",
        ),
    ] = None,
    vlm: VlmOpt = "none",
    policy: PolicyOpt = "rules",
    prior_level: Annotated[
        Literal["point", "country"] | None, typer.Option("--prior-level", help="point | country")
    ] = None,
    scheme: Annotated[
        Literal["country", "kmeans"] | None, typer.Option("--scheme", help="country | kmeans (rules policy)")
    ] = None,
    rerank: Annotated[
        bool, typer.Option("--rerank/--no-rerank", help="geographic re-ranking (the paper's ablation)")
    ] = True,
    exclude_same_author: Annotated[
        bool,
        typer.Option(
            "--exclude-same-author",
            help="leave-one-photographer-out: never retrieve the query's photographer or the query itself",
        ),
    ] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the first N photos")] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, help="photos in flight (for remote models; retrieval is CPU-bound)"),
    ] = 1,
    vlm_opt: VlmOptOpt = None,
    planner: PlannerOpt = None,
    planner_opt: PlannerOptOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    attempts: AttemptsOpt = DEFAULT_ATTEMPTS,
    max_seconds: Annotated[
        float | None, typer.Option("--max-seconds", min=0.1, help="time budget per photo (caps.max_seconds)")
    ] = None,
    fallback: Annotated[
        Literal["none", "retrieval"] | None,
        typer.Option(
            "--fallback",
            help="when the model cannot be used: 'none' stops the run (exit 3); 'retrieval' evaluates retrieval "
            "alone for those photos and every summary says so",
        ),
    ] = None,
    corrupt_prior: Annotated[
        float,
        typer.Option(
            "--corrupt-prior", help="probability of corrupting each photo's prior (robustness test)"
        ),
    ] = 0.0,
    corrupt_mode: Annotated[
        Literal["neighbour", "random", "none"],
        typer.Option("--corrupt-mode", help="neighbour | random | none (noise only); see eval.corruption"),
    ] = "neighbour",
    corrupt_noise_km: Annotated[
        float,
        typer.Option("--corrupt-noise-km", help="Gaussian noise (km) added to a corrupted prior's point"),
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="seed of the corruption draws")] = 0,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="KEY=VALUE agent config override (JSON value), e.g. override.min_similarity=0.8; repeatable",
        ),
    ] = None,
    oracle: Annotated[
        bool,
        typer.Option(
            "--oracle",
            help="no agent: the nearest reference by GPS (by another photographer with --exclude-same-author), the retrieval ceiling",
        ),
    ] = False,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="SQLite response cache ('none' disables)")
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="discard the run in --out and start over")
    ] = False,
) -> None:
    """Benchmark the agent on a labelled photo set: predictions.jsonl, summary.json/.md, run.json."""
    given: dict[str, Any] = dict(parse_assignment(s) for s in settings or [])
    options = {"prior_level": prior_level, "scheme": scheme, "rerank.enabled": None if rerank else False,
               "caps.max_seconds": max_seconds, "fallback": fallback}
    given.update({k: v for k, v in options.items() if v is not None})
    spec = spec_from_settings(
        {
            **given,
            "images": images,
            "labels": labels,
            "dataset": dataset,
            "index": index_dir,
            "vlm": vlm,
            "policy": policy,
            "cache": cache,
            "exclude_same_author": exclude_same_author,
            "limit": limit,
            "workers": workers,
            "timeout": timeout,
            "attempts": attempts,
            "vlm_opts": vlm_opt or [],
            "planner": planner,
            "planner_opts": planner_opt or [],
            "corrupt_prior": corrupt_prior,
            "corrupt_mode": corrupt_mode,
            "corrupt_noise_km": corrupt_noise_km,
            "seed": seed,
            "oracle": oracle,
        }
    )
    from eval.records import summary_markdown

    summary = _run_cli(spec, out, restart)
    typer.echo(summary_markdown(str(out), summary))


def _run_cli(spec: RunSpec, out: Path, restart: bool = False) -> RunSummary:
    from agent.cli import CLIError
    from eval.runner import EvalError

    try:
        return execute(spec, out, restart=restart, progress=True)
    except EvalError as exc:
        raise CLIError(str(exc)) from None


def ablate_cmd(
    plan: Annotated[
        Path,
        typer.Argument(help="TOML plan: [base] settings, then [[variant]] tables and/or a [grid] of lists"),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="folder: one run per variant, comparison.md/.csv and plots")
    ],
) -> None:
    """Run every variant of an ablation plan (each resumable), then compare them in tables and plots.

    Settings are those of ``geoguide eval`` with underscores (vlm, policy, exclude_same_author,
    corrupt_prior, ...) plus any agent config key (dotted or as a table: rerank.enabled, k, scheme,
    kmeans_clusters, perceive_prompt; aliases rerank, rerank_weight, prompt). Relative paths are
    relative to the current directory, as on the command line.
    """
    from eval.ablation import load_plan, run_plan

    variants = load_plan(plan)
    typer.echo(f"{len(variants)} variant(s): {', '.join(v.name for v in variants)}", err=True)
    report = run_plan(variants, out, run=lambda spec, where: _run_cli(spec, where))
    typer.echo(report)
