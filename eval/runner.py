"""Benchmark runs: one JSON line per photo, resumable, reproducible, with cost and latency.

Layout of a run directory::

    predictions.jsonl   one ``RunRecord`` per photo, appended + fsynced as each finishes
    summary.json        ``RunSummary`` over the file (so a resumed run reports the whole set)
    summary.md          the same as a table
    run.json            what produced it: config, backend, index, dataset, prompts, versions, sessions

Re-running the same command skips photos already in the file (failed ones are retried); a killed
run loses at most the photos in flight, and a torn last line is dropped on the next start.
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
from tqdm import tqdm

from agent.config import AgentConfig
from agent.context import AgentContext
from agent.graph import locate
from agent.schemas import Usage
from agent.state import Prediction
from eval.corruption import CorruptedPriorBackend, CorruptionApplied, CorruptionSpec
from eval.datasets import LoadReport, Sample
from eval.metrics import Summary, distance_km, markdown_table, summarize
from indices import atomic
from indices.errors import GeoguideError
from indices.geometry import haversine_km, latlon_to_unit
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


def failed_record(sample: Sample, exc: BaseException, wall_s: float) -> RunRecord:
    msg = (str(exc).splitlines() or [""])[0][:500]
    return RunRecord(
        image_id=sample.image_id,
        author=sample.author,
        true_lat=sample.lat,
        true_lon=sample.lon,
        error=f"{type(exc).__name__}: {msg}",
        timings={"wall_s": round(wall_s, 4)},
        finished_utc=_now(),
    )


# ---------------------------------------------------------------------------------- the file


def load_records(path: str | Path, repair: bool = False) -> dict[str, RunRecord]:
    """image_id -> its latest record. Unparsable lines (a torn last line from a kill) are skipped;
    with ``repair`` the file is rewritten atomically without them, so appends start clean."""
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
        if repair:
            atomic.write_bytes(path, b"".join(good))
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

    failed: int = Field(0, description="photos that raised (bad image, ...); counted as misses")
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


def summarize_records(records: Sequence[RunRecord], **options: Any) -> RunSummary:
    """All headline numbers of a run, independent of record order."""
    recs = sorted(records, key=lambda r: r.image_id)
    base = summarize(
        [r.error_km for r in recs], [r.true_lat for r in recs], [r.true_lon for r in recs], **options
    )
    n = max(len(recs), 1)
    ok = [r for r in recs if r.error is None]
    calls = sum(r.usage.model_calls for r in recs)
    cost = sum(r.usage.cost_usd for r in recs)
    return RunSummary(
        **base.model_dump(),
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
    lines = [
        f"# {name}\n",
        markdown_table({name: s}, ci=True),
        f"- failed photos (counted as misses): {s.failed}; priors corrupted: {s.prior_corrupted}",
        f"- latency: {lat}",
        f"- model calls: {s.model_calls} ({s.model_calls_per_image:.2f}/photo, {s.cache_hits} from cache); "
        f"tool calls {s.tool_calls_per_image:.2f}/photo",
        f"- cost: ${s.cost_usd_total:.4f} total, ${s.cost_usd_per_image:.5f}/photo",
    ]
    if s.per_continent:
        lines += ["", "## By continent of the ground truth\n", markdown_table(dict(s.per_continent))]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, records: Sequence[RunRecord]) -> RunSummary:
    s = summarize_records(records)
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


class _Run:
    """Shared by agent runs and the oracle: identity check, resume, append, summary, provenance."""

    def __init__(
        self, out_dir: str | Path, identity: dict[str, Any], extra: dict[str, Any], resume: bool
    ) -> None:
        self.out = Path(out_dir)
        self.identity = _jsonable(identity)
        self.defaults = {"agent": AgentConfig().model_dump(mode="json")}
        self.extra = extra
        self.resume = resume

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
        evaluate: Callable[[Sample], RunRecord],
        *,
        limit: int | None,
        workers: int,
        progress: bool,
    ) -> RunSummary:
        self.out.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.out):
            old = self._check_or_reset()
            chosen = list(samples[:limit] if limit else samples)
            done = load_records(self.out / PREDICTIONS, repair=True)
            todo = [s for s in chosen if s.image_id not in done or done[s.image_id].error is not None]
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
            with _appender(self.out / PREDICTIONS) as write:
                self._run_all(todo, evaluate, write, workers, progress)
            records = load_records(self.out / PREDICTIONS)
            mine = [records[s.image_id] for s in chosen if s.image_id in records]
            summary = write_summary(self.out, mine)
            session["finished_utc"] = _now()
            self._write_run_json(old, session, records)
            return summary

    @staticmethod
    def _run_all(
        todo: list[Sample],
        evaluate: Callable[[Sample], RunRecord],
        write: Callable[[RunRecord], None],
        workers: int,
        progress: bool,
    ) -> None:
        bar = tqdm(total=len(todo), disable=not progress, unit="photo", dynamic_ncols=True)
        seen = [0, 0]  # finished, failed (this session)

        def finish(rec: RunRecord) -> None:
            write(rec)
            bar.update(1)
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
            if workers <= 1:
                return
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool:
                running = {pool.submit(evaluate, s) for s in _take(it, 2 * workers)}
                try:
                    while running:
                        finished, running = wait(running, return_when=FIRST_COMPLETED)
                        for f in finished:
                            finish(f.result())
                        running |= {pool.submit(evaluate, s) for s in _take(it, len(finished))}
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        finally:
            bar.close()


def _take(it: Iterator[Sample], n: int) -> list[Sample]:
    return list(itertools.islice(it, n))


class _SerialDescriptor:
    """One descriptor shared by every photo's context, loaded on first use (a prior-only run never
    needs it) and extracting one batch at a time: loading it once matters (a CNN), and OpenCV/torch
    objects are not promised to be thread-safe."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load
        self._inner: Any = None
        self._lock = threading.Lock()

    def extract(self, images: list[Any]) -> np.ndarray:
        with self._lock:
            if self._inner is None:
                self._inner = self._load()
            return self._inner.extract(images)


