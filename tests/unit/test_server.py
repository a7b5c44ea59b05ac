"""The HTTP API slice of ``geoguide serve``: FastAPI's test client over the real app, the real
graph and a real (synthetic) index."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from agent.backends import make_backend
from agent.config import AgentConfig
from agent.context import AgentContext
from agent.server import check_binding, create_app
from indices.errors import GeoguideError
from tests.synthetic import place_image


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


def test_token_is_checked_on_every_call(synthetic_index):
    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    client = TestClient(create_app(ctx, token="s3cret"))
    assert client.get("/api/health").status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_open_binding_needs_a_token_or_insecure():
    assert check_binding("127.0.0.1", None, False) == []
    assert check_binding("0.0.0.0", "tok", False) == []
    with pytest.raises(GeoguideError, match="--token"):
        check_binding("0.0.0.0", None, False)
    assert "without a token" in check_binding("0.0.0.0", None, True)[0]


def test_warm_up_loads_what_the_first_request_needs(synthetic_index):
    from agent.server import warm_up

    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    warm_up(ctx)
    assert synthetic_index._descriptor is not None
