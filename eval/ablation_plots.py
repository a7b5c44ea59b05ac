"""The plots ``geoguide ablate`` draws beside its comparison: accuracy vs threshold, the error
CDF, accuracy vs the rate of corrupted priors, vs K (``eval.paper``) and the reliability of the
answers' probabilities. Each returns False (nothing written) when the plan has nothing for it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoguide.core import atomic
from geoguide.eval.metrics import THRESHOLD_NAMES, THRESHOLDS_KM, threshold_key
from geoguide.eval.paper import variant_k
from geoguide.eval.variants import VariantResult, settings_text

PANEL_THRESHOLDS = ("25", "200", "750")  # the panels of the corruption and K plots


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


def _frame(ax: Any, *, xlabel: str, ylabel: str, title: str, ylim: tuple[float, float] = (0, 100),
           xlim: tuple[float, float] | None = None) -> None:
    """What every single-panel plot ends with: its limits, labels, title, light grid and legend."""
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend(ax)


def _threshold_ticks(ax: Any) -> None:
    ax.set_xscale("log")
    ax.set_xticks(list(THRESHOLDS_KM))
    ax.set_xticklabels(
        [f"{threshold_key(t)} km\n{THRESHOLD_NAMES.get(threshold_key(t), '')}" for t in THRESHOLDS_KM]
    )
    ax.minorticks_off()


def plot_accuracy_vs_threshold(fig: Any, results: Sequence[VariantResult]) -> bool:
    ax = fig.add_subplot()
    for i, r in enumerate(results):
        keys = list(r.summary.accuracy)
        ax.plot(
            [float(k) for k in keys],
            [r.summary.accuracy[k] for k in keys],
            marker="o",
            label=f"{r.variant.name} (n={r.summary.n})",
            linestyle=_style(i),
        )
    _threshold_ticks(ax)
    _frame(ax, xlabel="distance threshold", ylabel="photos within threshold (%)",
           title="Accuracy vs distance threshold")
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
    _frame(ax, xlabel="error (km, log scale); dotted lines: 1 / 25 / 200 / 750 / 2500 km",
           ylabel="photos with error ≤ x (%, all photos)", title="Cumulative distribution of the geolocation error",
           xlim=(lo, hi))
    return True


def _group_label(key: str, members: Sequence[VariantResult]) -> str:
    """The [[variant]] name its members share (e.g. "no-rerank"), else what they set; with the
    [[descriptor]] first when the plan has them."""
    rows = {m.variant.row for m in members}
    label = key
    if len(rows) == 1 and (row := rows.pop()):
        rest = {k: v for k, v in members[0].variant.grid.items() if k != "corrupt_prior"}
        label = f"{row}, {settings_text(rest)}" if rest else row
    descriptor = members[0].variant.descriptor
    return f"{descriptor}: {label}" if descriptor else label


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
        groups.setdefault(f"{r.variant.descriptor}|{settings_text(rest)}", []).append(r)
    lines = {_group_label(key, members): [(100 * m.variant.spec.corrupt_prior, m) for m in members]
             for key, members in groups.items()}
    _panels(fig, lines, xlabel="priors corrupted (%)", title="Robustness: accuracy vs rate of corrupted VLM priors")
    return True


def _panels(fig: Any, lines: dict[str, list[tuple[float, VariantResult]]], *, xlabel: str, title: str,
            log_x: bool = False) -> None:
    """One panel per ``PANEL_THRESHOLDS`` distance, one line per label: its (x, run) points' accuracy."""
    axes = fig.subplots(1, len(PANEL_THRESHOLDS), sharey=False)
    xs = sorted({x for pts in lines.values() for x, _ in pts})
    for ax, key in zip(axes, PANEL_THRESHOLDS, strict=True):
        for i, (label, pts) in enumerate(lines.items()):
            pts = sorted(pts, key=lambda p: p[0])
            ax.plot([x for x, _ in pts], [r.summary.accuracy.get(key, np.nan) for _, r in pts], marker="o",
                    label=label, linestyle=_style(i))
        if log_x:  # K: ticks at the values swept
            ax.set_xscale("log")
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{x:g}" for x in xs])
            ax.minorticks_off()
        ax.set_title(f"within {key} km ({THRESHOLD_NAMES[key]})")
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("photos within threshold (%)")
    fig.suptitle(title)
    _legend(axes[-1])
    fig.tight_layout()


def _besides_k(r: VariantResult) -> dict[str, Any]:
    rest = {k: v for k, v in r.variant.settings.items() if k not in ("scheme", "rerank", "rerank.enabled")}
    return rest | ({"corrupt_prior": r.variant.spec.corrupt_prior} if r.variant.spec.corrupt_prior else {})


def plot_accuracy_vs_k(fig: Any, results: Sequence[VariantResult]) -> bool:
    """Accuracy at 25 / 200 / 750 km against K, one line per descriptor and re-ranking setting."""
    swept = [(k, r) for r in results if (k := variant_k(r)) is not None]
    rests = [_besides_k(r) for _, r in swept]
    common = set.intersection(*(set(x.items()) for x in rests)) if rests else set()
    lines: dict[str, list[tuple[int, VariantResult]]] = {}
    for (k, r), rest in zip(swept, rests, strict=True):
        # one line per everything but K: the descriptor, re-ranking and whatever else differs (a corrupted prior ...)
        differs = {key: v for key, v in rest.items() if (key, v) not in common}
        label = f"{r.variant.descriptor or 'index'}, {'re-ranked' if r.variant.spec.agent_config().rerank.enabled else 'no re-ranking'}"
        label += f" ({settings_text(differs)})" if differs else ""
        lines.setdefault(label, []).append((k, r))
    if not any(len({k for k, _ in pts}) >= 2 for pts in lines.values()):
        return False
    _panels(fig, dict(sorted(lines.items())), xlabel="K (K-means submaps)",
            title="Accuracy vs the number of K-means submaps", log_x=True)
    return True


PLOTS: dict[str, Callable[[Any, Sequence[VariantResult]], bool]] = {
    "accuracy_vs_threshold.png": plot_accuracy_vs_threshold,
    "error_cdf.png": plot_error_cdf,
    "accuracy_vs_corruption.png": plot_accuracy_vs_corruption,
    "accuracy_vs_k.png": plot_accuracy_vs_k,
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
    _frame(ax, xlabel="stated P(within 25 km), after the profile", ylabel="share of photos within 25 km",
           title="Reliability of the answers' probabilities (leave-one-photographer-out)", xlim=(0, 1), ylim=(0, 1))
    return True


PLOTS["reliability.png"] = plot_reliability
