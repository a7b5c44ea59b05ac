"""How fast the command line answers ``--help`` and usage errors (target: under 0.5 s).

Each command runs as a fresh process, ``--runs`` times; prints min / median / max wall seconds per
command and writes JSON with ``--json``. Nothing heavy (torch, faiss, openai, langgraph) may be
imported before a command needs it; ``tests/unit/test_cli_faults.py`` checks that deterministically,
this script measures what it buys.

    .venv/bin/python benchmarks/cli_startup.py --runs 15 --json benchmarks/out/cli_startup.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "geoguide --help": ["--help"],
    "geoguide locate --help": ["locate", "--help"],
    "geoguide eval --help": ["eval", "--help"],
    "geoguide (no command)": [],
}
# For information: a registry-checked option loads the registry (the policies import the agent).
INFO = {"geoguide locate --policy bogus": ["locate", "x.jpg", "--index", "i", "--policy", "bogus"]}
TARGET_S = 0.5


def time_once(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "geoguide", *args], cwd=REPO, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    time_once(["--help"])  # warm the file cache once
    results = {}
    print(f"{'command':<34} {'min s':>7} {'median s':>9} {'max s':>7}")
    for name, args in {**COMMANDS, **INFO}.items():
        times = [time_once(args) for _ in range(a.runs)]
        results[name] = {"min_s": min(times), "median_s": statistics.median(times), "max_s": max(times)}
        r = results[name]
        print(f"{name:<34} {r['min_s']:7.3f} {r['median_s']:9.3f} {r['max_s']:7.3f}")
    worst = max(results[name]["median_s"] for name in COMMANDS)
    print(f"worst median of the --help and no-command runs {worst:.3f} s; target < {TARGET_S} s: "
          f"{'holds' if worst < TARGET_S else 'MISSED'}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"runs": a.runs, "target_s": TARGET_S, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
