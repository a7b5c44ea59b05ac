"""Ablation plans: many benchmark runs from one TOML file, compared in tables and plots.

A plan has a ``[base]`` table (settings every variant shares), then ``[[variant]]`` tables (a
``name`` plus overrides) and/or a ``[grid]`` table of lists whose cartesian product becomes
variants (named from their values); with both, every variant is crossed with the grid::

    [base]
    images = "../shared/data/im2gps3k/images"
    labels = "../shared/data/im2gps3k/labels.csv"
    index = "indices/im2gps3k-effnet"
    vlm = "replay:../shared/data/im2gps3k/prior_gemini-2.0-flash.csv"
    exclude_same_author = true

    [[variant]]
    name = "rerank"
    [[variant]]
    name = "no-rerank"
    rerank = false

    [grid]
    corrupt_prior = [0.0, 0.25, 0.5]

Each variant is an ordinary run in ``OUT/<name>/``: re-running the plan resumes unfinished ones
and only re-summarises finished ones (model answers come from the response cache, descriptors
from the index).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from geoguide.agent.settings import flatten
from geoguide.core import atomic
from geoguide.core.errors import GeoguideError
from geoguide.core.validation import describe_validation
from geoguide.eval.metrics import markdown_table
from geoguide.eval.paper import (
    PlanDescriptor,
    Skipped,
    ensure_index,
    paper_table,
    skipped_text,
    unavailable,
)
from geoguide.eval.records import PREDICTIONS, RunSummary, load_records
from geoguide.eval.spec import RunSpec, dataset_for
from geoguide.eval.variants import Variant, VariantResult, settings_text, value_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLAN_TABLES = ("base", "variant", "grid", "descriptor")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]*$")


class Plan(BaseModel):
    """A plan's variants, its ``[[descriptor]]`` entries that can run, and those that cannot (why)."""

    variants: list[Variant]
    descriptors: list[PlanDescriptor] = []
    skipped: list[Skipped] = []


def grid_name(values: dict[str, Any]) -> str:
    text = ",".join(f"{k}={value_name(v)}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", text)


def load_plan(path: str | Path) -> Plan:
    """Expand a plan into variants; every variant's settings are validated before anything runs.

    With ``[[descriptor]]`` tables (``eval.paper``) every variant runs once per descriptor that
    can run here, on that descriptor's index, named ``<descriptor>__<variant>``; the others are
    ``skipped`` with the reason."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            plan = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(plan) - set(PLAN_TABLES))
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {unknown}; a plan has [base], [[variant]], [grid] and "
                         "[[descriptor]]")
    base = flatten(plan.get("base", {}))
    grid = plan.get("grid", {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: [grid] {key} must be a non-empty list, got {values!r}")
    rows: list[tuple[str, dict[str, Any]]] = []
    for i, table in enumerate(plan.get("variant", []), 1):
        table = dict(table)
        if "name" not in table:
            raise ValueError(f"{path}: [[variant]] number {i} has no name")
        rows.append((str(table.pop("name")), flatten(table)))
    rows = rows or [("", {})]
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    descriptors, skipped = _plan_descriptors(path, plan.get("descriptor", []))
    variants: list[Variant] = []
    for d in descriptors if "descriptor" in plan else [None]:
        for name, overrides in rows:
            for combo in combos:
                full = "__".join(x for x in (d.name if d else "", name, grid_name(combo)) if x) or "base"
                if not SAFE_NAME.match(full):
                    raise ValueError(f"{path}: variant name {full!r} must be letters, digits and ._=+,- only")
                settings = {**overrides, **combo}
                try:
                    spec = RunSpec.from_settings({**base, **settings, **({"index": str(d.index)} if d else {})})
                except ValueError as exc:
                    raise ValueError(f"{path}: variant {full!r}: {exc}") from None
                variants.append(Variant(name=full, spec=spec, settings=settings, row=name, grid=combo,
                                        descriptor=d.name if d else ""))
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: duplicate variant name(s) {dupes}")
    return Plan(variants=variants, descriptors=descriptors, skipped=skipped)


def _plan_descriptors(path: Path, tables: list[dict[str, Any]]) -> tuple[list[PlanDescriptor], list[Skipped]]:
    ready: list[PlanDescriptor] = []
    skipped: list[Skipped] = []
    for i, table in enumerate(tables, 1):
        try:
            d = PlanDescriptor.model_validate(table)
        except ValidationError as exc:  # "1 validation error for PlanDescriptor" alone says nothing
            raise ValueError(f"{path}: [[descriptor]] number {i}: "
                             f"{describe_validation(exc, whole='[[descriptor]]', limit=3, with_input=True)}") from None
        if (reason := unavailable(d)) is None:
            ready.append(d)
        else:
            skipped.append(Skipped(descriptor=d.name, reason=reason))
    return ready, skipped


def run_errors(spec: RunSpec, run_dir: Path) -> list[float | None]:
    """The errors of the photos the run covers (its dataset up to its limit), from its file."""
    data, _ = dataset_for(spec)
    chosen = data.samples[: spec.limit] if spec.limit else data.samples
    records = load_records(run_dir / PREDICTIONS)
    return [records[s.image_id].error_km for s in chosen if s.image_id in records]


def run_plan(plan: Plan, out: str | Path, run: Callable[[RunSpec, Path], RunSummary]) -> str:
    """Build a ``[[descriptor]]``'s missing index, run (or resume) each variant into
    ``out/<name>``, then write the comparison; returns its markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "plan.json", plan.model_dump(mode="json"))
    first = plan.variants[0].spec if plan.variants else None
    skipped, failed = list(plan.skipped), set()
    for d in plan.descriptors:
        try:
            ensure_index(d, first.images if first else None, first.labels if first else None)
        except GeoguideError as e:  # its weights or mean are there but do not load: the others still run
            skipped.append(Skipped(descriptor=d.name, reason=f"its index could not be built: {e}"))
            failed.add(d.name)
    results = []
    for v in (v for v in plan.variants if v.descriptor not in failed):
        summary = run(v.spec, out / v.name)
        results.append(VariantResult(variant=v, summary=summary, errors_km=run_errors(v.spec, out / v.name)))
    return write_comparison(out, results, skipped)


