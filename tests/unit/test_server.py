"""The HTTP API slice of ``geoguide serve``: FastAPI's test client over the real app, the real
graph and a real (synthetic) index."""

from __future__ import annotations

import io
import re

import pytest
from fastapi.testclient import TestClient as StarletteClient
from PIL import Image

from geoguide.agent.backends import make_backend
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext
from geoguide.app.server import check_binding, create_app
from geoguide.core.errors import GeoguideError
from tests.synthetic import place_image


def TestClient(app, **kw):  # noqa: N802 - the test client, asking as the page on this machine does
    return StarletteClient(app, base_url="http://localhost:8000", **kw)


@pytest.fixture
def client(synthetic_index):
    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    return TestClient(create_app(ctx, max_upload_bytes=200_000))


def _jpeg(seed: int = 0) -> bytes:
    out = io.BytesIO()
    place_image(seed, variant=7).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_health_and_locate(client):
    h = client.get("/api/health").json()
    assert h["ok"] and h["n_references"] == 24 and h["policy"] == "rules"
    r = client.post("/api/locate", files={"image": ("q_paris.jpg", _jpeg(0), "image/jpeg")})
    assert r.status_code == 200, r.text
    pred = r.json()
    assert pred["country"] == "FR" and pred["trail"] and pred["image"] == "q_paris.jpg"
    r = client.post("/api/locate", files={"image": ("q.jpg", _jpeg(0), "image/jpeg")},
                    data={"exclude_author": "author_paris_0"})
    assert all(c["author"] != "author_paris_0" for c in r.json()["top_candidates"])


@pytest.mark.parametrize(
    "payload, status",
    [
        (b"", 422),
        (b"just some text, not a photo", 422),
        (b"\xff" * 300_000, 413),
    ],
)
def test_bad_uploads_are_refused_with_a_clear_status(client, payload, status):
    r = client.post("/api/locate", files={"image": ("x.jpg", payload, "image/jpeg")})
    assert r.status_code == status and r.json()["detail"]


def test_decompression_bomb_is_refused(client, monkeypatch):
    monkeypatch.setenv("GEOGUIDE_MAX_IMAGE_PIXELS", "1000")
    out = io.BytesIO()
    Image.new("RGB", (100, 100)).save(out, format="PNG")
    r = client.post("/api/locate", files={"image": ("big.png", out.getvalue(), "image/png")})
    assert r.status_code == 422 and "GEOGUIDE_MAX_IMAGE_PIXELS" in r.json()["detail"]


