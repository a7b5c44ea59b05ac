"""What a match means on this map: P(the best match lies within 1 / 25 / 200 / 750 / 2500 km of
the truth), learned from the references alone.

Why: a raw cosine similarity means nothing across descriptors (effnet-gem's best matches sit at
0.48-0.71, a strong retriever's at 0.09-0.58 or 0.81-0.92 for the same quality), so no fixed
threshold can say when retrieval should be believed. Each index learns its own mapping instead.

How: leave-one-photographer-out self-retrieval over a sample of the references (default 5,000,
at most ``MAX_SAMPLE``): each sampled reference is a query against the whole map with its own
photographer's photos excluded (exactly as ``eval --exclude-same-author`` scores a benchmark), and
its evidence is recorded: the best match's similarity, its margin over the second, and the share
of the top ``k`` that agree with the best within 25 km. For each distance a logistic model on the
standardised evidence gives the probability; standardising makes it exactly invariant to an
affine change of the similarity scale (a component shared by every vector, a temperature), and
the probabilities are made monotone across distances. No query label is used. A photographer-
disjoint 30% of the sample is held out to measure the reliability table (expected calibration
error per distance) before the final fit uses all of it.

Cost: per sampled reference a whole-map search and a search of its country (0.6 s for the shared
split's 1,630). Estimated from ``benchmarks/scale.py``'s search times (not measured end to end):
at 1M x 256 fp16 a whole-map search takes 57 ms, so ~5 min for 5,000 samples (~2 min with pq:64);
at 5M fp16 ~27 min. ``geoguide index add`` / ``compact`` therefore keep the fit unless the map
changed by more than a tenth.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

from geoguide.geo.geometry import haversine_km

if TYPE_CHECKING:
    from geoguide.indices.store import ReferenceIndex

log = logging.getLogger(__name__)

THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)
FEATURES = ("best_similarity", "margin", "agreement")
DEFAULT_SAMPLE = 5_000
MAX_SAMPLE = 20_000
DEFAULT_K = 10
AGREE_KM = 25.0  # a neighbour agrees with the best match when this close to it
HOLDOUT = 0.3  # share of photographers held out to measure the reliability table
BINS = 10
MIN_SAMPLE = 20
L2 = 1e-3  # ridge on the standardised coefficients: keeps a separable sample finite


class ReliabilityBin(BaseModel):
    lo: float
    hi: float
    n: int
    predicted: float = Field(description="mean predicted probability in the bin")
    observed: float = Field(description="share of the bin's queries whose best match was that close")


class ThresholdModel(BaseModel):
    km: float
    coef: list[float] = Field(description="intercept, then one weight per standardised feature")
    base_rate: float = Field(description="share of the sample whose best match was within km")
    ece: float = Field(description="expected calibration error on the held-out photographers")
    reliability: list[ReliabilityBin]


Scope = Literal["map", "area"]
SCOPES: dict[str, str] = {
    "map": "a search of the whole map",
    "area": "a search restricted to the truth's country (what the agent does once the VLM names it)",
}


class ScopeModels(BaseModel):
    """The models for one kind of search (``SCOPES``): evidence is read the same way, but a search
    of one country ranks other matches than a search of the whole map (its neighbours agree more)."""

    scope: Scope
    n_sample: int
    mean: list[float]
    std: list[float]
    lo: list[float] = Field(description="smallest evidence seen per feature: queries are clipped to the sample's "
                            "range, so a model never extrapolates (a lone agreeing neighbour on a useless map "
                            "once read as P = 1)")
    hi: list[float]
    models: list[ThresholdModel]

    def predict(self, evidence: np.ndarray) -> np.ndarray:
        """(n, thresholds) probabilities, non-decreasing along the distances."""
        ev = np.clip(np.asarray(evidence, dtype=np.float64), self.lo, self.hi)
        z = (ev - np.array(self.mean)) / np.array(self.std)
        x = np.hstack([np.ones((len(z), 1)), z])
        p = np.column_stack([sigmoid(x @ np.array(m.coef)) for m in self.models])
        return np.maximum.accumulate(p, axis=1)


class MapCalibration(BaseModel):
    """A fitted calibration, stored in the index as ``calibration-<hash>.json``."""

    version: Literal[2] = 2
    descriptor: str
    n_references: int
    k: int
    features: list[str] = Field(default_factory=lambda: list(FEATURES))
    scopes: list[ScopeModels] = Field(description="'map' always; 'area' when the index has country submaps")
    seconds: float
    created_utc: str

    @property
    def n_sample(self) -> int:
        return self.scopes[0].n_sample

    @property
    def best_similarity_sd(self) -> float:
        """The spread of the map's best-match similarities: a scale-free unit of similarity."""
        return self.scopes[0].std[0]

    def of(self, scope: Scope = "map") -> ScopeModels:
        """The models of ``scope`` (the whole map's when the index has no area models)."""
        return next((s for s in self.scopes if s.scope == scope), self.scopes[0])

    def probabilities(self, evidence: np.ndarray, scope: Scope = "map") -> dict[str, float]:
        """P(within X km) for one query's evidence row (``evidence_of``), keyed ``"1"``, ``"25"``, ..."""
        m = self.of(scope)
        p = m.predict(np.asarray(evidence, dtype=np.float64)[None, :])[0]
        return {f"{t.km:g}": round(float(x), 4) for t, x in zip(m.models, p, strict=True)}

    def predict(self, evidence: np.ndarray, scope: Scope = "map") -> np.ndarray:
        return self.of(scope).predict(evidence)

    def table(self) -> list[str]:
        """The reliability table, for ``geoguide index info``."""
        lines = [f"calibration: {self.n_sample} of {self.n_references} references, leave-one-photographer-out "
                 f"(k={self.k}, {self.seconds:.1f} s); held-out expected calibration error per distance:"]
        for s in self.scopes:
            lines.append(f"  {s.scope} ({SCOPES[s.scope]}): "
                         + "  ".join(f"{m.km:g} km: base {m.base_rate:.3f}, ECE {m.ece:.3f}" for m in s.models))
            for m in s.models:
                cells = " ".join(f"{b.predicted:.2f}->{b.observed:.2f}({b.n})" for b in m.reliability)
                lines.append(f"    P(<= {m.km:g} km) predicted->observed(n): {cells}")
        return lines


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def evidence_of(similarities: Sequence[float], lats: Sequence[float], lons: Sequence[float],
                k: int = DEFAULT_K) -> np.ndarray:
    """One query's evidence from its ranked matches (best first): best similarity, margin over the
    second, and the share of the top ``k`` within ``AGREE_KM`` of the best."""
    sims = np.asarray(similarities, dtype=np.float64)
    if not len(sims):
        raise ValueError("no matches: nothing to calibrate")
    margin = sims[0] - sims[1] if len(sims) > 1 else 0.0
    lat, lon = np.asarray(lats[:k], dtype=np.float64), np.asarray(lons[:k], dtype=np.float64)
    agree = float(np.mean(haversine_km(lat[0], lon[0], lat, lon) < AGREE_KM))
    return np.array([sims[0], margin, agree])


