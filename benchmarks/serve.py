"""Latency and throughput of a warm ``geoguide serve`` (targets: ≤ 0.15 s p50 server-side per
photo with replay + rules; 8 concurrent clients served without errors).

Starts the real server as a subprocess on 127.0.0.1 (a fresh state dir, the rate limit raised:
every client here shares one address) and posts photos of the shared split over real HTTP, each
with its photographer excluded:

1. ``--n`` photos one after another: the first request, then warm p50 / p95, client side and
   server side (the ``Server-Timing`` header: the time ``locate`` took, without HTTP);
2. ``--clients`` clients at once, each posting ``--per-client`` other photos: p50 / p95
   latency, throughput (photos/s), errors;
3. the same against ``serve --workers 2`` (a second server on the next port: two worker
   processes on one socket, sharing the state folder and the memory-mapped index): the
   throughput ratio of 2 workers to 1, measured in the same run, and each process's resident
   memory (Linux ``/proc``): the supervisor answers nothing, so it should hold far less than a worker.

``--state-url postgresql://...`` keeps every server's sessions in that database instead of the
state folder's SQLite file.

Prints all three; ``--json PATH`` writes them.

    .venv/bin/python benchmarks/serve.py --index runs/idx-effnet --n 20 --clients 8 --per-client 5
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def post(client: httpx.Client, url: str, data: Path, row: dict) -> tuple[float, float, int]:
    """(client seconds, server seconds, status) for one photo."""
    body = (data / "images" / row["IMG_ID"]).read_bytes()
    t = time.perf_counter()
    resp = client.post(f"{url}/api/locate", files={"image": (row["IMG_ID"], body, "image/jpeg")},
                       data={"exclude_author": row["AUTHOR"]}, timeout=120)
    took = time.perf_counter() - t
    timing = resp.headers.get("server-timing", "locate;dur=nan").split("dur=")[1]
    return took, float(timing) / 1000, resp.status_code


def rss_mb(pid: int) -> float | None:
    """A process's resident memory (``VmRSS``), None where ``/proc`` does not say."""
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None
    return round(int(line.split()[1]) / 1024, 1)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return round(v[round(q * (len(v) - 1))], 3)


def wait_ready(url: str, server: subprocess.Popen) -> float:
    started = time.perf_counter()
    while True:
        try:
            if httpx.get(f"{url}/api/health").status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            if server.poll() is not None or time.perf_counter() - started > 180:
                raise SystemExit("the server did not start") from None
            time.sleep(0.5)


def start_server(index: Path, data: Path, state: str, port: int, *extra: str) -> subprocess.Popen:
    """``geoguide serve`` on 127.0.0.1:``port`` with the split's replayed priors, the rate limit
    raised (every client here shares one address), ``extra`` options after; soak.py starts its
    server here too."""
    return subprocess.Popen([sys.executable, "-m", "geoguide", "serve", "--index", str(index), "--port", str(port),
                             "--vlm", f"replay:{data / 'prior_gemini-2.0-flash.csv'}", "--state-dir", state,
                             "--rate-limit", "1000000", *extra], cwd=REPO)