def sample_context(
    base: AgentContext, sample: Sample, exclude_same_author: bool, descriptor: Any = None, backend: Any = None
) -> AgentContext:
    """A fresh context per photo on a copy of the config: threads never share mutable state."""
    cfg = base.config
    if exclude_same_author:
        authors = [*cfg.exclude_authors, *([sample.author] if sample.author else [])]
        cfg = cfg.model_copy(
            update={"exclude_authors": authors, "exclude_ids": [*cfg.exclude_ids, sample.image_id]}
        )
    return AgentContext(
        index=base.index,
        backend=backend or base.backend,
        config=cfg,
        descriptor=descriptor or base.descriptor,
    )


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
    progress: bool = False,
) -> RunSummary:
    """Run the agent on ``samples[:limit]`` into ``out_dir``; returns the summary of all of them.

    ``exclude_same_author`` drops, per photo, references by its photographer and the photo itself
    (leave-one-photographer-out). ``workers`` > 1 overlaps remote model calls; descriptor
    extraction stays serial. ``extra`` is recorded in run.json but is not part of the identity.
    """
    backend = (
        ctx.backend if prior_corruption is None else CorruptedPriorBackend(ctx.backend, prior_corruption)
    )
    descriptor = _SerialDescriptor(lambda: ctx.descriptor or ctx.index.descriptor())
    identity = {
        "kind": "agent",
        "agent": ctx.config.model_dump(mode="json"),
        "vlm": ctx.backend.spec,
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

    def evaluate(sample: Sample) -> RunRecord:
        t = time.perf_counter()
        try:
            if sample.image_path is None:
                raise FileNotFoundError(f"no image file for {sample.image_id} (give the image folder)")
            one = sample_context(ctx, sample, exclude_same_author, descriptor, backend)
            pred = locate(one, sample.image_path, image_id=sample.image_id)
        except Exception as exc:  # noqa: BLE001 - one bad photo is a recorded miss, never the end of the run
            log.warning("%s failed: %s: %s", sample.image_id, type(exc).__name__, exc)
            if isinstance(backend, CorruptedPriorBackend):
                backend.applied(sample.image_id)
            return failed_record(sample, exc, time.perf_counter() - t)
        applied = backend.applied(sample.image_id) if isinstance(backend, CorruptedPriorBackend) else None
        return record_from_prediction(sample, pred, time.perf_counter() - t, applied)

    return _Run(out_dir, identity, info, resume).execute(
        samples, evaluate, limit=limit, workers=workers, progress=progress
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
    return _Run(out_dir, identity, info, resume).execute(
        chosen, evaluate, limit=None, workers=1, progress=False
    )