def test_thumbnails_only_by_reference_id(client):
    r = client.get("/api/references/paris_0.jpg/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 256
    for attempt in ("..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "paris_0.jpg%00", "nope.jpg"):
        assert client.get(f"/api/references/{attempt}/thumbnail").status_code == 404


def _every_route(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every route and mount the app has, path parameters filled in:
    read from the app itself, so a route added later is covered without editing this test."""
    from starlette.routing import Mount

    out = []
    for route in app.routes:
        path = re.sub(r"\{[^}]+\}", "x" * 32, route.path)
        if isinstance(route, Mount):
            out.append(("GET", path + "/anything.js"))
            continue
        out += [(m, path) for m in sorted(route.methods - {"HEAD"})]
    return out


def test_token_is_checked_on_every_route(synthetic_index):
    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    app = create_app(ctx, token="s3cret", auth_per_minute=10_000)  # every route, twice: more than the guess limit
    client = TestClient(app)
    routes = _every_route(app)
    paths = {p for _, p in routes}
    assert {"/docs", "/openapi.json", "/api/locate/stream", "/api/health"} <= paths  # the enumeration works
    assert any(p.endswith("/thumbnail") for p in paths) and any(p.startswith("/api/sessions/") for p in paths)
    for method, path in routes:
        public = path == "/" or path.startswith("/static/")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = client.request(method, path, headers=headers)
            if public:
                assert r.status_code != 401, (method, path)
            else:
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
    ok = {"Authorization": "Bearer s3cret"}
    assert client.get("/api/health", headers=ok).status_code == 200
    assert client.get("/openapi.json", headers=ok).status_code == 200
    assert client.get("/docs", headers=ok).status_code == 200
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200


def test_every_answer_carries_a_content_security_policy(client):
    for path in ("/", "/static/app.js", "/api/health", "/api/sessions/" + "0" * 32):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, path
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "'unsafe-inline'" in client.get("/docs").headers["content-security-policy"]  # Swagger UI's inline start


def test_open_binding_needs_a_token_or_insecure():
    assert check_binding("127.0.0.1", None, False) == []
    assert check_binding("0.0.0.0", "tok", False) == []
    with pytest.raises(GeoguideError, match="--token"):
        check_binding("0.0.0.0", None, False)
    assert "without a token" in check_binding("0.0.0.0", None, True)[0]


def test_warm_up_loads_what_the_first_request_needs(synthetic_index):
    from geoguide.app.server import warm_up

    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    warm_up(ctx)
    assert synthetic_index._descriptor is not None


# ---- sessions, streaming, limits ------------------------------------------------------------

PARIS = (48.8566, 2.3522)


@pytest.fixture
def served(synthetic_index, tmp_path):
    """A server with a replayed prior for q_paris.jpg, labels (truth) for it, and a state dir that
    a second app (a restarted server) can reopen."""
    from geoguide.app.web_sessions import Truth

    prior = tmp_path / "prior.csv"
    prior.write_text("IMG_ID,LAT_pred,LON_pred,location,success,model_name\n"
                     f"q_paris.jpg,{PARIS[0]},{PARIS[1]},Paris,True,gemini\n")
    ctx = AgentContext(index=synthetic_index, backend=make_backend(f"replay:{prior}"), config=AgentConfig())
    truth = {"q_paris.jpg": Truth(lat=48.86, lon=2.34, author="author_paris_0")}

    def app(**kw):
        return TestClient(create_app(ctx, state_dir=tmp_path / "state", truth=truth, **kw))

    return app


def _events(body: str) -> list[tuple[str, dict]]:
    import json

    out = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_locate_streams_steps_then_the_session(served):
    client = served()
    with client.stream("POST", "/api/locate/stream", files={"image": ("q_paris.jpg", _jpeg(0), "image/jpeg")}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.read().decode())
    kinds = [k for k, _ in events]
    assert kinds[-1] == "session" and kinds.count("step") >= 3, kinds
    nodes = [e["node"] for k, e in events if k == "step"]
    assert nodes[0] == "perceive" and nodes[-1] == "finalize"
    view = events[-1][1]
    assert len(view["session_id"]) == 32 and view["prediction"]["prior"]["lat"] == pytest.approx(PARIS[0])
    assert view["truth"]["error_km"] is not None and view["photo"] == "q_paris.jpg"
    # the labelled photographer is excluded, as eval --exclude-same-author does
    assert view["excluded_author"] == "author_paris_0"
    assert all(c["author"] != "author_paris_0" for c in view["prediction"]["top_candidates"])


def test_a_bad_upload_is_refused_before_the_stream_starts(served):
    r = served().post("/api/locate/stream", files={"image": ("notes.txt", b"hello", "text/plain")})
    assert r.status_code == 422 and r.json()["detail"].startswith("notes.txt: ")


def test_follow_ups_keep_the_session_across_a_restart(served):
    first = served()
    r = first.post("/api/locate", files={"image": ("q_paris.jpg", _jpeg(0), "image/jpeg")})
    sid = r.headers["X-Geoguide-Session"]
    assert r.json()["image"] == "q_paris.jpg"
    view = first.post(f"/api/sessions/{sid}/messages", json={"text": "why?"}).json()
    assert [t["role"] for t in view["chat"]][-2:] == ["user", "assistant"] and view["chat"][-1]["text"]
    restarted = served()  # a new app over the same state dir: what a server restart sees
    again = restarted.get(f"/api/sessions/{sid}").json()
    assert again["chat"] == view["chat"] and again["prediction"]["lat"] == view["prediction"]["lat"]
    assert restarted.get(f"/api/sessions/{sid}/photo").headers["content-type"] == "image/jpeg"
    more = restarted.post(f"/api/sessions/{sid}/messages", json={"text": "could it be near Lyon?"}).json()
    assert len(more["chat"]) == len(view["chat"]) + 2


@pytest.mark.parametrize("sid", ["nope", "0" * 32, "..%2F..%2Fetc%2Fpasswd", "A" * 32, "0" * 31 + "/"])
def test_unknown_or_hostile_session_ids_are_404(served, sid):
    client = served()
    assert client.get(f"/api/sessions/{sid}").status_code == 404
    assert client.get(f"/api/sessions/{sid}/photo").status_code == 404
    assert client.post(f"/api/sessions/{sid}/messages", json={"text": "hi"}).status_code == 404


def test_empty_questions_are_refused(served):
    client = served()
    sid = client.post("/api/locate", files={"image": ("q.jpg", _jpeg(0), "image/jpeg")}).headers["X-Geoguide-Session"]
    assert client.post(f"/api/sessions/{sid}/messages", json={"text": ""}).status_code == 422


def test_each_client_is_rate_limited(served):
    client = served(rate_per_minute=3)
    codes = [client.post("/api/locate", files={"image": ("x.jpg", b"", "image/jpeg")}).status_code for _ in range(5)]
    assert codes[:3] == [422, 422, 422] and codes[3:] == [429, 429]
    r = client.post("/api/locate", files={"image": ("x.jpg", b"", "image/jpeg")})
    assert int(r.headers["Retry-After"]) >= 1
    assert client.get("/api/health").status_code == 200  # reads are not limited


def test_the_page_and_its_offline_map(served):
    client = served()
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http://" not in page.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page.text
    for asset in ("geoguide.app.js", "map.js", "style.css"):
        body = client.get(f"/static/{asset}").text
        assert "https://" not in body and "//cdn" not in body
    geo = client.get("/api/countries.geojson", headers={"Accept-Encoding": "gzip"})
    features = geo.json()["features"]
    assert len(features) >= 230 and {"FR", "JP", "SG", "VA"} <= {f["id"] for f in features}
    assert client.get("/static/../server.py").status_code == 404
    docs = client.get("/docs").text  # the API's docs load nothing from a CDN either
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs and "cdn" not in docs
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    assert "/api/locate/stream" in client.get("/openapi.json").json()["paths"]


def test_a_dead_model_server_is_a_503_unless_retrieval_fallback_was_accepted(synthetic_index, tmp_path):
    """The CLI's exit 3 over HTTP: an answer from retrieval alone is not what was asked for."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"openai-compatible:http://127.0.0.1:{s.getsockname()[1]}/v1:some-model"
    for fallback, status in (("none", 503), ("retrieval", 200)):
        ctx = AgentContext(index=synthetic_index, backend=make_backend(dead, timeout=2.0, max_attempts=1),
                           config=AgentConfig(fallback=fallback))
        client = TestClient(create_app(ctx, state_dir=tmp_path / fallback))
        r = client.post("/api/locate", files={"image": ("q.jpg", _jpeg(0), "image/jpeg")})
        assert r.status_code == status, r.text
        if status == 503:
            assert "nothing answers at that address" in r.json()["detail"]
            assert "--fallback retrieval" in r.json()["detail"]
            with client.stream("POST", "/api/locate/stream", files={"image": ("q.jpg", _jpeg(0), "image/jpeg")}) as s:
                events = _events(s.read().decode())
            assert events[-1][0] == "error" and events[-1][1]["status"] == 503
        else:
            assert r.json()["fallback"] == "retrieval" and r.json()["lat"] is not None


def test_concurrent_requests_get_the_answers_serial_ones_get(synthetic_index, tmp_path):
    """One index and one descriptor shared by several users at once: same answers as one by one."""
    from concurrent.futures import ThreadPoolExecutor

    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    app = create_app(ctx, state_dir=tmp_path)

    def one(seed: int) -> tuple[float, float, str]:
        with TestClient(app) as c:
            p = c.post("/api/locate", files={"image": (f"q{seed}.jpg", _jpeg(seed), "image/jpeg")}).json()
            return p["lat"], p["lon"], p["country"]

    seeds = [0, 1, 2, 3, 4, 5, 6, 7] * 2
    serial = [one(s) for s in seeds]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, seeds)) == serial


# ---- the doors: Host, Origin, failed tokens, field caps --------------------------------------


@pytest.fixture
def local_app(synthetic_index, tmp_path):
    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    return create_app(ctx, state_dir=tmp_path / "state")


def _sessions(tmp_path) -> list:
    uploads = tmp_path / "state" / "uploads"
    return sorted(uploads.iterdir()) if uploads.exists() else []


def test_dns_rebinding_names_are_refused_on_every_route(local_app):
    """A page on rebind.attacker.example whose name now points to 127.0.0.1 is same-origin to the
    browser; the Host header still says who it thinks it is talking to."""
    client = TestClient(local_app)
    for path in ("/api/health", "/", "/static/app.js", "/openapi.json"):
        r = client.get(path, headers={"Host": "rebind.attacker.example"})
        assert r.status_code == 403 and "unexpected Host 'rebind.attacker.example'" in r.json()["detail"], path
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "192.168.1.20:8000", "LOCALHOST"):
        assert client.get("/api/health", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_for_a_reverse_proxy(synthetic_index):
    from geoguide.app.doors import Doors

    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    client = TestClient(create_app(ctx, doors=Doors("0.0.0.0", allow_hosts=["geo.example.org"])))
    assert client.get("/api/health", headers={"Host": "geo.example.org"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "other.example.org"}).status_code == 403
    anyone = TestClient(create_app(ctx, doors=Doors("127.0.0.1", allow_hosts=["*"])))
    assert anyone.get("/api/health", headers={"Host": "other.example.org"}).status_code == 200


def test_cross_origin_posts_are_refused_before_anything_runs(local_app, tmp_path):
    client = TestClient(local_app)
    photo = {"image": ("q.jpg", _jpeg(0), "image/jpeg")}
    for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"},
                    {"Origin": "http://localhost:9999"}, {"Sec-Fetch-Site": "cross-site"}):
        r = client.post("/api/locate", files=photo, headers=headers)
        assert r.status_code == 403 and "refused" in r.json()["detail"], (headers, r.status_code)
    assert _sessions(tmp_path) == []  # no session made, no model called
    # the page itself (same origin), and clients that are not browsers (no Origin), go on
    ok = client.post("/api/locate", files=photo, headers={"Origin": "http://localhost:8000",
                                                          "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 200, ok.text
    assert client.post("/api/locate", files=photo).status_code == 200
    sid = ok.headers["X-Geoguide-Session"]
    r = client.post(f"/api/sessions/{sid}/messages", json={"text": "why?"}, headers={"Origin": "http://attacker.example"})
    assert r.status_code == 403
    assert client.get(f"/api/sessions/{sid}", headers={"Origin": "http://attacker.example"}).status_code == 200  # reads: CORS keeps them private


def test_allowed_origins(synthetic_index):
    from geoguide.app.doors import Doors

    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    client = TestClient(create_app(ctx, doors=Doors(allow_origins=["https://geo.example.org/"])))
    photo = {"image": ("q.jpg", _jpeg(0), "image/jpeg")}
    assert client.post("/api/locate", files=photo, headers={"Origin": "https://geo.example.org"}).status_code == 200
    assert client.post("/api/locate", files=photo, headers={"Origin": "https://evil.example.org"}).status_code == 403


def test_failed_tokens_are_rate_limited_per_client(synthetic_index):
    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    client = TestClient(create_app(ctx, token="s3cret"))
    codes = [client.post("/api/locate", headers={"Authorization": f"Bearer guess{i}"}).status_code for i in range(30)]
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}
    blocked = client.get("/api/health", headers={"Authorization": "Bearer s3cret"})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1  # even the right token: no oracle


def test_every_form_field_is_capped(local_app, tmp_path):
    client = TestClient(local_app)
    photo = {"image": ("q.jpg", _jpeg(0), "image/jpeg")}
    for field, size in (("text", 900_000), ("text", 2001), ("exclude_author", 201)):
        r = client.post("/api/locate", files=photo, data={field: "x" * size})
        assert r.status_code == 422, (field, size, r.status_code)
    assert _sessions(tmp_path) == []
    assert client.post("/api/locate", files={"image": ("n" * 5000 + ".jpg", _jpeg(0), "image/jpeg")}).status_code == 400
    name = client.post("/api/locate", files={"image": ("n" * 300 + ".jpg", _jpeg(0), "image/jpeg")}).json()["image"]
    assert name.endswith("nnn.jpg") and len(name) == 200