def fit_logistic(x: np.ndarray, y: np.ndarray, iters: int = 50) -> np.ndarray:
    """Ridge-regularised logistic regression by Newton's method (IRLS); ``x`` has the intercept column."""
    w = np.zeros(x.shape[1])
    ridge = L2 * len(y) * np.eye(x.shape[1])
    ridge[0, 0] = 0.0  # the intercept is not shrunk
    for _ in range(iters):
        p = sigmoid(x @ w)
        grad = x.T @ (p - y) + ridge @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def reliability(pred: np.ndarray, hit: np.ndarray, bins: int = BINS) -> tuple[list[ReliabilityBin], float]:
    """Equal-width bins of predicted probability: (table, expected calibration error)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(pred, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        p, o = float(pred[mask].mean()), float(hit[mask].mean())
        table.append(ReliabilityBin(lo=float(edges[b]), hi=float(edges[b + 1]), n=int(mask.sum()), predicted=round(p, 4),
                                    observed=round(o, 4)))
        ece += mask.sum() / len(pred) * abs(p - o)
    return table, round(float(ece), 4)


SelfRetrieval = tuple[np.ndarray, np.ndarray, np.ndarray]


def self_retrieval(index: ReferenceIndex, sample: int = DEFAULT_SAMPLE, k: int = DEFAULT_K,
                   seed: int = 0) -> dict[str, SelfRetrieval]:
    """Per scope: (evidence (n, 3), error of the best match in km (n,), photographer key (n,)) for a
    random sample of live references, each searched without its photographer against the whole
    map and (when the index has country submaps) against its own country."""
    from geoguide.indices.submaps import SubmapError

    sample = max(1, min(sample, MAX_SAMPLE))
    live = index.live_rows()
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(live, size=min(sample, len(live)), replace=False))
    vectors = index._read_rows(rows)
    everything = index.everything()
    countries = index.scheme_of("country")
    out: dict[str, tuple[list, list, list]] = {s: ([], [], []) for s in (("map", "area") if countries else ("map",))}
    for row, q in zip(rows.tolist(), vectors, strict=True):
        author = index.refs["author"][row].decode("utf-8")
        ref_id = index.refs["id"][row].decode("utf-8")
        areas = {"map": everything}
        if countries is not None:
            with contextlib.suppress(SubmapError):  # a reference in no country ("XX") has no area
                areas["area"] = index.resolve(countries.scheme.submap_id(index.refs["country"][row].decode("utf-8")))
        for scope, area in areas.items():
            found, sims = index.search(q, area, k, exclude_authors=frozenset({author} if author else ()),
                                       exclude_ids=frozenset({ref_id}))
            if len(found) == 0:
                continue
            lat, lon = index.refs["lat"][found], index.refs["lon"][found]
            ev, err, who = out[scope]
            ev.append(evidence_of(sims, lat, lon, k))
            err.append(float(haversine_km(lat[0], lon[0], index.refs["lat"][row], index.refs["lon"][row])))
            who.append(author or ref_id)
    return {s: (np.array(ev).reshape(-1, len(FEATURES)), np.array(err), np.array(who, dtype=object))
            for s, (ev, err, who) in out.items()}


def fit_calibration(index: ReferenceIndex, sample: int = DEFAULT_SAMPLE, k: int = DEFAULT_K,
                    seed: int = 0) -> MapCalibration:
    """Fit the map's calibration (see the module docstring)."""
    from geoguide.indices.writer import utc_now

    started = time.perf_counter()
    found = self_retrieval(index, sample, k, seed)
    scopes = [fit_models(*found["map"], scope="map")]
    if "area" in found and len(found["area"][0]) >= MIN_SAMPLE:
        scopes.append(fit_models(*found["area"], scope="area"))
    return MapCalibration(descriptor=index.manifest.descriptor.name, n_references=len(index), k=k, scopes=scopes,
                          seconds=round(time.perf_counter() - started, 2), created_utc=utc_now())


