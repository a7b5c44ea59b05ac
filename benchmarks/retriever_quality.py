"""Does the agent's trust travel with the descriptor? Retrievers of controlled quality and
similarity scale over the shared split, each made into an index through ``geoguide index import``
(``eval.synthetic``), each run with the replayed prior (Gemini 2.0 Flash), leave-one-photographer-out.

Per retriever: the prior alone, retrieval alone (the best whole-map match by another photographer),
the rules agent, the oracle (the nearest reference by another photographer), how many answers came
from retrieval, and calibration: the map's own held-out expected calibration error (ECE, from the
references alone), the ECE of P(best match within X km) on the photos as queries (their labels
used only to score), and the agent's answers judged as ``eval`` judges them: the ECE of their
stated P(within 25 km), the same after a profile fitted on the other photographers, and that
profile's 90% radius (its coverage and median; ``agent.profile``). The ``strong-floor`` retriever is ``strong`` plus one component every vector
shares (every cosine s becomes (s + 4) / 5): the decisions between retrieval and prior must not
change for 99% of photos.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/retriever_quality.py --json benchmarks/out/retriever_quality.json

Takes ~8 min on 2 cores (1,630 photos x 5 retrievers); ``--limit N`` runs the agent on the first N.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from geoguide.eval.synthetic import SyntheticRetriever, synthetic_vectors
from geoguide.geo.geometry import haversine_km
from geoguide.indices.calibration import THRESHOLDS_KM, calibrate_index, evidence_of, reliability
from geoguide.indices.importing import import_index
from geoguide.indices.photosets import load_dataset
from geoguide.indices.store import ReferenceIndex

STRONG = dict(quality_a=1.0, quality_b=1.0, weights=(0.35, 0.3, 0.2, 0.15))
RETRIEVERS = [
    SyntheticRetriever(name="useless", quality_a=0.01, quality_b=100),
    SyntheticRetriever(name="effnet-like", quality_a=0.2, quality_b=4),
    SyntheticRetriever(name="medium", quality_a=0.5, quality_b=1),
    SyntheticRetriever(name="strong", **STRONG),
    SyntheticRetriever(name="strong-floor", floor=2.0, **STRONG),
]
KEYS = [f"{km:g}" for km in THRESHOLDS_KM]


def pct(hits: np.ndarray) -> float:
    return round(100 * float(np.mean(hits)), 1)


def accuracy(err: np.ndarray) -> dict[str, float]:
    err = np.where(np.isnan(err), np.inf, err)
    return {k: pct(err <= km) for k, km in zip(KEYS, THRESHOLDS_KM, strict=True)}


def retrieval_alone(index: ReferenceIndex, ids: list[str], authors: list[str], lat, lon, k: int = 10):
    """Best whole-map match by another photographer: its error and its evidence, per photo."""
    everything = index.everything()
    errs, evidence = [], []
    for pid, author, la, lo in zip(ids, authors, lat, lon, strict=True):
        row = index.row_of(pid)
        q = np.asarray(index.descriptors[row], dtype=np.float32)
        found, sims = index.search(q, everything, k, exclude_authors=frozenset({author}), exclude_ids=frozenset({pid}))
        flat, flon = index.refs["lat"][found], index.refs["lon"][found]
        errs.append(float(haversine_km(la, lo, flat[0], flon[0])))
        evidence.append(evidence_of(sims, flat, flon, k))
    return np.array(errs), np.array(evidence)


def oracle(lat, lon, authors) -> np.ndarray:
    out = np.empty(len(lat))
    a = np.array(authors)
    for i in range(len(lat)):
        d = haversine_km(lat[i], lon[i], lat, lon)
        d[a == a[i]] = np.inf
        out[i] = d.min()
    return out


def run_agent(index_dir: Path, vectors: Path, data: Path, out: Path, policy: str, limit: int | None):
    from geoguide.eval.spec import RunSpec, execute

    spec = RunSpec(index=index_dir, images=data / "images", labels=data / "labels.csv", policy=policy,
                   vlm=f"replay:{data / 'prior_gemini-2.0-flash.csv'}", exclude_same_author=True, limit=limit,
                   query_vectors=vectors, cache=Path("none"))
    summary = execute(spec, out, restart=True)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return summary, {r["image_id"]: r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/im2gps3k")
    ap.add_argument("--limit", type=int, default=None, help="run the agent on the first N photos only")
    ap.add_argument("--only", nargs="*", help="retriever names to run")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="keep the indices and runs in this folder")
    args = ap.parse_args()
    labels = args.data / "labels.csv"
    if not labels.exists():
        raise SystemExit(f"no shared data at {args.data} (see ../shared/data/README.md)")
    samples = load_dataset("csv", labels=labels).samples
    ids = [s.image_id for s in samples]
    authors = [s.author or "" for s in samples]
    lat = np.array([s.lat for s in samples])
    lon = np.array([s.lon for s in samples])
    with open(labels, newline="") as f:
        assert len(list(csv.DictReader(f))) == len(samples), "the benchmark expects a labels file without bad rows"
    work = args.keep or Path(tempfile.mkdtemp(prefix="retriever_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    n_agent = args.limit or len(samples)
    oracle_err = oracle(lat, lon, authors)[:n_agent]
    results, runs = [], {}
    for spec in RETRIEVERS:
        if args.only and spec.name not in args.only:
            continue
        t0 = time.perf_counter()
        vec_file = work / f"{spec.name}.npy"
        np.save(vec_file, synthetic_vectors(lat, lon, spec))
        idx = work / f"idx-{spec.name}"
        import_index(vec_file, samples, idx, descriptor_name=spec.name, submaps="country,kmeans:100", overwrite=True)
        cal = calibrate_index(idx)
        index = ReferenceIndex(idx)
        r_err, r_ev = retrieval_alone(index, ids, authors, lat, lon)
        p = cal.predict(r_ev)
        query_ece = {k: reliability(p[:, j], (r_err <= km).astype(float))[1]
                     for j, (k, km) in enumerate(zip(KEYS, THRESHOLDS_KM, strict=True))}
        prior_sum, _ = run_agent(idx, vec_file, args.data, work / f"run-{spec.name}-prior", "prior", args.limit)
        rules_sum, rules = run_agent(idx, vec_file, args.data, work / f"run-{spec.name}-rules", "rules", args.limit)
        runs[spec.name] = rules
        with_prior = [r for r in rules.values() if r.get("prior_lat") is not None]
        best = r_ev[:, 0]
        row = {
            "retriever": spec.name, "spec": spec.model_dump(),
            "best_cosine_p10_p50_p90": [round(float(x), 3) for x in np.percentile(best, [10, 50, 90])],
            "prior_alone": prior_sum.accuracy, "retrieval_alone": accuracy(r_err[:n_agent]),
            "rules_agent": rules_sum.accuracy, "oracle": accuracy(oracle_err),
            "answered_from_retrieval": sum(1 for r in with_prior if r["source"] != "prior"),
            "photos_with_prior": len(with_prior),
            "map_ece": {f"{m.km:g}": m.ece for m in cal.of("map").models},
            "area_ece": {f"{m.km:g}": m.ece for m in cal.of("area").models}, "query_ece": query_ece,
            "answers": rules_sum.calibration.model_dump() if rules_sum.calibration else None,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        results.append(row)
        print(json.dumps({k: row[k] for k in row if k != "spec"}), flush=True)
    affine = None
    if "strong" in runs and "strong-floor" in runs:
        a, b = runs["strong"], runs["strong-floor"]
        same = [a[i]["source"] == b[i]["source"] for i in a if i in b]
        affine = {"photos": len(same), "same_decision_pct": pct(np.array(same))}
    print_table(results, affine)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"photos": len(samples), "agent_photos": n_agent, "results": results,
                                         "affine_invariance": affine}, indent=1) + "\n")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def answers(c: dict | None) -> str:
    if c is None:
        return "n/a"
    return (f"{c['ece_raw']['25']:.3f} / {c['ece']['25']:.3f}, {100 * c['coverage']:.1f}%, "
            f"{c['median_radius_km']:g} km")


def print_table(results: list[dict], affine: dict | None) -> None:
    def cells(d: dict) -> str:
        return " / ".join(f"{d[k]:.1f}" for k in KEYS)

    print("\n| retriever | best cosine p10/p50/p90 | prior alone | retrieval alone | rules agent | oracle | "
          "from retrieval | map ECE 1/25/200/750/2500 | query ECE | answers: ECE 25 km stated / profiled, "
          "90% radius coverage, median |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['retriever']} | {' / '.join(map(str, r['best_cosine_p10_p50_p90']))} | {cells(r['prior_alone'])} | "
              f"{cells(r['retrieval_alone'])} | {cells(r['rules_agent'])} | {cells(r['oracle'])} | "
              f"{r['answered_from_retrieval']} of {r['photos_with_prior']} | "
              f"{' / '.join(f'{v:.3f}' for v in r['map_ece'].values())} | "
              f"{' / '.join(f'{v:.3f}' for v in r['query_ece'].values())} | {answers(r['answers'])} |")
    if affine:
        print(f"\nstrong vs strong-floor (every cosine s -> (s + 4) / 5): the same decision (prior or retrieval) "
              f"for {affine['same_decision_pct']}% of {affine['photos']} photos")


if __name__ == "__main__":
    main()
