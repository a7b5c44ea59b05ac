"""What the real test server costs: llama.cpp (xllamacpp) serving SmolLM2-135M-Instruct.

Prints the server's start time (``Server()`` to a healthy ``/health``), the wall time of short
completions through the ``openai`` SDK (plain text, json_schema-constrained, with ``tools=``), the
decode speed llama.cpp reports, and the process's resident memory before the import, after it,
with the server up and after it stopped. Writes JSON with ``--json``. The numbers depend on the
machine's load: the load average is printed with them.

    .venv/bin/python benchmarks/llama_server.py --runs 5 --threads 1 --json benchmarks/out/llama_server.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from tests import llama_server as ls  # noqa: E402
from tests.unit.test_llama_server import ACTION_SCHEMA, ASK_SEARCH, SEARCH_TOOL  # noqa: E402

MB = 2**20


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def timed(runs: int, call) -> dict[str, float]:
    times, speeds = [], []
    for _ in range(runs):
        start = time.perf_counter()
        reply = call()
        times.append(time.perf_counter() - start)
        timings = (reply.model_extra or {}).get("timings") or {}
        if timings.get("predicted_per_second"):
            speeds.append(timings["predicted_per_second"])
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "completion_tokens": reply.usage.completion_tokens,
        "decode_tok_per_s": statistics.median(speeds) if speeds else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="completions per kind (after one warm-up)")
    ap.add_argument("--threads", type=int, default=None, help=f"decoding threads (default ${ls.THREADS_ENV} or 1)")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if (reason := ls.missing_reason()) is not None:
        print(reason)
        return 2

    memory = {"baseline_mb": rss_mb()}
    import openai  # noqa: F401 - counted with the client, not the server
    import xllamacpp  # noqa: F401

    memory["after_import_mb"] = rss_mb()
    load = os.getloadavg()
    server = ls.start_llama_server(threads=a.threads, n_ctx=a.n_ctx)
    memory["server_up_mb"] = rss_mb()
    client = server.client()
    kinds = {
        "plain, max_tokens=16": lambda: client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16,
            temperature=0,
        ),
        "json_schema action": lambda: client.chat.completions.create(
            model=server.model,
            messages=ASK_SEARCH,
            max_tokens=80,
            temperature=0,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "geoguide_action", "strict": True, "schema": ACTION_SCHEMA},
            },
        ),
        "tools=, tool_choice=required, max_tokens=16": lambda: client.chat.completions.create(
            model=server.model,
            messages=ASK_SEARCH,
            tools=[SEARCH_TOOL],
            tool_choice="required",
            max_tokens=16,
            temperature=0,
        ),
    }
    results = {}
    for name, call in kinds.items():
        call()  # warm-up: fills the slot's prompt cache as an agent's repeated system prompt would
        results[name] = timed(a.runs, call)
    memory["after_completions_mb"] = rss_mb()
    spec, start_s = server.spec, server.start_seconds
    server.stop()
    gc.collect()
    memory["after_stop_mb"] = rss_mb()

    threads = a.threads or int(os.environ.get(ls.THREADS_ENV) or 1)
    print(f"server {spec}  threads={threads} n_ctx={a.n_ctx}  cpus={os.cpu_count()}  "
          f"load average at start {load[0]:.2f}")
    print(f"start (Server() to healthy /health): {start_s:.2f} s")
    print(f"{'completion':<44} {'median s':>9} {'min s':>7} {'max s':>7} {'tokens':>7} {'tok/s':>7}")
    for name, r in results.items():
        print(f"{name:<44} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['max_s']:7.3f} "
              f"{r['completion_tokens']:7d} {r['decode_tok_per_s']:7.1f}")
    print("RSS MB: " + ", ".join(f"{k.removesuffix('_mb')} {v:.0f}" for k, v in memory.items())
          + f"  (server alone ~{memory['server_up_mb'] - memory['after_import_mb']:.0f})")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"spec": spec, "threads": threads, "n_ctx": a.n_ctx, "load_average": load,
                                      "start_s": start_s, "completions": results, "rss_mb": memory}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
