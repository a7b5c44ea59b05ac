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
import fcntl
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from geoguide.agent.backends.errors import ModelServiceError
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext, SerialDescriptor
from geoguide.agent.graph import locate
from geoguide.core import atomic
from geoguide.core.errors import GeoguideError
from geoguide.core.pool import bounded_map
from geoguide.core.progress import Progress
from geoguide.core.version import provenance
from geoguide.eval.corruption import CorruptedPriorBackend, CorruptionSpec
from geoguide.eval.records import (
    PREDICTIONS,
    SUMMARY_JSON,
    SUMMARY_MD,
    Coverage,
    RunRecord,
    RunSummary,
    failed_record,
    load_records,
    now_utc,
    record_from_prediction,
    write_summary,
)
from geoguide.indices.photosets import LoadReport, Sample
from geoguide.indices.store import ReferenceIndex

log = logging.getLogger(__name__)

RUN_JSON, LOCK = "run.json", ".lock"
ABORT_AFTER = 10  # the first this-many photos of a session all failing = a setup problem, not bad photos
MAX_PHOTO_ATTEMPTS = 3  # a photo failing this often (over resumes) is a final, recorded miss
MAX_SERVICE_FAILURES = 3  # photos in a row whose model could not be used: stop the run
PACKAGES = ("geoguide", "torch", "faiss-cpu", "numpy", "langgraph", "openai")


class EvalError(GeoguideError, RuntimeError):
    """A run that cannot start or go on (another run in the directory, every photo failing)."""


class RunMismatchError(EvalError, ValueError):
    """The output directory holds a different run."""


@contextlib.contextmanager
def _appender(path: Path) -> Iterator[Callable[[RunRecord], None]]:
    """``write(record)``: one line, under a lock, fsynced, so a kill loses nothing written. Unbuffered
    (``os.write``), so a short write on a full disk is cut back to the last whole line and is a
    ``DiskFull`` naming the file, not a torn record or a second error when the file closes."""
    lock = threading.Lock()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:

        def write(rec: RunRecord) -> None:
            data = (rec.model_dump_json() + "\n").encode("utf-8")
            with lock:
                end = os.lseek(fd, 0, os.SEEK_END)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError as e:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, end)
                    if (full := atomic.space_error(e, path, len(data))) is not None:
                        raise full from None
                    raise

        yield write
    finally:
        os.close(fd)


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


# -------------------------------------------------------------------------------- provenance


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
    labels_sha256: str | None = Field(None, description="the labels file's content: an edit between resumes is refused")
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
        # Settings a run predates count as unchanged at their default; a run from before labels were
        # hashed has nothing to compare, so it resumes (and records the hash from now on).
        dataset = self.identity.get("dataset") if isinstance(self.identity.get("dataset"), dict) else {}
        self.defaults = {"agent": AgentConfig().model_dump(mode="json"),
                         "dataset": {"labels_sha256": dataset.get("labels_sha256")}}
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
        if "dataset.labels_sha256" in differs:
            raise RunMismatchError(
                f"{self.out}: the labels file changed since this run started (its content hash differs), so its "
                "records hold the old truth; refused rather than mixing the two: use another --out, or remove "
                "that directory to start over"
            )
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
                "git_commit": provenance().commit,
                "geoguide": provenance().model_dump(),
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
                "started_utc": now_utc(),
                "finished_utc": None,
                "limit": limit,
                "workers": workers,
                "n_todo": len(todo),
                "n_skipped": len(chosen) - len(todo),
            }
            self._write_run_json(old, session, done)
            log.info("%s: %d photos to run, %d already done", self.out, len(todo), len(chosen) - len(todo))
            session["outcome"] = "finished"
            stopped: BaseException | None = None
            try:
                with _appender(self.out / PREDICTIONS) as write:
                    self._run_all(todo, evaluate, write, workers, progress, tries)
            except BaseException as exc:
                stopped = exc
                session["outcome"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else (
                    f"stopped: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
                )
                raise
            finally:
                try:
                    records = load_records(self.out / PREDICTIONS, repair=True)
                    mine = [records[s.image_id] for s in chosen if s.image_id in records]
                    coverage = self.coverage.model_copy(update={"not_run": len(chosen) - len(mine)})
                    if limit:  # rows dropped at load are not "the first N photos"
                        coverage = coverage.model_copy(update={"dropped": 0, "dropped_reasons": []})
                    summary = write_summary(self.out, mine, coverage)
                    session["finished_utc"] = now_utc()
                    self._write_run_json(old, session, records)
                except Exception as late:
                    if stopped is None:
                        raise
                    # The run already stopped (a full disk, most often, which then refuses the
                    # summary too): its own error is the one to report; the records are whole.
                    log.warning("%s: the summary was not written: %s", self.out, late)
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
    for result in bounded_map(evaluate, it, workers, name="eval", salvage=finish):
        finish(result)


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
