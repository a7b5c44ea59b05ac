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

import numpy as np
from pydantic import BaseModel, ConfigDict

from geoguide.agent.settings import flatten
from geoguide.core import atomic
from geoguide.eval.metrics import THRESHOLDS_KM, markdown_table, threshold_key
from geoguide.eval.records import PREDICTIONS, RunSummary, load_records
from geoguide.eval.spec import RunSpec, dataset_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLAN_TABLES = ("base", "variant", "grid")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]*$")
CORRUPTION_THRESHOLDS = ("25", "200", "750")
THRESHOLD_NAMES = {"1": "street", "25": "city", "200": "region", "750": "country", "2500": "continent"}


class Variant(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    spec: RunSpec
    settings: dict[str, Any]  # what it sets beyond [base], as written in the plan (for labels)
    row: str = ""  # the [[variant]] it came from ("" for a grid-only plan)
    grid: dict[str, Any] = {}  # its [grid] values


class VariantResult(BaseModel):
    variant: Variant
    summary: RunSummary
    errors_km: list[float | None]  # one per photo of the run, None = no answer


def _value_name(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def grid_name(values: dict[str, Any]) -> str:
    text = ",".join(f"{k}={_value_name(v)}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", text)


def load_plan(path: str | Path) -> list[Variant]:
    """Expand a plan into variants; every variant's settings are validated before anything runs."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            plan = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(plan) - set(PLAN_TABLES))
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {unknown}; a plan has [base], [[variant]] and [grid]")
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
    variants: list[Variant] = []
    for name, overrides in rows:
        for combo in combos:
            full = "__".join(x for x in (name, grid_name(combo)) if x) or "base"
            if not SAFE_NAME.match(full):
                raise ValueError(f"{path}: variant name {full!r} must be letters, digits and ._=+,- only")
            settings = {**overrides, **combo}
            try:
                spec = RunSpec.from_settings({**base, **settings})
            except ValueError as exc:
                raise ValueError(f"{path}: variant {full!r}: {exc}") from None
            variants.append(Variant(name=full, spec=spec, settings=settings, row=name, grid=combo))
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: duplicate variant name(s) {dupes}")
    return variants


def run_errors(spec: RunSpec, run_dir: Path) -> list[float | None]:
    """The errors of the photos the run covers (its dataset up to its limit), from its file."""
    data, _ = dataset_for(spec)
    chosen = data.samples[: spec.limit] if spec.limit else data.samples
    records = load_records(run_dir / PREDICTIONS)
    return [records[s.image_id].error_km for s in chosen if s.image_id in records]


def run_plan(variants: Sequence[Variant], out: str | Path, run: Callable[[RunSpec, Path], RunSummary]) -> str:
    """Run (or resume) each variant into ``out/<name>``, then write the comparison; returns its markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "plan.json", [v.model_dump(mode="json") for v in variants])
    results = []
    for v in variants:
        summary = run(v.spec, out / v.name)
        results.append(VariantResult(variant=v, summary=summary, errors_km=run_errors(v.spec, out / v.name)))
    return write_comparison(out, results)


# --------------------------------------------------------------------------------- comparison


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value_name(v)}" for k, v in settings.items()) or "base"


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
            "settings": _settings_text(r.variant.settings),
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


