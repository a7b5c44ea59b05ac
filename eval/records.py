"""A run's records and summaries: one ``RunRecord`` per photo in ``predictions.jsonl``, and the
``RunSummary`` computed over the file (so a resumed run reports the whole set).

What the runner writes and what ``ablate``, the reports and the benchmarks read: kept apart from
the runner (which drives the agent) so reading a run never imports the agent's machinery.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from geoguide.agent.profile import CalibrationReport, Labelled, cross_fitted, group_of
from geoguide.agent.schemas import Usage
from geoguide.agent.state import Prediction
from geoguide.core import atomic
from geoguide.eval.corruption import CorruptionApplied
from geoguide.eval.metrics import Summary, distance_km, markdown_table, summarize
from geoguide.indices.photosets import Sample

log = logging.getLogger(__name__)

PREDICTIONS, SUMMARY_JSON, SUMMARY_MD = "predictions.jsonl", "summary.json", "summary.md"

# ------------------------------------------------------------------------------------- records


class TopRef(BaseModel):
    """A best candidate, kept so leakage (same photographer) can be audited from the file."""

    ref_id: str
    author: str
    lat: float
    lon: float
    similarity: float
    score: float | None = None


class RunRecord(BaseModel):
    """One photo's outcome. ``lat``/``lon``/``error_km`` None = no answer (a miss at every threshold)."""

    image_id: str
    author: str | None = None
    true_lat: float
    true_lon: float
    lat: float | None = None
    lon: float | None = None
    error_km: float | None = None
    source: str = "none"
    country: str | None = None
    confidence: float = 0.0
    p_within_km: dict[str, float] = Field(default_factory=dict, description="the answer's stated P(within X km)")
    probability_source: str | None = Field(None, description="map | profile | stated | default (agent.trust)")
    radius_km: float | None = Field(None, description="the profile's radius (--calibration), None without one")
    prior_lat: float | None = None
    prior_lon: float | None = None
    prior_country: str | None = None
    prior_error: str | None = None
    prior_failure: str | None = Field(None, description="why there was no prior: refused, invalid, no_answer, ...")
    service_failure: str | None = Field(None, description="the model could not be used (answer from retrieval)")
    prior_corrupted: bool = False
    corruption: CorruptionApplied | None = None
    trail: list[str] = Field(default_factory=list, description="submap ids searched, in order")
    top_refs: list[TopRef] = Field(default_factory=list)
    tool_calls: int = 0
    steps: int = 0
    usage: Usage = Field(default_factory=Usage)
    timings: dict[str, float] = Field(
        default_factory=dict, description="perceive_s, agent_s, total_s, wall_s"
    )
    prompts: dict[str, str] = Field(default_factory=dict, description="prompt id -> sha256")
    notes: list[str] = Field(default_factory=list)
    error: str | None = Field(None, description="why the photo failed (it counts as a miss)")
    attempts: int = Field(1, description="runs that recorded this photo (a failure is final after MAX_PHOTO_ATTEMPTS; "
                                         "a photo whose model could not be used is not recorded, so not counted)")
    finished_utc: str = ""

    @classmethod
    def of(cls, sample: Sample, **outcome: Any) -> RunRecord:
        """``sample``'s record (its id, photographer and truth, stamped now) with what happened to it."""
        return cls(image_id=sample.image_id, author=sample.author, true_lat=sample.lat, true_lon=sample.lon,
                   finished_utc=now_utc(), **outcome)


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def error_km_of(sample: Sample, lat: float | None, lon: float | None) -> float | None:
    if lat is None or lon is None:
        return None
    return float(distance_km(sample.lat, sample.lon, lat, lon))


def record_from_prediction(
    sample: Sample, pred: Prediction, wall_s: float, corruption: CorruptionApplied | None = None
) -> RunRecord:
    p = pred.prior
    top = p.top_country if p is not None else None
    return RunRecord.of(
        sample,
        lat=pred.lat,
        lon=pred.lon,
        error_km=error_km_of(sample, pred.lat, pred.lon),
        source=pred.source,
        country=pred.country,
        confidence=pred.confidence,
        p_within_km=pred.p_within_km,
        probability_source=pred.probability_source,
        radius_km=pred.radius_km,
        prior_lat=p.lat if p else None,
        prior_lon=p.lon if p else None,
        prior_country=top.label if top else None,
        prior_error=pred.prior_error,
        prior_failure=None if p is not None else (pred.prior_failure or "no_model"),
        service_failure=pred.service_failure,
        prior_corrupted=corruption is not None,
        corruption=corruption,
        trail=[s.submap_id for s in pred.trail],
        top_refs=[
            TopRef(
                ref_id=c.ref_id, author=c.author, lat=c.lat, lon=c.lon, similarity=c.similarity, score=c.score
            )
            for c in pred.top_candidates
        ],
        tool_calls=pred.tool_calls,
        steps=pred.steps,
        usage=pred.usage,
        timings={**pred.timings, "wall_s": round(wall_s, 4)},
        prompts=pred.prompts,
        notes=pred.notes,
    )


