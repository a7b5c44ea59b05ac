"""Latency of a warm ``geoguide serve`` (target: ≤ 0.15 s p50 per photo with replay + rules).

Starts the real server as a subprocess on 127.0.0.1, posts ``--n`` photos of the shared split one
after another (each with its photographer excluded) over real HTTP, and prints the first request
and the warm p50 / p95, client side; ``--json PATH`` writes them. Concurrency (8 clients) is not
measured yet.

    .venv/bin/python benchmarks/serve.py --index runs/idx-effnet --n 20
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/im2gps3k")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    url = f"http://127.0.0.1:{a.port}"
    server = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--index", str(a.index), "--port", str(a.port),
                               "--vlm", f"replay:{a.data / 'prior_gemini-2.0-flash.csv'}"], cwd=REPO)
    try:
        started = time.perf_counter()
        while True:
            try:
                if httpx.get(f"{url}/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None or time.perf_counter() - started > 120:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.5)
        start_s = time.perf_counter() - started
        with open(a.data / "labels.csv", newline="") as f:
            rows = list(csv.DictReader(f))[: a.n + 1]
        times = []
        for r in rows:
            data = (a.data / "images" / r["IMG_ID"]).read_bytes()
            t = time.perf_counter()
            resp = httpx.post(f"{url}/api/locate", files={"image": (r["IMG_ID"], data, "image/jpeg")},
                              data={"exclude_author": r["AUTHOR"]}, timeout=120)
            times.append(time.perf_counter() - t)
            resp.raise_for_status()
    finally:
        server.terminate()
        server.wait()
    warm = sorted(times[1:])
    out = {"start_s": round(start_s, 2), "first_s": round(times[0], 3), "n": len(warm),
           "p50_s": round(statistics.median(warm), 3), "p95_s": round(warm[int(0.95 * (len(warm) - 1))], 3)}
    print(f"server ready in {out['start_s']} s; first request {out['first_s']} s; warm p50 {out['p50_s']} s, "
          f"p95 {out['p95_s']} s over {out['n']} photos (target p50 <= 0.15 s: "
          f"{'holds' if out['p50_s'] <= 0.15 else 'MISSED'})")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