def fit_models(ev: np.ndarray, err: np.ndarray, who: np.ndarray, scope: Scope = "map") -> ScopeModels:
    """Standardisation and one logistic model per distance, from queries' evidence, the error of
    their best match (km) and their photographers (the held-out split is by photographer)."""
    if len(ev) < MIN_SAMPLE:
        raise ValueError(f"too few references to calibrate ({len(ev)} searched; need {MIN_SAMPLE})")
    mean = ev.mean(axis=0)
    std = np.where(ev.std(axis=0) > 1e-12, ev.std(axis=0), 1.0)
    z = np.hstack([np.ones((len(ev), 1)), (ev - mean) / std])
    held = np.array([int(hashlib.sha256(str(w).encode()).hexdigest()[:8], 16) % 1000 < HOLDOUT * 1000 for w in who])
    if held.all() or not held.any():
        held = np.arange(len(ev)) % 3 == 0  # one photographer: hold out every third query instead
    models = []
    for km in THRESHOLDS_KM:
        y = (err <= km).astype(np.float64)
        w_train = fit_logistic(z[~held], y[~held])
        table, ece = reliability(sigmoid(z[held] @ w_train), y[held])
        models.append(ThresholdModel(km=km, coef=fit_logistic(z, y).tolist(), base_rate=round(float(y.mean()), 4),
                                     ece=ece, reliability=table))
    return ScopeModels(scope=scope, n_sample=len(ev), mean=mean.tolist(), std=std.tolist(),
                       lo=ev.min(axis=0).tolist(), hi=ev.max(axis=0).tolist(), models=models)