def failed_record(sample: Sample, exc: BaseException, wall_s: float, attempts: int = 1) -> RunRecord:
    msg = (str(exc).splitlines() or [""])[0][:500]
    return RunRecord.of(sample, error=f"{type(exc).__name__}: {msg}", attempts=attempts,
                        timings={"wall_s": round(wall_s, 4)})


# ---------------------------------------------------------------------------------- the file


def load_records(path: str | Path, repair: bool = False) -> dict[str, RunRecord]:
    """image_id -> its latest record. Unparsable lines (a torn last line from a kill) are skipped;
    with ``repair`` the file is rewritten atomically without them and without superseded lines
    (a retried photo's earlier failure), so it holds one line per photo and appends start clean."""
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    records: dict[str, RunRecord] = {}
    good: list[bytes] = []
    bad = 0
    for line in data.splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            if not line.endswith(b"\n"):
                raise ValueError("no newline: the write was cut off")
            rec = RunRecord.model_validate_json(line)
        except (ValueError, ValidationError):
            bad += 1
            continue
        records[rec.image_id] = rec
        good.append(line)
    if bad:
        log.warning("%s: dropped %d torn or unreadable line(s) (an interrupted run)", path, bad)
    if repair and (bad or len(good) != len(records)):
        atomic.write_bytes(path, b"".join(r.model_dump_json().encode() + b"\n" for r in records.values()))
    return records




# ----------------------------------------------------------------------------------- summary


class Latency(BaseModel):
    p50: float | None
    p95: float | None


class RunSummary(Summary):
    """``eval.metrics.Summary`` plus what the run cost: failures, latency, model calls, USD."""

    labels_read: int | None = Field(None, description="label rows in the file (kept + dropped at load)")
    evaluated: int = Field(0, description="photos that ran to an answer or to no answer")
    failed: int = Field(0, description="photos that raised (bad image, ...); counted as misses")
    dropped: int = Field(0, description="label rows dropped at load (missing image, bad coordinates...); misses")
    dropped_reasons: list[str] = Field(default_factory=list, description="the dropped rows and why (first ones)")
    not_run: int = Field(0, description="photos of the selection not run yet (an interrupted or stopped run)")
    no_prior: dict[str, int] = Field(default_factory=dict, description="photos without a prior, by reason")
    fallback: str = Field("none", description="'retrieval': photos whose model failed were answered by retrieval")
    answered_without_model: int = Field(0, description="photos whose model failed, answered by retrieval")
    prior_corrupted: int = 0
    latency_s: dict[str, Latency] = Field(
        default_factory=dict, description="agent_s / total_s over finished photos"
    )
    model_calls: int = 0
    model_calls_per_image: float = 0.0
    cache_hits: int = 0
    tool_calls_per_image: float = 0.0
    cost_usd_total: float = 0.0
    cost_usd_per_image: float = Field(
        0.0, description="as recorded when the calls were made (cache hits too)"
    )
    calibration: CalibrationReport | None = Field(
        None, description="how trustworthy the answers' probabilities and radii are, by photographer-fold "
        "cross-fitting on this run's labels (agent.profile); None with fewer than 100 answers carrying them")


def _latency(values: list[float]) -> Latency:
    if not values:
        return Latency(p50=None, p95=None)
    p50, p95 = np.percentile(values, [50, 95])
    return Latency(p50=round(float(p50), 4), p95=round(float(p95), 4))


class Coverage(BaseModel):
    """What a run was asked to cover beyond its records: label rows dropped at load (each a miss,
    so a loader cannot raise the accuracy by skipping hard rows), photos not run, the fallback."""

    labels_read: int | None = None
    dropped: int = 0
    dropped_reasons: list[str] = Field(default_factory=list)
    not_run: int = 0
    fallback: str = "none"


