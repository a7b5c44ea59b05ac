"""What ``read_text`` gets from the shared split's photos: on how many it reads legible text, how
often its top country is the photo's true country (and how often the true country is among its
top three), split by whether the VLM gave a prior, plus the time per photo.

Every photo goes through the real tool (OCR, language, countries) with the OCR cache on, so this
script is also how the cache is filled once before the evaluations (a re-run reads the cache: a
killed run resumes where it stopped). An unreadable photo is counted and named, never fatal.

    nice -n 10 .venv/bin/python benchmarks/read_text.py --data ../shared/data/im2gps3k \
        --json benchmarks/out/read_text.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geoguide.core.images import ImageLoadError  # noqa: E402
from geoguide.geo import country_at  # noqa: E402
from geoguide.tools.base import ToolError  # noqa: E402
from geoguide.tools.read_text import read_text_file  # noqa: E402


def no_prior_ids(data: Path) -> set[str]:
    """Photos without a usable recorded prior (a missing row or success=False)."""
    path = data / "prior_gemini-2.0-flash.csv"
    if not path.exists():
        return set()
    ok = {r["IMG_ID"] for r in csv.DictReader(path.open()) if r.get("success") == "True"}
    return {r["IMG_ID"] for r in csv.DictReader((data / "labels.csv").open())} - ok


def summarize(rows: list[dict], subset: set[str] | None = None) -> dict:
    rows = [r for r in rows if subset is None or r["image"] in subset]
    legible = [r for r in rows if r["legible"]]
    top1 = sum(1 for r in legible if r["countries"][:1] == [r["truth"]])
    top3 = sum(1 for r in legible if r["truth"] in r["countries"][:3])
    return {"photos": len(rows), "with_text": sum(1 for r in rows if r["text"]), "legible": len(legible),
            "top1_country_right": top1, "top3_country_right": top3,
            "top1_precision": round(top1 / len(legible), 3) if legible else None}


def runs_table(runs: list[Path], data: Path) -> str:
    """Markdown: % within 1 / 25 / 200 / 750 / 2500 km of each eval run, on all photos, on those
    with a prior and on those without (a photo the run did not answer counts as a miss)."""
    from geoguide.eval.metrics import THRESHOLDS_KM, accuracy_at
    from geoguide.eval.records import PREDICTIONS, load_records

    ids = [r["IMG_ID"] for r in csv.DictReader((data / "labels.csv").open())]
    without = no_prior_ids(data)
    groups = {"all": ids, "with prior": [i for i in ids if i not in without], "no prior": [i for i in ids if i in without]}
    head = "| run | photos | " + " | ".join(f"{t:g} km" for t in THRESHOLDS_KM) + " |"
    lines = [head, "|" + " --- |" * (len(THRESHOLDS_KM) + 2)]
    for run in runs:
        records = load_records(run / PREDICTIONS)
        for name, group in groups.items():
            acc = accuracy_at([records[i].error_km if i in records else None for i in group])
            lines.append(f"| {run.name} | {name} ({len(group)}) | " + " | ".join(f"{v:.1f}" for v in acc.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/im2gps3k")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-prior-only", action="store_true", help="only the photos without a prior (what rules reads)")
    ap.add_argument("--index", type=Path, default=None, help="rank countries by this index's photos (as the agent does)")
    ap.add_argument("--runs", type=Path, nargs="+", help="instead: the accuracy table of these eval runs")
    args = ap.parse_args(argv)
    if not (args.data / "labels.csv").exists():
        raise SystemExit(f"no labels.csv in {args.data}: point --data at the shared split")
    if args.runs:
        print(runs_table(args.runs, args.data))
        return 0
    labels = list(csv.DictReader((args.data / "labels.csv").open()))[: args.limit]
    if args.no_prior_only:
        wanted = no_prior_ids(args.data)
        labels = [x for x in labels if x["IMG_ID"] in wanted]
    where = None
    if args.index:  # countries ranked by the map's photos, as the agent ranks them
        from geoguide.indices.store import ReferenceIndex
        from geoguide.tools.read_text import photos_per_country

        where = photos_per_country(ReferenceIndex(args.index))
    rows, bad, times = [], [], []
    for i, lab in enumerate(labels, 1):
        t = time.perf_counter()
        try:
            res = read_text_file(args.data / "images" / lab["IMG_ID"], where=where)
        except ImageLoadError as e:
            bad.append(f"{lab['IMG_ID']}: {e}")
            continue
        times.append(time.perf_counter() - t)
        if isinstance(res, ToolError):
            bad.append(f"{lab['IMG_ID']}: {res.error}")
            continue
        rows.append({"image": lab["IMG_ID"], "truth": country_at(float(lab["LAT"]), float(lab["LON"])),
                     "legible": res.legible, "text": res.text, "languages": [x.code for x in res.languages],
                     "countries": [c.iso2 for c in res.countries]})
        if i % 100 == 0:
            print(f"{i}/{len(labels)} photos, {sum(r['legible'] for r in rows)} with legible text", flush=True)
    times.sort()
    out = {"all": summarize(rows), "no_prior": summarize(rows, no_prior_ids(args.data)),
           "failed": bad, "seconds_p50": round(times[len(times) // 2], 3) if times else None,
           "legible_photos": [r for r in rows if r["legible"]]}
    print(json.dumps({k: v for k, v in out.items() if k != "legible_photos"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