def write_comparison(out: Path, results: Sequence[VariantResult]) -> str:
    rows = comparison_rows(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["variant"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(out / "comparison.csv", buf.getvalue())
    plots = [name for name, plot in PLOTS.items() if save_plot(out / name, plot, results)]
    md = (
        "\n".join(
            [
                "# Ablation comparison\n",
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


# -------------------------------------------------------------------------------------- plots


def save_plot(
    target: Path, plot: Callable[[Any, Sequence[VariantResult]], bool], results: Sequence[VariantResult]
) -> bool:
    """Draw with ``plot(fig, results)``; False (nothing written) when it does not apply."""
    from geoguide.core.extras import require

    matplotlib = require("matplotlib", "plots", "ablate's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(10, 5.5))
    try:
        if not plot(fig, results):
            return False
        with atomic.atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        return True
    finally:
        plt.close(fig)


def _legend(ax: Any) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)


def _threshold_ticks(ax: Any) -> None:
    ax.set_xscale("log")
    ax.set_xticks(list(THRESHOLDS_KM))
    ax.set_xticklabels(
        [f"{threshold_key(t)} km\n{THRESHOLD_NAMES.get(threshold_key(t), '')}" for t in THRESHOLDS_KM]
    )
    ax.minorticks_off()


def plot_accuracy_vs_threshold(fig: Any, results: Sequence[VariantResult]) -> bool:
    ax = fig.add_subplot()
    for r in results:
        keys = list(r.summary.accuracy)
        ax.plot(
            [float(k) for k in keys],
            [r.summary.accuracy[k] for k in keys],
            marker="o",
            label=f"{r.variant.name} (n={r.summary.n})",
            linestyle=_style(results.index(r)),
        )
    _threshold_ticks(ax)
    ax.set_ylim(0, 100)
    ax.set_xlabel("distance threshold")
    ax.set_ylabel("photos within threshold (%)")
    ax.set_title("Accuracy vs distance threshold")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    return True


def plot_error_cdf(fig: Any, results: Sequence[VariantResult]) -> bool:
    ax = fig.add_subplot()
    lo, hi = 0.1, 20038.0  # 100 m (closer is drawn there) .. half the Earth's circumference
    for i, r in enumerate(results):
        n = len(r.errors_km)
        err = np.sort([max(e, lo) for e in r.errors_km if e is not None])
        if n == 0:
            continue
        x = np.concatenate([[lo], err, [hi]])
        y = 100.0 * np.concatenate([[0], np.arange(1, len(err) + 1), [len(err)]]) / n
        ax.step(x, y, where="post", label=f"{r.variant.name} ({len(err)}/{n} answered)", linestyle=_style(i))
    for t in THRESHOLDS_KM:
        ax.axvline(t, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 100)
    ax.set_xlabel("error (km, log scale); dotted lines: 1 / 25 / 200 / 750 / 2500 km")
    ax.set_ylabel("photos with error ≤ x (%, all photos)")
    ax.set_title("Cumulative distribution of the geolocation error")
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax)
    return True


def _group_label(settings_text: str, members: Sequence[VariantResult]) -> str:
    """The [[variant]] name its members share (e.g. "no-rerank"), else what they set."""
    rows = {m.variant.row for m in members}
    if len(rows) == 1 and (row := rows.pop()):
        rest = {k: v for k, v in members[0].variant.grid.items() if k != "corrupt_prior"}
        return f"{row}, {_settings_text(rest)}" if rest else row
    return settings_text


def _style(i: int) -> str:
    """Solid for the first ten lines (one colour each), then dashed, dotted: colours repeat after ten."""
    return ("-", "--", ":", "-.")[(i // 10) % 4]


def plot_accuracy_vs_corruption(fig: Any, results: Sequence[VariantResult]) -> bool:
    """One line per group of variants equal in everything but the corruption rate."""
    rates = {r.variant.spec.corrupt_prior for r in results}
    if len(rates) < 2:
        return False
    groups: dict[str, list[VariantResult]] = {}
    for r in results:
        rest = {k: v for k, v in r.variant.settings.items() if k != "corrupt_prior"}
        groups.setdefault(_settings_text(rest), []).append(r)
    groups = {_group_label(key, members): members for key, members in groups.items()}
    axes = fig.subplots(1, len(CORRUPTION_THRESHOLDS), sharey=False)
    for ax, key in zip(axes, CORRUPTION_THRESHOLDS, strict=True):
        for i, (label, members) in enumerate(groups.items()):
            members = sorted(members, key=lambda r: r.variant.spec.corrupt_prior)
            ax.plot(
                [100 * m.variant.spec.corrupt_prior for m in members],
                [m.summary.accuracy.get(key, np.nan) for m in members],
                marker="o",
                label=label,
                linestyle=_style(i),
            )
        ax.set_title(f"within {key} km ({THRESHOLD_NAMES[key]})")
        ax.set_xlabel("priors corrupted (%)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("photos within threshold (%)")
    fig.suptitle("Robustness: accuracy vs rate of corrupted VLM priors")
    _legend(axes[-1])
    fig.tight_layout()
    return True


PLOTS: dict[str, Callable[[Any, Sequence[VariantResult]], bool]] = {
    "accuracy_vs_threshold.png": plot_accuracy_vs_threshold,
    "error_cdf.png": plot_error_cdf,
    "accuracy_vs_corruption.png": plot_accuracy_vs_corruption,
}


def plot_reliability(fig: Any, results: Sequence[VariantResult]) -> bool:
    """Predicted vs observed P(within 25 km), each photographer judged by a profile fitted on the
    others (``RunSummary.calibration``); on the diagonal is calibrated. False when no row has one."""
    rows = [r for r in results if r.summary.calibration is not None and r.summary.calibration.reliability_25]
    if not rows:
        return False
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="calibrated")
    for i, r in enumerate(rows):
        c = r.summary.calibration
        bins = c.reliability_25
        ax.plot([b.predicted for b in bins], [b.observed for b in bins], marker="o", linestyle=_style(i),
                label=f"{r.variant.name} (ECE {c.ece['25']:.3f}; 90% radius covers {100 * c.coverage:.1f}%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("stated P(within 25 km), after the profile")
    ax.set_ylabel("share of photos within 25 km")
    ax.set_title("Reliability of the answers' probabilities (leave-one-photographer-out)")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    return True


PLOTS["reliability.png"] = plot_reliability