# --------------------------------------------------------------------------------- comparison


def comparison_rows(results: Sequence[VariantResult]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        s = r.summary
        row: dict[str, Any] = {"variant": r.variant.name, "n": s.n, "answered": s.answered}
        row |= {f"acc_{k}km": round(v, 2) for k, v in s.accuracy.items()}
        row |= {
            "median_km": None if s.median_km is None else round(s.median_km, 2),
            "geoscore": round(s.geoscore, 1),
            "agent_s_p50": s.latency_s["agent_s"].p50 if "agent_s" in s.latency_s else None,
            "total_s_p50": s.latency_s["total_s"].p50 if "total_s" in s.latency_s else None,
            "model_calls_per_image": round(s.model_calls_per_image, 3),
            "cost_usd_per_image": round(s.cost_usd_per_image, 6),
            "failed": s.failed,
            "prior_corrupted": s.prior_corrupted,
            **_calibration_cells(s),
            "settings": settings_text(r.variant.settings),
        }
        rows.append(row)
    return rows


CALIBRATION_COLUMNS = ("ece25_stated", "ece25_profiled", "radius90_coverage", "radius90_median_km")


def _calibration_cells(s) -> dict[str, Any]:
    """How trustworthy each row's probabilities and radius are (``RunSummary.calibration``)."""
    c = s.calibration
    if c is None:
        return dict.fromkeys(CALIBRATION_COLUMNS)
    return {"ece25_stated": c.ece_raw.get("25"), "ece25_profiled": c.ece.get("25"),
            "radius90_coverage": round(c.coverage, 4), "radius90_median_km": c.median_radius_km}


def _md(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        return "–" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join([" --- "] * len(columns)) + "|"]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_comparison(out: Path, results: Sequence[VariantResult], skipped: Sequence[Skipped] = ()) -> str:
    rows = comparison_rows(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["variant"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(out / "comparison.csv", buf.getvalue())
    from geoguide.eval.ablation_plots import PLOTS, save_plot

    plots = [name for name, plot in PLOTS.items() if save_plot(out / name, plot, results)]
    md = (
        "\n".join(
            [
                "# Ablation comparison\n",
                skipped_text(skipped),
                paper_table(results, skipped),
                "## Every variant\n",
                "Accuracy: % of all photos strictly within each distance (a missing answer is a miss), with "
                "bootstrap 95% CIs.\n",
                markdown_table({r.variant.name: r.summary for r in results}, ci=True),
                "## Cost, latency and settings\n",
                _md(
                    rows,
                    [
                        "variant",
                        "agent_s_p50",
                        "total_s_p50",
                        "model_calls_per_image",
                        "cost_usd_per_image",
                        "failed",
                        "prior_corrupted",
                        "settings",
                    ],
                ),
                "## Calibration\n",
                "ECE of the answers' P(within 25 km) as stated and after a profile fitted on the other "
                "photographers; the coverage and median of that profile's 90% radius (agent/profile.py).\n",
                _md(rows, ["variant", *CALIBRATION_COLUMNS]),
                "## Plots\n",
                *(f"![{p}]({p})" for p in plots),
            ]
        )
        + "\n"
    )
    atomic.write_text(out / "comparison.md", md)
    return md
