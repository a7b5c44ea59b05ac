"""The paper's experiments as one plan: a plan's ``[[descriptor]]`` tables cross every variant
with each descriptor (its own index), and the comparison adds the paper's layout.

arXiv 2507.17455 compares VPR methods and foundation models, each as retrieval only, the VLM
prior only, and the prior choosing a country or K-means (K = 100) submap with and without
re-ranking, sweeps K and corrupts the prior. ``eval/plans/paper.toml`` is that grid. Here:

- a descriptor runs only when it can: the registry knows it, and its weights are where it looks
  (``geoguide models``' check, or the plan's ``options.weights``) or its index already exists
  (the paper's rows reuse the index's stored descriptors for the queries, which are the
  references). Any other is listed as skipped with the reason, never silently dropped;
- a missing index is built first, from the plan's images and labels, with every submap scheme the
  plan's variants name (country and kmeans:25 ... kmeans:400 by default);
- ``paper_table`` writes one table per descriptor, rows in the plan's order, columns the paper's
  Street 1 km / City 25 km / Region 200 km / Country 750 km / Continent 2500 km; and
  ``plot_accuracy_vs_k`` draws accuracy against K for each descriptor, with and without re-ranking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from geoguide.core.availability import NO_WEIGHTS
from geoguide.core.errors import GeoguideError
from geoguide.eval.metrics import THRESHOLD_NAMES
from geoguide.eval.variants import VariantResult

PAPER_SUBMAPS = "country,kmeans:25,kmeans:50,kmeans:100,kmeans:200,kmeans:400"
COLUMNS = tuple((key, f"{name.title()} {key} km") for key, name in THRESHOLD_NAMES.items())  # Street 1 km, ...


class PlanDescriptor(BaseModel):
    """One ``[[descriptor]]`` of a plan: the variants run once per descriptor, on its index."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="registered descriptor name (geoguide models)")
    index: Path = Field(description="its index; built from the plan's images and labels when missing")
    options: dict[str, Any] = Field(default_factory=dict, description="descriptor options (weights=...) for the build")
    submaps: str = Field(PAPER_SUBMAPS, description="the schemes a missing index is built with")


class Skipped(BaseModel):
    descriptor: str
    reason: str


def unavailable(d: PlanDescriptor) -> str | None:
    """Why ``d`` cannot run here, or None."""
    from geoguide.indices.descriptors.registry import DESCRIPTORS

    if d.name not in DESCRIPTORS:
        return f"no descriptor {d.name!r} (known: {', '.join(DESCRIPTORS.names())})"
    if (d.index / "manifest.json").is_file():
        from geoguide.indices.store import ReferenceIndex

        try:
            built = ReferenceIndex(d.index).manifest.descriptor.name
        except (GeoguideError, OSError, ValueError) as e:
            return f"its index {d.index} cannot be opened ({e})"
        return None if built == d.name else f"its index {d.index} was built with {built!r}, not {d.name!r}"
    cls = DESCRIPTORS.get(d.name)
    try:
        if d.options.get("weights") is not None and hasattr(cls, "resolve"):
            cls.resolve(d.options["weights"])
            return None
        found = cls.availability() if hasattr(cls, "availability") else NO_WEIGHTS
    except GeoguideError as e:
        return str(e)
    if found.runs_here:
        return None
    return f"{found.detail}; {found.how_to_get}" if found.how_to_get else found.detail


def ensure_index(d: PlanDescriptor, images: Path | None, labels: Path | None) -> None:
    """Build ``d``'s index when it does not exist (resumable, like ``geoguide index build``)."""
    if (d.index / "manifest.json").is_file():
        return
    if images is None or labels is None:
        raise GeoguideError(f"{d.index} does not exist and the plan's [base] names no images and labels to build it")
    from geoguide.indices.build import BuildConfig, build_index, validate_build_config
    from geoguide.indices.manifest import SourceInfo
    from geoguide.indices.photosets import load_dataset

    config = BuildConfig(descriptor=d.name, descriptor_conf=d.options, submaps=d.submaps)
    validate_build_config(config)
    data = load_dataset("csv", labels=labels, images=images, require_images=True)
    manifest = build_index(data.samples, d.index, config, SourceInfo.from_report(data.report, labels, images),
                           progress=f"index {d.name}")
    if manifest.calibration is None:  # as `geoguide index build`: what a match means on this map, stored once
        from geoguide.indices.calibration import calibrate_index

        with contextlib.suppress(ValueError):  # a map too small for it is calibrated in memory on use, saying so
            calibrate_index(d.index)


def variant_k(result: VariantResult) -> int | None:
    """K of a variant that searches K-means submaps (``scheme = "kmeans-K"``), else None."""
    from geoguide.indices.submaps.kmeans import KMeansScheme
    from geoguide.indices.submaps.registry import scheme_of_prefix

    named = result.variant.spec.agent_config().scheme
    try:
        scheme = scheme_of_prefix(named)
    except ValueError:  # e.g. kmeans-x
        return None
    # "kmeans" alone searches whichever K the map holds: no K to plot against.
    return scheme.k if isinstance(scheme, KMeansScheme) and scheme.prefix == named else None


def paper_table(results: Sequence[VariantResult], skipped: Sequence[Skipped]) -> str:
    """Markdown: per descriptor, one row per setting (the plan's order), the paper's columns."""
    if not any(r.variant.descriptor for r in results):
        return ""
    lines = ["## In the paper's layout\n",
             "% of photos within each distance (a missing answer is a miss); one block per descriptor.\n",
             "| descriptor | setting | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|" + "|".join([" --- "] * (2 + len(COLUMNS))) + "|"]
    for r in results:
        acc = r.summary.accuracy
        cells = [f"{acc[k]:.1f}" if k in acc else "–" for k, _ in COLUMNS]
        lines.append(f"| {r.variant.descriptor} | {r.variant.row or r.variant.name} | " + " | ".join(cells) + " |")
    for s in skipped:
        lines.append(f"| {s.descriptor} | skipped: {s.reason.replace('|', '/')} | " + " | ".join("–" for _ in COLUMNS)
                     + " |")
    return "\n".join(lines) + "\n"


def skipped_text(skipped: Sequence[Skipped]) -> str:
    if not skipped:
        return ""
    return "## Skipped descriptors\n\n" + "".join(f"- **{s.descriptor}**: {s.reason}\n" for s in skipped)