def summarize_records(
    records: Sequence[RunRecord], coverage: Coverage | None = None, **options: Any
) -> RunSummary:
    """All headline numbers of a run, independent of record order.

    Accuracies count every photo of the selection: dropped label rows and photos not run are misses.
    """
    cov = coverage or Coverage()
    recs = sorted(records, key=lambda r: r.image_id)
    missing = cov.dropped + cov.not_run
    errors = [r.error_km for r in recs] + [None] * missing
    lats, lons = [r.true_lat for r in recs], [r.true_lon for r in recs]
    if missing and options.get("by_continent", True) and "continents" not in options:
        from geoguide.eval.metrics import continents_for

        options["continents"] = [*continents_for(lats, lons), *["(not evaluated)"] * missing]
    base = summarize(errors, lats + [0.0] * missing, lons + [0.0] * missing, **options)
    n = max(len(recs), 1)
    ok = [r for r in recs if r.error is None]
    calls = sum(r.usage.model_calls for r in recs)
    cost = sum(r.usage.cost_usd for r in recs)
    no_prior: dict[str, int] = {}
    for r in ok:
        if r.prior_failure:
            no_prior[r.prior_failure] = no_prior.get(r.prior_failure, 0) + 1
    return RunSummary(
        **base.model_dump(),
        labels_read=cov.labels_read,
        evaluated=len(ok),
        dropped=cov.dropped,
        dropped_reasons=cov.dropped_reasons,
        not_run=cov.not_run,
        no_prior=dict(sorted(no_prior.items())),
        fallback=cov.fallback,
        answered_without_model=sum(r.service_failure is not None for r in ok),
        failed=len(recs) - len(ok),
        prior_corrupted=sum(r.prior_corrupted for r in recs),
        latency_s={k: _latency([r.timings[k] for r in ok if k in r.timings]) for k in ("agent_s", "total_s")},
        model_calls=calls,
        model_calls_per_image=calls / n,
        cache_hits=sum(r.usage.cache_hits for r in recs),
        tool_calls_per_image=sum(r.tool_calls for r in recs) / n,
        cost_usd_total=cost,
        cost_usd_per_image=cost / n,
        calibration=cross_fitted(labelled(ok)),
    )


def labelled(records: Sequence[RunRecord]) -> list[Labelled]:
    """The answered records that state probabilities, as a profile reads them."""
    return [Labelled(group=group_of(r.source, r.probability_source), p_within_km=r.p_within_km, error_km=r.error_km,
                     author=r.author or r.image_id)
            for r in records if r.error_km is not None and r.p_within_km]


def summary_markdown(name: str, s: RunSummary) -> str:
    lat = ", ".join(f"{k} p50 {v.p50} s / p95 {v.p95} s" for k, v in s.latency_s.items())
    read = f"{s.labels_read} label rows read; " if s.labels_read is not None else ""
    no_prior = ", ".join(f"{k} {v}" for k, v in s.no_prior.items()) or "none"
    lines = [
        f"# {name}\n",
        markdown_table({name: s}, ci=True),
        f"- photos: {read}{s.evaluated} evaluated, {s.failed} failed, {s.dropped} dropped at load, "
        f"{s.not_run} not run (failed, dropped and not run all count as misses)",
        f"- photos without a prior: {sum(s.no_prior.values())} ({no_prior})",
        f"- model fallback: {s.fallback}"
        + (f"; {s.answered_without_model} photos answered by retrieval alone because the model failed"
           if s.fallback != "none" else ""),
        f"- priors corrupted: {s.prior_corrupted}",
        f"- latency: {lat}",
        f"- model calls: {s.model_calls} ({s.model_calls_per_image:.2f}/photo, {s.cache_hits} from cache); "
        f"tool calls {s.tool_calls_per_image:.2f}/photo",
        f"- cost: ${s.cost_usd_total:.4f} total, ${s.cost_usd_per_image:.5f}/photo",
    ]
    if s.calibration is not None:
        c = s.calibration
        keys = " / ".join(c.ece)
        lines.append(f"- calibration ({c.n} answers, {c.folds} photographer folds, each judged by the others): ECE of P(within {keys} km) "
                     f"{' / '.join(f'{v:.3f}' for v in c.ece_raw.values())} as stated, "
                     f"{' / '.join(f'{v:.3f}' for v in c.ece.values())} after a profile fitted on the other folds; "
                     f"its {c.coverage_target:.0%} radius covers {c.coverage:.1%} (median {c.median_radius_km:g} km)")
    if s.dropped_reasons:
        lines += ["", "## Label rows dropped at load\n", *[f"- {r}" for r in s.dropped_reasons]]
    if s.per_continent:
        lines += ["", "## By continent of the ground truth\n", markdown_table(dict(s.per_continent))]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, records: Sequence[RunRecord], coverage: Coverage | None = None) -> RunSummary:
    s = summarize_records(records, coverage)
    atomic.write_json(out_dir / SUMMARY_JSON, s.model_dump(mode="json"))
    atomic.write_text(out_dir / SUMMARY_MD, summary_markdown(out_dir.name, s))
    return s
