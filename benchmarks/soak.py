"""A warm ``geoguide serve`` held for long under a realistic mix of requests (issue 25).

Starts the real server as a subprocess on 127.0.0.1 (replayed priors of the shared split, the
``rules`` policy, a fresh state folder, the rate limit raised: every client here shares one
address) and drives it for ``--seconds`` (default 600) from ``--clients`` threads, each request
drawn from this mix:

    upload      POST /api/locate with a photo of the split, its photographer excluded   40%
    stream      POST /api/locate/stream, every event read to the end                    10%
    abandoned   the same stream, closed after its first event                            5%
    follow-up   POST /api/sessions/ID/messages on a session made earlier               20%
    thumbnail   GET a reference's thumbnail named in an answer                          15%
    bad         an empty upload (422), an unknown session (404), a malformed body (422) 10%

A request is an *unintended* error when its status is not the one its kind expects (200, or the
bad kind's 4xx) or it raises; the run fails with any. Every 10 s the server's RSS and open file
descriptors are read from /proc. Printed (and written with ``--json``): requests served per
kind, unintended errors, p50 / p99 latency in the first and the last minute, RSS and descriptors
after the first minute (warm) and at the end. The bound: growth from warm to end of at most
``--max-rss-growth-mb`` (default 64 MB) and ``--max-fd-growth`` (default 8) descriptors; a leak
of one object per request would exceed both within minutes at the measured rates.

    .venv/bin/python benchmarks/soak.py --index runs/idx-effnet --seconds 600 --json benchmarks/out/soak.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from serve import pct, start_server, wait_ready  # noqa: E402 - the sibling benchmark's helpers

MIX = (("upload", 40), ("stream", 10), ("abandoned", 5), ("follow-up", 20), ("thumbnail", 15), ("bad", 10))
QUESTIONS = ("why not Spain?", "how sure are you?", "is it in Italy?", "what did you see?", "look near Lyon",
             "help", "is it in Tuscany?")


class Soak:
    def __init__(self, url: str, data: Path, rows: list[dict], seed: int) -> None:
        self.url, self.data, self.rows = url, data, rows
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.sessions: list[str] = []
        self.refs: list[str] = []
        self.done: list[tuple[float, str, float, bool]] = []  # (start offset s, kind, seconds, as intended)
        self.unintended: list[str] = []
        self.t0 = time.perf_counter()

    def pick(self) -> tuple[str, dict]:
        with self.lock:
            kind = self.rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
            row = self.rng.choice(self.rows)
            if kind == "follow-up" and not self.sessions or kind == "thumbnail" and not self.refs:
                kind = "upload"
            extra = {"session": self.rng.choice(self.sessions) if self.sessions else None,
                     "ref": self.rng.choice(self.refs) if self.refs else None,
                     "question": self.rng.choice(QUESTIONS), "bad": self.rng.randrange(3)}
        return kind, {"row": row, **extra}

    def one(self, c: httpx.Client) -> None:
        kind, a = self.pick()
        start = time.perf_counter()
        try:
            ok, why = getattr(self, "_" + kind.replace("-", "_"))(c, a)
        except Exception as e:  # noqa: BLE001 - a transport error or a body that is not what was promised
            ok, why = False, repr(e)
        took = time.perf_counter() - start
        with self.lock:
            self.done.append((start - self.t0, kind, took, ok))
            if not ok:
                self.unintended.append(f"{kind}: {why}"[:300])

    def _photo(self, a: dict) -> tuple[dict, dict]:
        row = a["row"]
        body = (self.data / "images" / row["IMG_ID"]).read_bytes()
        return {"image": (row["IMG_ID"], body, "image/jpeg")}, {"exclude_author": row["AUTHOR"]}

    def _remember(self, pred: dict, session: str | None) -> None:
        with self.lock:
            if session:
                self.sessions.append(session)
                del self.sessions[:-200]
            self.refs.extend(c["ref_id"] for c in pred.get("top_candidates", [])[:3])
            del self.refs[:-500]

    def _upload(self, c: httpx.Client, a: dict) -> tuple[bool, str]:
        files, data = self._photo(a)
        r = c.post(f"{self.url}/api/locate", files=files, data=data)
        if r.status_code == 200:
            self._remember(r.json(), r.headers.get("X-Geoguide-Session"))
        return r.status_code == 200, f"HTTP {r.status_code} {r.text[:120]}"

    def _stream(self, c: httpx.Client, a: dict, abandon: bool = False) -> tuple[bool, str]:
        files, data = self._photo(a)
        with c.stream("POST", f"{self.url}/api/locate/stream", files=files, data=data) as r:
            if r.status_code != 200:
                return False, f"HTTP {r.status_code}"
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                    if abandon:
                        return True, ""
                elif line.startswith("data: ") and event in ("session", "error"):
                    if event == "error":
                        return False, f"error event {line[6:200]}"
                    view = json.loads(line[6:])
                    self._remember(view.get("prediction") or {}, view.get("session_id"))
                    return True, ""
        return False, "the stream ended without a session event"

    def _abandoned(self, c: httpx.Client, a: dict) -> tuple[bool, str]:
        return self._stream(c, a, abandon=True)

    def _follow_up(self, c: httpx.Client, a: dict) -> tuple[bool, str]:
        r = c.post(f"{self.url}/api/sessions/{a['session']}/messages", json={"text": a["question"]})
        return r.status_code == 200, f"HTTP {r.status_code} {r.text[:120]}"

    def _thumbnail(self, c: httpx.Client, a: dict) -> tuple[bool, str]:
        r = c.get(f"{self.url}/api/references/{a['ref']}/thumbnail")
        return r.status_code == 200 and r.headers.get("content-type", "").startswith("image/"), f"HTTP {r.status_code}"

    def _bad(self, c: httpx.Client, a: dict) -> tuple[bool, str]:
        if a["bad"] == 0:
            r, want = c.post(f"{self.url}/api/locate", files={"image": ("x.jpg", b"", "image/jpeg")}), 422
        elif a["bad"] == 1:
            r, want = c.get(f"{self.url}/api/sessions/{'0' * 32}"), 404
        else:
            r, want = c.post(f"{self.url}/api/sessions/{'0' * 32}/messages", content=b"{not json"), 422
        return r.status_code == want, f"HTTP {r.status_code}, wanted {want}"


def process_stats(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) of a process, from /proc; (nan, -1) once it has died."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), None)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return float("nan"), -1
    return (float("nan"), -1) if rss is None else (rss / 1024, fds)


def window(done: list, lo: float, hi: float) -> dict:
    lat = [t for s, _, t, ok in done if lo <= s < hi and ok]
    return {"n": len(lat), "p50_s": pct(lat, 0.5) if lat else None, "p99_s": pct(lat, 0.99) if lat else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/im2gps3k")
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-rss-growth-mb", type=float, default=64)
    ap.add_argument("--max-fd-growth", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    url = f"http://127.0.0.1:{a.port}"
    with open(a.data / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    state = tempfile.mkdtemp(prefix="geoguide-soak-")
    server = start_server(a.index, a.data, state, a.port)
    samples: list[tuple[float, float, int]] = []
    try:
        wait_ready(url, server)
        soak = Soak(url, a.data, rows, a.seed)
        end = soak.t0 + a.seconds
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=120) as c:
                while time.perf_counter() < end and not stop.is_set():
                    soak.one(c)

        def sampler() -> None:
            while not stop.is_set():
                samples.append((time.perf_counter() - soak.t0, *process_stats(server.pid)))
                stop.wait(10)

        threads = [threading.Thread(target=client) for _ in range(a.clients)] + [threading.Thread(target=sampler)]
        for th in threads:
            th.start()
        for th in threads[:-1]:
            th.join()
        stop.set()
        threads[-1].join()
        if server.poll() is not None:
            raise SystemExit(f"the server died during the soak (exit {server.returncode})")
        samples.append((time.perf_counter() - soak.t0, *process_stats(server.pid)))
    finally:
        server.terminate()
        server.wait()
    ran = samples[-1][0]
    warm = next(s for s in samples if s[0] >= min(60.0, ran / 2))
    last = samples[-1]
    kinds = {k: sum(1 for _, kind, _, _ in soak.done if kind == k) for k, _ in MIX}
    out = {
        "seconds": round(ran, 1), "clients": a.clients, "requests": len(soak.done), "by_kind": kinds,
        "unintended_errors": len(soak.unintended), "unintended_samples": soak.unintended[:5],
        "first_minute": window(soak.done, 0, 60), "last_minute": window(soak.done, ran - 60, ran + 1),
        "warm": {"at_s": round(warm[0], 1), "rss_mb": round(warm[1], 1), "fds": warm[2]},
        "end": {"at_s": round(last[0], 1), "rss_mb": round(last[1], 1), "fds": last[2]},
        "rss_samples_mb": [round(s[1], 1) for s in samples], "fd_samples": [s[2] for s in samples],
        "bounds": {"rss_growth_mb": a.max_rss_growth_mb, "fd_growth": a.max_fd_growth},
    }
    grew_rss, grew_fds = last[1] - warm[1], last[2] - warm[2]
    holds = grew_rss <= a.max_rss_growth_mb and grew_fds <= a.max_fd_growth and not soak.unintended
    print(f"{out['requests']} requests in {out['seconds']} s from {a.clients} clients: {kinds}")
    print(f"unintended errors: {len(soak.unintended)} {soak.unintended[:3]}")
    print(f"latency first minute p50 {out['first_minute']['p50_s']} s, p99 {out['first_minute']['p99_s']} s; "
          f"last minute p50 {out['last_minute']['p50_s']} s, p99 {out['last_minute']['p99_s']} s")
    print(f"server RSS {warm[1]:.0f} MB at {warm[0]:.0f} s -> {last[1]:.0f} MB at the end ({grew_rss:+.0f} MB, bound "
          f"{a.max_rss_growth_mb:g}); open descriptors {warm[2]} -> {last[2]} ({grew_fds:+d}, bound {a.max_fd_growth}): "
          f"{'holds' if holds else 'MISSED'}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
