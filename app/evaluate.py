"""``geoguide eval`` and ``geoguide ablate``: benchmark runs from the command line or a TOML plan.

Both reduce to an ``eval.spec.RunSpec`` run by ``eval.spec.execute``: the shared agent options
(``app.options``) plus what only a benchmark has.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from geoguide.app.options import AgentOptions, CLIError, agent_options

if TYPE_CHECKING:
    from geoguide.eval.records import RunSummary
    from geoguide.eval.spec import RunSpec

commands = typer.Typer()


@commands.command("eval")
@agent_options
def eval_cmd(
    out: Annotated[Path, typer.Option("--out", help="run directory (re-running the same command resumes it)")],
    images: Annotated[Path | None, typer.Option("--images", help="folder of query photos")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="ground truth: IMG_ID,AUTHOR,LAT,LON")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help=(
        "csv | shared | im2gps3k | im2gps | yfcc4k | ... (default: csv with --labels, else shared)"))] = None,
    exclude_same_author: Annotated[bool, typer.Option("--exclude-same-author", help=(
        "leave-one-photographer-out: never retrieve the query's photographer or the query itself"))] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the first N photos (in file order)")] = None,
    sample: Annotated[int | None, typer.Option("--sample", min=1, help=(
        "a random N photos instead, drawn with --seed (the same N every run)"))] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help=(
        "photos in flight (for remote models; retrieval is CPU-bound)"))] = 1,
    corrupt_prior: Annotated[float, typer.Option("--corrupt-prior", help=(
        "probability of corrupting each photo's prior (robustness test)"))] = 0.0,
    corrupt_mode: Annotated[Literal["neighbour", "random", "none"], typer.Option("--corrupt-mode", help=(
        "neighbour | random | none (noise only); see eval.corruption"))] = "neighbour",
    corrupt_noise_km: Annotated[float, typer.Option("--corrupt-noise-km", help=(
        "Gaussian noise (km) added to a corrupted prior's point"))] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="seed of --sample and of the corruption draws")] = 0,
    oracle: Annotated[bool, typer.Option("--oracle", help=(
        "no agent: the nearest reference by GPS (by another photographer with --exclude-same-author), "
        "the retrieval ceiling"))] = False,
    restart: Annotated[bool, typer.Option("--restart", help="discard the run in --out and start over")] = False,
    *,
    opts: AgentOptions,
) -> None:
    """Benchmark the agent on a labelled photo set: predictions.jsonl, summary.json/.md, run.json."""
    from geoguide.eval.records import summary_markdown
    from geoguide.eval.spec import RunSpec

    spec = RunSpec.from_settings({
        **opts.settings_map(), "images": images, "labels": labels, "dataset": dataset,
        "exclude_same_author": exclude_same_author, "limit": limit, "sample": sample, "workers": workers,
        "corrupt_prior": corrupt_prior, "corrupt_mode": corrupt_mode, "corrupt_noise_km": corrupt_noise_km,
        "seed": seed, "oracle": oracle,
    })
    summary = _run_cli(spec, out, restart)
    typer.echo(summary_markdown(str(out), summary))
    _all_failed(summary)


def _all_failed(summary: RunSummary) -> None:
    if summary.failed and not summary.evaluated:
        from geoguide.app.options import NoAnswer

        raise NoAnswer(f"no photo was evaluated: all {summary.failed} failed (the warnings above say why)")


@commands.command("calibrate")
@agent_options
def calibrate_cmd(
    out: Annotated[Path, typer.Option("--out", help="the calibration profile to write (JSON)")],
    images: Annotated[Path | None, typer.Option("--images", help="folder of labelled photos")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="their ground truth: IMG_ID,AUTHOR,LAT,LON")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="csv | shared | im2gps3k | ... (as eval)")] = None,
    exclude_same_author: Annotated[bool, typer.Option("--exclude-same-author", help=(
        "leave-one-photographer-out (when the photos are also references)"))] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the first N photos")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="photos in flight")] = 1,
    coverage: Annotated[float, typer.Option("--coverage", min=0.5, max=0.99, help="the radius's coverage")] = 0.9,
    run: Annotated[Path | None, typer.Option("--run", help="folder of the labelled run (default: OUT.run; resumable)")] = None,
    *,
    opts: AgentOptions,
) -> None:
    """Fit a calibration profile on labelled photos: the agent runs on them exactly as with
    geoguide eval, then its answers' P(within 1/25/200/750/2500 km) are recalibrated and a radius
    holding the truth with --coverage is fitted (split-conformal, per answer source); every agent
    command takes the profile as --calibration PROFILE."""
    from geoguide.agent.profile import fit_profile
    from geoguide.core import atomic
    from geoguide.eval.records import PREDICTIONS, labelled, load_records
    from geoguide.eval.spec import RunSpec

    if opts.calibration is not None:
        raise CLIError("--calibration: a profile is fitted on the agent's own probabilities; run without one")
    spec = RunSpec.from_settings({**opts.settings_map(), "images": images, "labels": labels, "dataset": dataset,
                                  "exclude_same_author": exclude_same_author, "limit": limit, "workers": workers})
    where = run or out.with_name(out.name + ".run")
    summary = _run_cli(spec, where)
    _all_failed(summary)
    rows = labelled([r for r in load_records(where / PREDICTIONS).values() if r.error is None])
    try:
        profile = fit_profile(rows, coverage, fitted_on={"index": str(spec.index), "vlm": spec.vlm,
                                                          "policy": spec.policy, "run": str(where)})
    except ValueError as e:
        raise CLIError(f"{e} in {where}") from None
    atomic.write_text(out, profile.model_dump_json(indent=1) + "\n")
    groups = ", ".join(f"{g.group} {g.n}" for g in profile.groups)
    typer.echo(f"calibration profile -> {out}: {profile.n} answers ({groups})")
    if summary.calibration is not None:
        c = summary.calibration
        typer.echo(f"checked on photographers each fold did not see: the {c.coverage_target:.0%} radius covers "
                   f"{c.coverage:.1%} (median {c.median_radius_km:g} km); ECE of P(within 25 km) {c.ece['25']:.3f}")


def _run_cli(spec: RunSpec, out: Path, restart: bool = False) -> RunSummary:
    from geoguide.eval.runner import EvalError
    from geoguide.eval.spec import execute

    try:
        return execute(spec, out, restart=restart, progress=True)
    except EvalError as exc:
        raise CLIError(str(exc)) from None


# One paragraph a line (the help formatter re-wraps them to the terminal); brackets escaped, or
# rich takes [base] for a style and prints nothing.
ABLATE_HELP = "\n\n".join([
    "Run every variant of an ablation plan (each resumable), then compare them in tables and plots.",
    "A plan is TOML: a \\[base] table of settings every run shares; \\[\\[variant]] tables, each with a "
    "name and the settings it changes; and/or a \\[grid] table of lists, whose every combination is a "
    "variant (crossed with each \\[\\[variant]] when both are given). Example: eval/plans/results.toml.",
    "Settings are those of geoguide eval with underscores (images, labels, index, vlm, policy, "
    "exclude_same_author, corrupt_prior, ...) plus any agent config key, dotted or as a table "
    "(rerank.enabled, k, scheme, kmeans_clusters, perceive_prompt; aliases rerank, rerank_weight, "
    "prompt). Relative paths are relative to the current directory, as on the command line.",
])


@commands.command("ablate", help=ABLATE_HELP)
def ablate_cmd(
    plan: Annotated[
        Path,
        typer.Argument(help="the TOML plan (\\[base], \\[\\[variant]], \\[grid])"),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="folder: one run per variant, comparison.md/.csv and plots")
    ],
) -> None:
    """``geoguide ablate``: its help is ``ABLATE_HELP``."""
    from geoguide.eval.ablation import load_plan, run_plan

    loaded = load_plan(plan)
    for s in loaded.skipped:
        typer.echo(f"geoguide: skipping descriptor {s.descriptor}: {s.reason}", err=True)
    if not loaded.variants:
        raise CLIError(f"{plan}: nothing to run (every descriptor was skipped)")
    typer.echo(f"{len(loaded.variants)} variant(s): {', '.join(v.name for v in loaded.variants)}", err=True)
    report = run_plan(loaded, out, run=lambda spec, where: _run_cli(spec, where))
    typer.echo(report)