def concurrent(urls: list[str], data: Path, rows: list[dict], clients: int, per_client: int) -> dict:
    """``clients`` threads at once, client i posting to ``urls[i % len(urls)]``."""
    results: list[tuple[float, float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one_client(mine: list[dict], url: str) -> None:
        with httpx.Client() as c:
            for r in mine:
                try:
                    res = post(c, url, data, r)
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(f"{r['IMG_ID']}: {e!r}")
                    continue
                with lock:
                    results.append(res)

    chunks = [rows[i * per_client:(i + 1) * per_client] for i in range(clients)]
    threads = [threading.Thread(target=one_client, args=(ch, urls[i % len(urls)])) for i, ch in enumerate(chunks)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    bad = [s for _, _, s in results if s != 200]
    lat = [c for c, _, s in results if s == 200]
    return {"clients": clients, "requests": clients * per_client, "ok": len(lat), "errors": len(errors) + len(bad),
            "error_samples": errors[:3] + [f"HTTP {s}" for s in bad[:3]], "wall_s": round(wall, 2),
            "throughput_per_s": round(len(lat) / wall, 2), "p50_s": pct(lat, 0.5) if lat else None,
            "p95_s": pct(lat, 0.95) if lat else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/im2gps3k")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=5)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--state-url", default=None, help="a postgresql:// session database for every server")
    a = ap.parse_args()
    extra = ["--state-url", a.state_url] if a.state_url else []
    url = f"http://127.0.0.1:{a.port}"
    with open(a.data / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    need = a.n + 1 + 2 * a.clients * a.per_client
    if len(rows) < need:
        raise SystemExit(f"{a.data} has {len(rows)} photos; this run needs {need}")
    state = tempfile.mkdtemp(prefix="geoguide-bench-serve-")

    servers = [start_server(a.index, a.data, state, a.port, *extra)]
    try:
        start_s = wait_ready(url, servers[0])
        with httpx.Client() as c:
            serial = [post(c, url, a.data, r) for r in rows[: a.n + 1]]
        if any(s != 200 for _, _, s in serial):
            raise SystemExit(f"serial requests failed: {[s for _, _, s in serial]}")
        first, second = a.n + 1 + a.clients * a.per_client, need
        conc = concurrent([url], a.data, rows[a.n + 1: first], a.clients, a.per_client)
        one_rss = rss_mb(servers[0].pid)
        servers[0].terminate()  # idle, but one process fewer on the machine
        servers[0].wait()
        servers.append(start_server(a.index, a.data, state, a.port + 1, "--workers", "2", *extra))
        other = f"http://127.0.0.1:{a.port + 1}"
        wait_ready(other, servers[1])
        for r in rows[:8]:  # warm both workers as the first server was: the kernel hands each connection to one
            with httpx.Client() as c:
                post(c, other, a.data, r)
        two = concurrent([other], a.data, rows[first:second], a.clients, a.per_client)
        # the workers (and multiprocessing's small resource tracker) are the supervisor's children
        memory = {"one_process_mb": one_rss, "supervisor_mb": rss_mb(servers[1].pid),
                  "children_mb": sorted((m for c in children(servers[1].pid) if (m := rss_mb(c)) is not None),
                                        reverse=True)}
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    warm = serial[1:]
    out = {"start_s": round(start_s, 2), "first_s": round(serial[0][0], 3), "n": len(warm),
           "p50_s": pct([c for c, _, _ in warm], 0.5), "p95_s": pct([c for c, _, _ in warm], 0.95),
           "server_p50_s": pct([s for _, s, _ in warm], 0.5), "server_p95_s": pct([s for _, s, _ in warm], 0.95),
           "concurrent": conc, "two_workers": two, "memory": memory, "state": "postgresql" if a.state_url else "sqlite",
           "two_to_one": round(two["throughput_per_s"] / conc["throughput_per_s"], 2) if conc["throughput_per_s"] else None}
    print(f"server ready in {out['start_s']} s; first request {out['first_s']} s")
    print(f"one client, {out['n']} photos: p50 {out['p50_s']} s, p95 {out['p95_s']} s (client); server-side "
          f"p50 {out['server_p50_s']} s, p95 {out['server_p95_s']} s (target p50 <= 0.15 s: "
          f"{'holds' if out['server_p50_s'] <= 0.15 else 'MISSED'})")
    print(f"{conc['clients']} clients, {conc['requests']} photos: {conc['ok']} ok, {conc['errors']} errors, "
          f"{conc['throughput_per_s']} photos/s, p50 {conc['p50_s']} s, p95 {conc['p95_s']} s")
    print(f"--workers 2, {two['requests']} photos: {two['ok']} ok, {two['errors']} errors, "
          f"{two['throughput_per_s']} photos/s, p50 {two['p50_s']} s, p95 {two['p95_s']} s; "
          f"2 / 1 workers: {out['two_to_one']}x")
    print(f"resident memory: one process {memory['one_process_mb']} MB; --workers 2: supervisor "
          f"{memory['supervisor_mb']} MB, its children {memory['children_mb']} MB")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    return 0 if conc["errors"] == 0 and two["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
