"""How fast the command line answers: ``--help`` and usage errors (target: under 0.5 s), a cold
``locate`` with the default descriptor (target: 2.5 s and 400 MB), and ``chat``'s first step.

Each command runs as a fresh process, ``--runs`` times; prints min / median / max wall seconds per
command (and the median peak RSS of the answering runs) and writes JSON with ``--json``. Nothing
heavy (torch, faiss, openai, langgraph) may be imported before a command needs it;
``tests/unit/test_cli_faults.py`` checks that deterministically, this script measures what it
buys. "Cold" is a new process with the derived cache made (``core.derived``: what the first run
after install, or ``make demo``, leaves) and the files in the page cache; ``--index`` is an index
of the shared split (``make demo`` builds one); without it the answering rows are skipped.

    .venv/bin/python benchmarks/cli_startup.py --runs 15 --index runs/idx-effnet --json benchmarks/out/cli_startup.json
"""

from __future__ import annotations

import argparse
import json
import os
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
LOCATE_TARGET_S, LOCATE_TARGET_MB = 2.5, 400
PHOTO = REPO.parent / "shared" / "data" / "im2gps3k" / "images" / "1008804117_ce4e6fef8a_1349_97522422@N00.jpg"


def run_once(args: list[str], until: str | None = None, check: bool = False) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one fresh process; with ``until``, the seconds until that
    text first appears on its output (the process is then stopped); ``check``: a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "geoguide", *args], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if until is not None and until in line:
            seen = time.perf_counter() - start
            proc.terminate()
            break
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = seen if seen is not None else time.perf_counter() - start
    if check and proc.returncode != 0:
        raise SystemExit(f"geoguide {' '.join(args)} failed with exit {proc.returncode}")
    return wall, usage.ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--index", type=Path, default=None, help="an index of the shared split (make demo builds one)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    run_once(["--help"])  # warm the file cache once
    results = {}
    print(f"{'command':<34} {'min s':>7} {'median s':>9} {'max s':>7} {'RSS MB':>7}")

    def report(name: str, runs: list[tuple[float, float]]) -> None:
        times, rss = [t for t, _ in runs], [m for _, m in runs]
        results[name] = {"min_s": min(times), "median_s": statistics.median(times), "max_s": max(times),
                         "median_rss_mb": statistics.median(rss)}
        r = results[name]
        print(f"{name:<34} {r['min_s']:7.3f} {r['median_s']:9.3f} {r['max_s']:7.3f} {r['median_rss_mb']:7.0f}")

    for name, args in {**COMMANDS, **INFO}.items():
        report(name, [run_once(args) for _ in range(a.runs)])
    worst = max(results[name]["median_s"] for name in COMMANDS)
    print(f"worst median of the --help and no-command runs {worst:.3f} s; target < {TARGET_S} s: "
          f"{'holds' if worst < TARGET_S else 'MISSED'}")
    if a.index is not None and PHOTO.is_file():
        locate = ["locate", str(PHOTO), "--index", str(a.index)]
        run_once(locate, check=True)  # makes the derived cache if this install has not yet
        report("geoguide locate (cold)", [run_once(locate, check=True) for _ in range(a.runs)])
        chat = ["chat", str(PHOTO), "--index", str(a.index)]
        report("geoguide chat (first step)", [run_once(chat, until="· perceive") for _ in range(a.runs)])
        r = results["geoguide locate (cold)"]
        holds = r["median_s"] <= LOCATE_TARGET_S and r["median_rss_mb"] <= LOCATE_TARGET_MB
        print(f"cold locate: median {r['median_s']:.2f} s, {r['median_rss_mb']:.0f} MB; target <= {LOCATE_TARGET_S} s "
              f"and <= {LOCATE_TARGET_MB} MB: {'holds' if holds else 'MISSED'}")
    else:
        print("locate / chat rows skipped: pass --index (an index of the shared split) with ../shared present")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"runs": a.runs, "target_s": TARGET_S, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