# ---- stored in the index -------------------------------------------------------------------


def calibration_file(cal: MapCalibration) -> tuple[str, str]:
    """(file name, text): named by the fitted model (not its timing), so the same fit has the same
    name and a new fit never overwrites a listed file."""
    model = cal.model_dump_json(exclude={"seconds", "created_utc"})
    return f"calibration-{hashlib.sha256(model.encode()).hexdigest()[:12]}.json", cal.model_dump_json(indent=1) + "\n"


def store_calibration(root, cal: MapCalibration) -> str:
    """Write ``cal`` into the index at ``root`` and swap the manifest to list it (the caller holds
    the update lock). Killed before the swap, the old calibration stays listed and the new file is
    an unlisted leftover the next update removes; killed after, the old file is that leftover."""
    from pathlib import Path

    from geoguide.core import atomic
    from geoguide.indices.parts import read_manifest
    from geoguide.indices.writer import remove_stale, write_manifest

    root = Path(root)
    old = read_manifest(root)
    name, text = calibration_file(cal)
    if name == old.calibration:
        return name  # the same fit: nothing to change
    atomic.write_text(root / name, text)
    files = [rel for rel in old.files if rel != old.calibration] + [name]
    manifest = write_manifest(root, old.model_copy(update={"calibration": name}), files, reuse=old.files)
    remove_stale(root, set(old.files), set(manifest.files))
    return name


def calibrate_index(root, sample: int = DEFAULT_SAMPLE, k: int = DEFAULT_K, seed: int = 0) -> MapCalibration:
    """Fit the calibration of the index at ``root`` and store it (under the index's update lock)."""
    from pathlib import Path

    from geoguide.indices.store import ReferenceIndex
    from geoguide.indices.update import exclusive

    with exclusive(Path(root)):
        cal = fit_calibration(ReferenceIndex(root), sample=sample, k=k, seed=seed)
        store_calibration(root, cal)
    return cal


def load_calibration(index: ReferenceIndex) -> MapCalibration | None:
    """The calibration the index stores (read with the manifest's generation), or None."""
    name = index.manifest.calibration
    if not name:
        return None
    from pydantic import ValidationError

    try:
        return MapCalibration.model_validate_json((index.root / name).read_text())
    except ValidationError:
        log.warning("%s: its calibration is of an older format; recalibrating ('geoguide index calibrate' stores it)",
                    index.root)
        return None


def map_calibration(index: ReferenceIndex) -> MapCalibration:
    """The index's calibration; one without it (made before 0.2) is calibrated now, in memory, once
    per opened index, and says so (``geoguide index calibrate`` stores it)."""
    cached = index.__dict__.get("_map_calibration")
    if cached is None:
        cached = load_calibration(index)
        if cached is None:
            log.warning("%s has no calibration (made before geoguide 0.2): calibrating on first use from up to %d "
                        "references; 'geoguide index calibrate %s' stores it", index.root, DEFAULT_SAMPLE, index.root)
            cached = fit_calibration(index)
        index.__dict__["_map_calibration"] = cached
    return cached


def calibration_or_none(index: ReferenceIndex) -> MapCalibration | None:
    """``map_calibration``, or None for a map too small to calibrate (said once per opened index)."""
    if index.__dict__.get("_no_calibration"):
        return None
    try:
        return map_calibration(index)
    except ValueError as e:
        log.warning("%s cannot be calibrated (%s): retrieval is never trusted over the VLM here", index.root, e)
        index.__dict__["_no_calibration"] = True
        return None
