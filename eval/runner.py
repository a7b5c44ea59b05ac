"""Benchmark runs: one JSON line per photo, resumable, reproducible, with cost and latency.

Layout of a run directory::

    predictions.jsonl   one ``RunRecord`` per photo, appended + fsynced as each finishes
    summary.json        ``RunSummary`` over the file (so a resumed run reports the whole set)
    summary.md          the same as a table
    run.json            what produced it: config, backend, index, dataset, prompts, versions, sessions

Re-running the same command skips photos already in the file; a failed photo is retried on the next
runs until it has failed ``MAX_PHOTO_ATTEMPTS`` times, then it stays a recorded miss with its reason.
The file is compacted at the start and end of every session, so it holds exactly one line per photo
however often a run is resumed. A killed run loses at most the photos in flight, and a torn last
line is dropped on the next start; Ctrl-C still writes the summary of what finished.

A model that cannot be used (unreachable, misconfigured, or exhausted without ``fallback=retrieval``)
is not a bad photo: such photos are not recorded (a later run retries them) and after
``MAX_SERVICE_FAILURES`` in a row the run stops with exit 3, instead of quietly evaluating
retrieval alone under the agent's name.
``run.json``'s ``config`` is the run's identity: resuming with a different one is refused, so two
different runs never mix in one file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import itertools
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from agent.backends.errors import ModelServiceError
from agent.config import AgentConfig
from agent.context import AgentContext, SerialDescriptor
from agent.graph import locate
from agent.schemas import Usage
from agent.state import Prediction
from eval.corruption import CorruptedPriorBackend, CorruptionApplied, CorruptionSpec
from eval.datasets import LoadReport, Sample
from eval.metrics import Summary, distance_km, markdown_table, summarize
from indices import atomic
from indices.errors import GeoguideError
from indices.geometry import haversine_km, latlon_to_unit
from indices.progress import Progress
from indices.store import ReferenceIndex

log = logging.getLogger(__name__)

PREDICTIONS, SUMMARY_JSON, SUMMARY_MD, RUN_JSON, LOCK = (
    "predictions.jsonl",
    "summary.json",
    "summary.md",
    "run.json",
    ".lock",
)
ABORT_AFTER = 10  # the first this-many photos of a session all failing = a setup problem, not bad photos
MAX_PHOTO_ATTEMPTS = 3  # a photo failing this often (over resumes) is a final, recorded miss
MAX_SERVICE_FAILURES = 3  # photos in a row whose model could not be used: stop the run
PACKAGES = ("geoguide", "torch", "faiss-cpu", "numpy", "langgraph", "openai")


class EvalError(GeoguideError, RuntimeError):
    """A run that cannot start or go on (another run in the directory, every photo failing)."""


class RunMismatchError(EvalError, ValueError):
    """The output directory holds a different run."""


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


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _error_km(sample: Sample, lat: float | None, lon: float | None) -> float | None:
    if lat is None or lon is None:
        return None
    return float(distance_km(sample.lat, sample.lon, lat, lon))


def record_from_prediction(
    sample: Sample, pred: Prediction, wall_s: float, corruption: CorruptionApplied | None = None
) -> RunRecord:
    p = pred.prior
    top = p.top_country if p is not None else None
    return RunRecord(
        image_id=sample.image_id,
        author=sample.author,
        true_lat=sample.lat,
        true_lon=sample.lon,
        lat=pred.lat,
        lon=pred.lon,
        error_km=_error_km(sample, pred.lat, pred.lon),
        source=pred.source,
        country=pred.country,
        confidence=pred.confidence,
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
        finished_utc=_now(),
    )


def failed_record(sample: Sample, exc: BaseException, wall_s: float, attempts: int = 1) -> RunRecord:
    msg = (str(exc).splitlines() or [""])[0][:500]
    return RunRecord(
        image_id=sample.image_id,
        author=sample.author,
        true_lat=sample.lat,
        true_lon=sample.lon,
        error=f"{type(exc).__name__}: {msg}",
        attempts=attempts,
        timings={"wall_s": round(wall_s, 4)},
        finished_utc=_now(),
    )


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


@contextlib.contextmanager
def _appender(path: Path) -> Iterator[Callable[[RunRecord], None]]:
    """``write(record)``: one line, under a lock, flushed and fsynced, so a kill loses nothing written."""
    lock = threading.Lock()
    with open(path, "a", encoding="utf-8") as f:

        def write(rec: RunRecord) -> None:
            line = rec.model_dump_json() + "\n"
            with lock:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

        yield write


@contextlib.contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """Refuse a second process writing the same run (the OS drops the lock if this one is killed)."""
    with open(out_dir / LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EvalError(
                f"another run is writing to {out_dir}; wait for it or use another --out"
            ) from None
        yield


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
        from eval.metrics import continents_for

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
    )


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


# -------------------------------------------------------------------------------- provenance


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def index_info(index: ReferenceIndex) -> dict[str, Any]:
    """What about the index changes results (its path does not: a moved index is the same index)."""
    m = index.manifest
    return {
        "descriptor": m.descriptor.model_dump(),
        "n_references": m.n_references,
        "faiss_index": m.faiss_index,
        "schemes": [s.spec for s in m.schemes],
    }


class DatasetRef(BaseModel):
    """Which photos: part of the identity (name, files); the load report is recorded beside it."""

    name: str
    labels: str | None = None
    images: str | None = None
    report: LoadReport | None = None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


_ABSENT = object()


def _diff(old: Any, new: Any, defaults: Any = _ABSENT, prefix: str = "") -> list[str]:
    """Dotted keys where two identities differ. A setting the old run predates counts as equal when
    the new run leaves it at its default (code gained an option; the run did not change)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            sub = defaults.get(k, _ABSENT) if isinstance(defaults, dict) else _ABSENT
            if k not in old and sub is not _ABSENT and new[k] == sub:
                continue
            out += _diff(old.get(k, _ABSENT), new.get(k, _ABSENT), sub, f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


# ------------------------------------------------------------------------------------ the run


class ServiceFailure(BaseModel):
    """A photo whose model could not be used: not a record (the photo is retried by a later run)."""

    image_id: str
    message: str


class _Run:
    """Shared by agent runs and the oracle: identity check, resume, append, summary, provenance."""

    def __init__(
        self,
        out_dir: str | Path,
        identity: dict[str, Any],
        extra: dict[str, Any],
        resume: bool,
        coverage: Coverage | None = None,
    ) -> None:
        self.out = Path(out_dir)
        self.identity = _jsonable(identity)
        self.defaults = {"agent": AgentConfig().model_dump(mode="json")}
        self.extra = extra
        self.resume = resume
        self.coverage = coverage or Coverage()

    def _check_or_reset(self) -> dict[str, Any]:
        run_path = self.out / RUN_JSON
        if not self.resume:
            for name in (PREDICTIONS, SUMMARY_JSON, SUMMARY_MD, RUN_JSON):
                (self.out / name).unlink(missing_ok=True)
            return {}
        if not run_path.exists():
            return {}
        old = json.loads(run_path.read_text())
        differs = _diff(old.get("config"), self.identity, self.defaults)
        if differs:
            raise RunMismatchError(
                f"{self.out} holds a different run (differs in: {', '.join(differs[:6])}); "
                "use another --out, or remove that directory to start over"
            )
        return old

    def _write_run_json(
        self, old: dict[str, Any], session: dict[str, Any], records: dict[str, RunRecord]
    ) -> None:
        prompts: dict[str, str] = {}
        for r in records.values():
            prompts.update(r.prompts)
        sessions = [*old.get("sessions", []), session]
        atomic.write_json(
            self.out / RUN_JSON,
            {
                "config": self.identity,
                **_jsonable(self.extra),
                "prompts": prompts,
                "git_commit": git_commit(),
                "versions": package_versions(),
                "started_utc": sessions[0]["started_utc"],
                "finished_utc": session.get("finished_utc"),
                "sessions": sessions,
            },
        )

    def execute(
        self,
        samples: Sequence[Sample],
        evaluate: Callable[[Sample], RunRecord | ServiceFailure],
        *,
        limit: int | None,
        workers: int,
        progress: bool | str,
    ) -> RunSummary:
        """Run what is left of ``samples[:limit]``; whatever ends it (done, Ctrl-C, a stop), the
        file is compacted and the summary and run.json describe what finished."""
        self.out.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.out):
            old = self._check_or_reset()
            chosen = list(samples[:limit] if limit else samples)
            done = load_records(self.out / PREDICTIONS, repair=True)
            todo = [s for s in chosen if _wants_run(done.get(s.image_id))]
            tries = {s.image_id: done[s.image_id].attempts + 1 if s.image_id in done else 1 for s in todo}
            session: dict[str, Any] = {
                "started_utc": _now(),
                "finished_utc": None,
                "limit": limit,
                "workers": workers,
                "n_todo": len(todo),
                "n_skipped": len(chosen) - len(todo),
            }
            self._write_run_json(old, session, done)
            log.info("%s: %d photos to run, %d already done", self.out, len(todo), len(chosen) - len(todo))
            session["outcome"] = "finished"
            try:
                with _appender(self.out / PREDICTIONS) as write:
                    self._run_all(todo, evaluate, write, workers, progress, tries)
            except BaseException as exc:
                session["outcome"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else (
                    f"stopped: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
                )
                raise
            finally:
                records = load_records(self.out / PREDICTIONS, repair=True)
                mine = [records[s.image_id] for s in chosen if s.image_id in records]
                coverage = self.coverage.model_copy(update={"not_run": len(chosen) - len(mine)})
                if limit:  # rows dropped at load are not "the first N photos"
                    coverage = coverage.model_copy(update={"dropped": 0, "dropped_reasons": []})
                summary = write_summary(self.out, mine, coverage)
                session["finished_utc"] = _now()
                self._write_run_json(old, session, records)
            return summary

    @staticmethod
    def _run_all(
        todo: list[Sample],
        evaluate: Callable[[Sample], RunRecord | ServiceFailure],
        write: Callable[[RunRecord], None],
        workers: int,
        progress: bool | str,
        tries: dict[str, int],
    ) -> None:
        bar = Progress(len(todo), "eval", "photos", progress)
        seen = [0, 0, 0, 0]  # finished, failed (this session), model failures in a row, model failures
        last_failure: list[str] = []

        def finish(result: RunRecord | ServiceFailure) -> None:
            if isinstance(result, ServiceFailure):
                seen[2] += 1
                seen[3] += 1
                last_failure[:] = [result.message]
                log.warning("%s: the model could not be used: %s", result.image_id, result.message)
                if seen[2] >= MAX_SERVICE_FAILURES:
                    raise ModelServiceError(
                        f"stopped after {seen[2]} photos in a row could not use the model: {result.message}"
                    )
                return
            seen[2] = 0
            rec = result.model_copy(update={"attempts": tries.get(result.image_id, 1)})
            write(rec)
            bar.update(1, failed=int(rec.error is not None))
            seen[0] += 1
            seen[1] += rec.error is not None
            if seen[0] == seen[1] == ABORT_AFTER:
                raise EvalError(
                    f"the first {ABORT_AFTER} photos all failed (last: {rec.error}); "
                    "fix the setup and re-run (nothing else is lost)"
                )

        try:
            it = iter(todo)
            # The first photo runs alone: it warms the lazy caches (geography, descriptor, prompts) that
            # parallel first calls would otherwise each build at once.
            for s in _take(it, 1 if workers > 1 else len(todo)):
                finish(evaluate(s))
            if workers > 1:
                _run_pool(it, evaluate, finish, workers)
            if seen[3]:
                raise ModelServiceError(
                    f"{seen[3]} photo(s) could not use the model and were not evaluated (last: {last_failure[0]}); "
                    "re-run the same command to retry them, or pass --fallback retrieval"
                )
        finally:
            bar.close()


def _run_pool(it: Iterator[Sample], evaluate: Callable, finish: Callable, workers: int) -> None:
    """Photos in flight on ``workers`` threads, each result finished (written) as it completes;
    on an interruption the photos already done are still written before it propagates."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool:
        running = {pool.submit(evaluate, s) for s in _take(it, 2 * workers)}
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    finish(f.result())
                running |= {pool.submit(evaluate, s) for s in _take(it, len(finished))}
        except BaseException:
            for f in running:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            for f in running:
                if f.done() and not f.cancelled() and f.exception() is None:
                    with contextlib.suppress(BaseException):
                        finish(f.result())
            raise


def _wants_run(rec: RunRecord | None) -> bool:
    """Not run yet, or failed fewer than ``MAX_PHOTO_ATTEMPTS`` times (then it stays a recorded miss)."""
    return rec is None or (rec.error is not None and rec.attempts < MAX_PHOTO_ATTEMPTS)


def _take(it: Iterator[Sample], n: int) -> list[Sample]:
    return list(itertools.islice(it, n))


def sample_context(
    base: AgentContext, sample: Sample, exclude_same_author: bool, descriptor: Any = None, backend: Any = None
) -> AgentContext:
    """The photo's own context (``AgentContext.for_photo``): its id always excluded, its
    photographer too under ``exclude_same_author``."""
    return base.for_photo(sample.image_id, sample.author if exclude_same_author else None, descriptor, backend)


def run_eval(
    samples: Sequence[Sample],
    ctx: AgentContext,
    out_dir: str | Path,
    *,
    exclude_same_author: bool = False,
    limit: int | None = None,
    workers: int = 1,
    prior_corruption: CorruptionSpec | None = None,
    resume: bool = True,
    dataset: DatasetRef | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool | str = False,
) -> RunSummary:
    """Run the agent on ``samples[:limit]`` into ``out_dir``; returns the summary of all of them.

    ``exclude_same_author`` drops, per photo, references by its photographer and the photo itself
    (leave-one-photographer-out). ``workers`` > 1 overlaps remote model calls; descriptor
    extraction stays serial. ``extra`` is recorded in run.json but is not part of the identity.
    """
    backend = (
        ctx.backend if prior_corruption is None else CorruptedPriorBackend(ctx.backend, prior_corruption)
    )
    descriptor = SerialDescriptor(lambda: ctx.descriptor or ctx.index.descriptor())
    identity = {
        "kind": "agent",
        "agent": ctx.config.model_dump(mode="json"),
        "vlm": ctx.backend.spec,
        **_backend_params("vlm_params", ctx.backend),
        **({"planner": ctx.planner.spec} if ctx.planner is not None else {}),
        **(_backend_params("planner_params", ctx.planner) if ctx.planner is not None else {}),
        "index": index_info(ctx.index),
        "dataset": dataset.model_dump(exclude={"report"}) if dataset else None,
        "exclude_same_author": exclude_same_author,
        "prior_corruption": prior_corruption.model_dump() if prior_corruption else None,
    }
    info = {
        "index_path": str(ctx.index.root.resolve()),
        "dataset_report": dataset.report.model_dump() if dataset and dataset.report else None,
        **(extra or {}),
    }

    def evaluate(sample: Sample) -> RunRecord | ServiceFailure:
        t = time.perf_counter()
        try:
            if sample.image_path is None:
                raise FileNotFoundError(f"no image file for {sample.image_id} (give the image folder)")
            one = sample_context(ctx, sample, exclude_same_author, descriptor, backend)
            pred = locate(one, sample.image_path, image_id=sample.image_id)
            if pred.service_failure and ctx.config.fallback == "none":
                raise ModelServiceError(pred.prior_error or "; ".join(pred.notes) or pred.service_failure)
        except ModelServiceError as exc:
            if isinstance(backend, CorruptedPriorBackend):
                backend.applied(sample.image_id)
            return ServiceFailure(image_id=sample.image_id, message=(str(exc).splitlines() or [""])[0][:500])
        except Exception as exc:  # noqa: BLE001 - one bad photo is a recorded miss, never the end of the run
            log.warning("%s failed: %s: %s", sample.image_id, type(exc).__name__, exc)
            if isinstance(backend, CorruptedPriorBackend):
                backend.applied(sample.image_id)
            return failed_record(sample, exc, time.perf_counter() - t)
        applied = backend.applied(sample.image_id) if isinstance(backend, CorruptedPriorBackend) else None
        return record_from_prediction(sample, pred, time.perf_counter() - t, applied)

    _warn_self_matches(samples[:limit] if limit else samples, ctx.index, exclude_same_author)
    return _Run(out_dir, identity, info, resume, coverage_of(dataset, ctx.config.fallback)).execute(
        samples, evaluate, limit=limit, workers=workers, progress=progress
    )


def _backend_params(key: str, backend: Any) -> dict[str, Any]:
    """A model backend's reply-changing options (temperature, reasoning effort, tool mode...), part
    of the run's identity so a resume with other options is refused; absent for replay/none."""
    params = getattr(backend, "params", None)
    return {key: params(True)} if callable(params) else {}


def coverage_of(dataset: DatasetRef | None, fallback: str = "none") -> Coverage:
    """A labels file's dropped rows are misses; photos without EXIF GPS have no truth to miss."""
    report = dataset.report if dataset else None
    if report is None or dataset.name == "exif":
        return Coverage(fallback=fallback)
    return Coverage(labels_read=report.n_ok + report.n_bad, dropped=report.n_bad,
                    dropped_reasons=list(report.problems), fallback=fallback)


def _warn_self_matches(samples: Sequence[Sample], index: ReferenceIndex, exclude_same_author: bool) -> None:
    """Queries that are also references: their own image is always excluded (``sample_context``),
    but other photos of the same spot by the same photographer are not unless the strict rule is on."""
    if exclude_same_author:
        return
    overlap = sum(index.row_of(s.image_id) is not None for s in samples)
    if overlap:
        log.warning(
            "%d of %d query photos are also references in the index: each query's own image is excluded, "
            "but its photographer's other photos are not; use --exclude-same-author for a leakage-free benchmark",
            overlap,
            len(samples),
        )


# ------------------------------------------------------------------------------------- oracle


class OracleMatch(BaseModel):
    image_id: str
    ref_id: str | None
    ref_author: str | None = None
    lat: float | None
    lon: float | None
    error_km: float | None


def oracle_matches(
    samples: Sequence[Sample], index: ReferenceIndex, exclude_same_author: bool = True, fetch: int = 32
) -> list[OracleMatch]:
    """Per query, the reference nearest by GPS (not by appearance) that is not the query itself and,
    with ``exclude_same_author``, not by its photographer: the ceiling for pure retrieval."""
    import faiss

    refs = index.refs
    ids = np.array([b.decode("utf-8") for b in refs["id"]], dtype=object)
    authors = np.array([b.decode("utf-8") for b in refs["author"]], dtype=object)
    coords = faiss.IndexFlatL2(3)
    coords.add(latlon_to_unit(refs["lat"], refs["lon"]).astype(np.float32))
    queries = latlon_to_unit([s.lat for s in samples], [s.lon for s in samples]).astype(np.float32)
    out: list[OracleMatch | None] = [None] * len(samples)
    pending = np.arange(len(samples))
    k = min(fetch, coords.ntotal)
    while len(pending):
        _, rows = coords.search(queries[pending], k)
        missing = []
        for qi, row in zip(pending, rows, strict=True):
            s = samples[qi]
            ok = [
                r
                for r in row
                if r >= 0
                and ids[r] != s.image_id
                and not (exclude_same_author and s.author and authors[r] == s.author)
            ]
            if ok:  # float32 chords only shortlist: near-ties are settled by exact float64 distances
                exact = haversine_km(s.lat, s.lon, np.asarray(refs["lat"])[ok], np.asarray(refs["lon"])[ok])
                r = ok[int(np.argmin(exact))]
                la, lo = float(refs["lat"][r]), float(refs["lon"][r])
                out[qi] = OracleMatch(
                    image_id=s.image_id,
                    ref_id=ids[r],
                    ref_author=authors[r],
                    lat=la,
                    lon=lo,
                    error_km=_error_km(s, la, lo),
                )
            elif k >= coords.ntotal:
                out[qi] = OracleMatch(image_id=s.image_id, ref_id=None, lat=None, lon=None, error_km=None)
            else:
                missing.append(qi)
        pending, k = np.array(missing, dtype=np.int64), min(2 * k, coords.ntotal)
    return [m for m in out if m is not None]


def oracle_errors(
    samples: Sequence[Sample], index: ReferenceIndex, exclude_same_author: bool = True
) -> np.ndarray:
    """The oracle's error per sample (NaN where no admissible reference exists)."""
    return np.array(
        [
            np.nan if m.error_km is None else m.error_km
            for m in oracle_matches(samples, index, exclude_same_author)
        ]
    )


def run_oracle(
    samples: Sequence[Sample],
    index: ReferenceIndex,
    out_dir: str | Path,
    *,
    exclude_same_author: bool = True,
    limit: int | None = None,
    resume: bool = True,
    dataset: DatasetRef | None = None,
) -> RunSummary:
    """The oracle written as a run (same files), so it sits in the same tables as the agent."""
    chosen = list(samples[:limit] if limit else samples)
    matches = {m.image_id: m for m in oracle_matches(chosen, index, exclude_same_author)}
    identity = {
        "kind": "oracle",
        "index": index_info(index),
        "exclude_same_author": exclude_same_author,
        "dataset": dataset.model_dump(exclude={"report"}) if dataset else None,
    }

    def evaluate(s: Sample) -> RunRecord:
        m = matches[s.image_id]
        return RunRecord(
            image_id=s.image_id,
            author=s.author,
            true_lat=s.lat,
            true_lon=s.lon,
            lat=m.lat,
            lon=m.lon,
            error_km=m.error_km,
            source="oracle",
            trail=["global"],
            finished_utc=_now(),
            notes=[] if m.ref_id else ["no admissible reference"],
            top_refs=[]
            if m.ref_id is None or m.lat is None or m.lon is None
            else [TopRef(ref_id=m.ref_id, author=m.ref_author or "", lat=m.lat, lon=m.lon, similarity=1.0)],
        )

    info = {
        "index_path": str(index.root.resolve()),
        "dataset_report": dataset.report.model_dump() if dataset and dataset.report else None,
    }
    return _Run(out_dir, identity, info, resume, coverage_of(dataset)).execute(
        chosen, evaluate, limit=None, workers=1, progress=False
    )
