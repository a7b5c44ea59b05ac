"""Two and four real ``geoguide serve`` processes sharing their sessions: one ``--state-dir`` on
one machine (what several workers behind a proxy, or a restart overlap, give), or one PostgreSQL
database (``--state-url``) with a state folder each, as servers on several machines have.
12 concurrent follow-ups to one session, spread evenly across them, are all kept, each exactly
once, in an order every process reads alike. Before the cross-process session lock two
processes kept 7 of 12, every one answered 200. ``serve --workers 2`` (one port, uvicorn's
supervisor) keeps them too."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serving import free_port, wait_until_up
from tests.synthetic import place_image

pytestmark = pytest.mark.integration


def small_jpeg() -> bytes:
    import io

    out = io.BytesIO()
    place_image(0, variant=7).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _serve(index, state, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "geoguide", "serve", "--index", str(index), "--vlm", "none",
                             "--port", str(port), "--state-dir", str(state), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_keep_every_follow_up_to_one_session(synthetic_index, tmp_path, processes):
    ports = [free_port() for _ in range(processes)]
    servers = [_serve(synthetic_index.root, tmp_path / "state", p) for p in ports]
    _every_follow_up_kept(servers, [f"http://127.0.0.1:{p}" for p in ports])


@pytest.mark.parametrize("processes", [2, 4])
def test_servers_sharing_postgres_keep_every_follow_up(synthetic_index, tmp_path, postgres_url, processes):
    """As on several machines: no state folder shared, only the database (the photo comes from it)."""
    ports = [free_port() for _ in range(processes)]
    servers = [_serve(synthetic_index.root, tmp_path / f"machine-{i}", p, "--state-url", postgres_url)
               for i, p in enumerate(ports)]
    _every_follow_up_kept(servers, [f"http://127.0.0.1:{p}" for p in ports])
    assert not (tmp_path / "machine-0" / "sessions.sqlite").exists()
    for i in range(1, processes):  # each copied the photo from the database to search it again
        assert list((tmp_path / f"machine-{i}" / "uploads").glob("*/photo-1"))


def test_workers_keep_every_follow_up(synthetic_index, tmp_path):
    port = free_port()
    server = _serve(synthetic_index.root, tmp_path / "state", port, "--workers", "2")
    url = f"http://127.0.0.1:{port}"
    _every_follow_up_kept([server], [url, url])


def _every_follow_up_kept(servers: list[subprocess.Popen], urls: list[str]) -> None:
    processes = len(urls)
    try:
        for s, u in zip(servers, urls, strict=False):
            wait_until_up(s, u)
        r = httpx.post(f"{urls[0]}/api/locate", files={"image": ("q.jpg", small_jpeg(), "image/jpeg")}, timeout=60)
        assert r.status_code == 200, r.text
        sid = r.headers["X-Geoguide-Session"]

        def ask(i: int) -> int:
            return httpx.post(f"{urls[i % processes]}/api/sessions/{sid}/messages", json={"text": f"question {i}: help"},
                              timeout=120).status_code

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(ask, range(12)))
        assert set(codes) <= {200, 503}, codes
        kept = [t["text"] for t in httpx.get(f"{urls[1]}/api/sessions/{sid}", timeout=30).json()["chat"]
                if t["role"] == "user" and t["text"].startswith("question ")]
        answered = sorted(f"question {i}: help" for i, c in enumerate(codes) if c == 200)
        assert sorted(kept) == answered and len(kept) == len(set(kept))  # every acknowledged one, once
        assert codes.count(200) >= 10, codes  # a refusal is allowed, not the rule
        for url in urls[:1] + urls[2:]:  # every process reads the same order
            other = httpx.get(f"{url}/api/sessions/{sid}", timeout=30).json()["chat"]
            assert [t["text"] for t in other if t["role"] == "user" and t["text"].startswith("question ")] == kept
    finally:
        for s in servers:
            s.terminate()
            s.wait(timeout=20)
