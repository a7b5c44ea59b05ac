"""Backends against a real local OpenAI-protocol server: retries, repair, cache, tools, replay."""

from __future__ import annotations

import base64
import email.utils
import io
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fakes.openai_server import (
    FakeOpenAIServer,
    delayed,
    http_error,
    raw_reply,
    reply_json,
    reply_refusal,
    reply_text,
    reply_tool_calls,
)
from PIL import Image

from geoguide.agent.backends import (
    BackendConfigError,
    CallFailed,
    ChatBackend,
    PriorProvider,
    ResponseCache,
    available_backends,
    make_backend,
    parse_perception,
    parse_spec,
    usage_of,
)
from geoguide.agent.backends import offline as offline_mod
from geoguide.agent.backends.chat_model import to_openai
from geoguide.agent.backends.openai_backend import OpenAIBackend, split_base_url
from geoguide.agent.backends.retry import retry_after_s
from geoguide.agent.schemas import Perception, Usage

SECRET = "sk-test-SECRET-0123456789abcdef"
GOOD = {
    "clues": [{"kind": "script", "text": "French on shop signs"}, {"kind": "architecture", "text": "Haussmann"}],
    "countries": [{"iso2": "FR", "name": "France", "probability": 0.7}, {"iso2": "BE", "probability": 0.2}],
    "lat": 48.85,
    "lon": 2.35,
    "uncertainty_km": 50,
    "rationale": "Parisian boulevard.",
}
FAST = {"timeout": 2.0, "retry_initial_s": 0.01, "retry_max_s": 0.05}


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def photo() -> Image.Image:
    return Image.new("RGB", (2048, 1024), (40, 120, 200))


def compat(server: FakeOpenAIServer, **options: object) -> OpenAIBackend:
    backend = make_backend(f"openai-compatible:{server.base_url}:test-vlm", **{**FAST, **options})
    assert isinstance(backend, OpenAIBackend)
    return backend


def sent_image(request_body: dict) -> Image.Image:
    parts = request_body["messages"][0]["content"]
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


# --- perceive ---------------------------------------------------------------------------------


def test_perceive_happy_path_sends_image_and_parses(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(reply_json(GOOD, prompt_tokens=1000, completion_tokens=200))
    outcome = compat(fake_openai, price=(2.0, 10.0)).perceive(photo, "Where is this?")

    assert outcome.error is None and outcome.perception is not None
    assert outcome.perception.countries[0].iso2 == "FR" and outcome.perception.lat == 48.85
    u = outcome.usage
    assert (u.prompt_tokens, u.completion_tokens, u.model_calls, u.retries, u.cached) == (1000, 200, 1, 0, False)
    assert u.cost_usd == pytest.approx((1000 * 2.0 + 200 * 10.0) / 1e6)
    body = fake_openai.requests[0].body
    assert body["model"] == "test-vlm" and body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["content"][0] == {"type": "text", "text": "Where is this?"}
    assert sent_image(body).size == (1024, 512)  # long side capped, JPEG
    assert body["max_tokens"] == 1024 and body["temperature"] == 0.0


def test_default_prompt_is_perceive_v1(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(reply_json(GOOD))
    compat(fake_openai).perceive(photo)
    text = fake_openai.requests[0].body["messages"][0]["content"][0]["text"]
    assert "at most 3 candidate countries" in text and '"uncertainty_km"' in text


def test_invalid_json_is_repaired_once(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(reply_text("It looks like Paris to me!"), reply_json(GOOD))
    outcome = compat(fake_openai).perceive(photo, "Where?")

    assert outcome.error is None and outcome.perception is not None
    assert outcome.usage.model_calls == 2 and outcome.usage.prompt_tokens == 200
    repair = fake_openai.requests[1].body["messages"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[1]["content"] == "It looks like Paris to me!"
    assert "could not be used" in repair[2]["content"] and "not JSON" in repair[2]["content"]


def test_invalid_twice_gives_error_outcome(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(reply_text("nope"), reply_json({**GOOD, "lat": 200.0}))
    outcome = compat(fake_openai).perceive(photo, "Where?")

    assert outcome.perception is None
    assert "after one repair" in outcome.error and "lat" in outcome.error
    assert '"lat": 200.0' in outcome.raw
    assert len(fake_openai.requests) == 2 and outcome.usage.model_calls == 2


def test_429_honours_retry_after(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(http_error(429, "slow down", retry_after=0.4), reply_json(GOOD))
    start = time.perf_counter()
    outcome = compat(fake_openai, retry_initial_s=0.001, retry_max_s=0.002).perceive(photo, "Where?")

    assert time.perf_counter() - start >= 0.4  # backoff alone would have waited ~2 ms
    assert outcome.perception is not None and outcome.usage.retries == 1
    assert len(fake_openai.requests) == 2


def test_500_is_retried(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(http_error(500), http_error(503), reply_json(GOOD))
    outcome = compat(fake_openai).perceive(photo, "Where?")
    assert outcome.perception is not None and outcome.usage.retries == 2


def test_400_is_not_retried(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(http_error(400, "image too large"), reply_json(GOOD))
    outcome = compat(fake_openai).perceive(photo, "Where?")

    assert outcome.perception is None and "HTTP 400" in outcome.error and "image too large" in outcome.error
    assert len(fake_openai.requests) == 1 and fake_openai.pending == 1


def test_response_format_refusal_falls_back(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(http_error(400, "response_format json_object is not supported"), reply_json(GOOD))
    backend = compat(fake_openai)
    assert backend.perceive(photo, "Where?").perception is not None
    assert "response_format" in fake_openai.requests[0].body
    assert "response_format" not in fake_openai.requests[1].body

    fake_openai.script(reply_json(GOOD))  # remembered: no second refusal round-trip
    backend.perceive(Image.new("RGB", (64, 64)), "Where?")
    assert len(fake_openai.requests) == 3 and "response_format" not in fake_openai.requests[2].body


def test_json_schema_mode_sends_schema(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(reply_json(GOOD))
    compat(fake_openai, response_format="json_schema").perceive(photo, "Where?")
    fmt = fake_openai.requests[0].body["response_format"]
    assert fmt["type"] == "json_schema" and "countries" in fmt["json_schema"]["schema"]["properties"]


def test_timeout_is_retried_then_reported(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(delayed(1.0), delayed(1.0))
    start = time.perf_counter()
    outcome = compat(fake_openai, timeout=0.2, max_attempts=2).perceive(photo, "Where?")

    assert time.perf_counter() - start < 1.5
    assert outcome.perception is None and "Timeout" in outcome.error and "2 attempt" in outcome.error
    assert outcome.usage.retries == 1 and len(fake_openai.requests) == 2


def test_cache_hit_makes_no_request(fake_openai: FakeOpenAIServer, photo: Image.Image, tmp_path: Path) -> None:
    db = tmp_path / "replies.sqlite"
    fake_openai.script(reply_json(GOOD))
    first = compat(fake_openai, cache=db).perceive(photo, "Where?")
    again = compat(fake_openai, cache=db).perceive(photo, "Where?")  # fresh backend, same file

    assert len(fake_openai.requests) == 1
    assert again.perception == first.perception and again.usage.cached and not first.usage.cached
    assert again.usage.cost_usd == first.usage.cost_usd and again.usage.model_calls == 1

    fake_openai.script(reply_json(GOOD), reply_json(GOOD))
    compat(fake_openai, cache=db).perceive(Image.new("RGB", (64, 64)), "Where?")  # other image
    compat(fake_openai, cache=db, temperature=0.7).perceive(photo, "Where?")  # other parameters
    assert len(fake_openai.requests) == 3
    with ResponseCache(db) as cache:
        assert len(cache) == 3


def test_only_validated_replies_are_cached(fake_openai: FakeOpenAIServer, photo: Image.Image, tmp_path: Path) -> None:
    """An unparseable first reply is repaired but never replayed: a re-run asks the model again."""
    db = tmp_path / "replies.sqlite"
    fake_openai.script(reply_text("not json"), reply_json(GOOD), reply_json(GOOD))
    first = compat(fake_openai, cache=db).perceive(photo, "Where?")
    again = compat(fake_openai, cache=db).perceive(photo, "Where?")
    assert first.perception is not None and again.perception is not None
    assert len(fake_openai.requests) == 3  # the invalid reply was not replayed from the cache
    with ResponseCache(db) as cache:
        assert len(cache) == 2  # the repaired exchange and the fresh valid reply, not "not json"


def test_refusal_is_reported_and_never_cached(
    fake_openai: FakeOpenAIServer, photo: Image.Image, tmp_path: Path
) -> None:
    db = tmp_path / "replies.sqlite"
    fake_openai.script(reply_refusal("I can't help with locating people."), reply_json(GOOD))
    first = compat(fake_openai, cache=db).perceive(photo, "Where?")
    assert first.perception is None and first.failure == "refused" and "refused" in first.error
    assert len(fake_openai.requests) == 1  # a refusal is final: no repair round
    again = compat(fake_openai, cache=db).perceive(photo, "Where?")
    assert again.perception is not None and not again.usage.cached


def test_errors_are_not_cached(fake_openai: FakeOpenAIServer, photo: Image.Image, tmp_path: Path) -> None:
    fake_openai.script(http_error(400), reply_json(GOOD))
    backend = compat(fake_openai, cache=tmp_path / "c.sqlite")
    assert backend.perceive(photo, "Where?").perception is None
    assert backend.perceive(photo, "Where?").perception is not None


def test_api_key_never_in_cache_logs_or_repr(
    fake_openai: FakeOpenAIServer, photo: Image.Image, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "c.sqlite"
    fake_openai.script(http_error(500), reply_text("bad"), reply_json(GOOD), reply_tool_calls(("geocode", {"q": "x"})))
    backend = compat(fake_openai, cache=db)
    backend.perceive(photo, "Where?")
    backend.chat([{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {"name": "geocode"}}])
    backend.close()

    assert fake_openai.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # it was sent...
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert SECRET.encode() not in stored and b"Bearer" not in stored  # ...and kept nowhere else
    assert SECRET not in caplog.text and "retry 1/3" in caplog.text
    assert SECRET not in repr(backend) and SECRET not in backend.spec and SECRET not in str(vars(backend))


def test_openai_without_key_fails_fast_but_cache_needs_none(photo: Image.Image, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    backend = make_backend("openai:gpt-4o", cache=tmp_path / "c.sqlite")
    with pytest.raises(BackendConfigError, match="OPENAI_API_KEY"):
        backend.perceive(photo, "Where?")


# --- chat -------------------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search_submap",
            "description": "VPR inside a submap",
            "parameters": {"type": "object", "properties": {"submap": {"type": "string"}, "k": {"type": "integer"}}},
        },
    }
]


def test_chat_returns_tool_calls(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(reply_tool_calls(("search_submap", {"submap": "country:FR", "k": 5}), content="Searching France."))
    messages = [{"role": "system", "content": "plan"}, {"role": "user", "content": "prior: FR"}]
    turn = compat(fake_openai).chat(messages, tools=TOOLS)

    assert turn.content == "Searching France."
    assert [(c["id"], c["name"], c["args"]) for c in turn.tool_calls] == [
        ("call_0", "search_submap", {"submap": "country:FR", "k": 5})
    ]
    body = fake_openai.requests[0].body
    assert body["tools"] == TOOLS and "response_format" not in body
    assert usage_of(turn).model_calls == 1 and usage_of(turn).seconds > 0
    message = to_openai([turn])[0]
    assert message["tool_calls"][0]["function"]["name"] == "search_submap"

    fake_openai.script(reply_text("Paris."))  # the history round-trips through the real SDK
    history = [*messages, message, {"role": "tool", "tool_call_id": "call_0", "content": '{"ok": true}'}]
    assert compat(fake_openai).chat(history, tools=TOOLS).content == "Paris."
    assert fake_openai.requests[1].body["messages"][2]["tool_calls"][0]["id"] == "call_0"


def test_chat_failure_raises_call_failed(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(http_error(401, "invalid key"))
    with pytest.raises(CallFailed, match="HTTP 401"):
        compat(fake_openai).chat([{"role": "user", "content": "hi"}])


# --- spec parsing and registry ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rest", "base_url", "model"),
    [
        ("http://127.0.0.1:8000/v1:llava-hf/llava-1.5-7b-hf", "http://127.0.0.1:8000/v1", "llava-hf/llava-1.5-7b-hf"),
        ("http://localhost:11434/v1:llava:13b", "http://localhost:11434/v1", "llava:13b"),
        ("https://example.org/openai/v1/:gpt-4o", "https://example.org/openai/v1", "gpt-4o"),
        ("http://[::1]:8080:qwen2-vl", "http://[::1]:8080", "qwen2-vl"),
        ("http://vllm:8000:m", "http://vllm:8000", "m"),
        ("my-model", None, "my-model"),
    ],
)
def test_split_base_url(rest: str, base_url: str | None, model: str) -> None:
    assert split_base_url(rest) == (base_url, model)


def test_make_backend_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"openai", "openai-compatible", "llava", "replay", "none"} <= set(available_backends())
    assert parse_spec("openai-compatible:http://h:1/v1:m") == ("openai-compatible", "http://h:1/v1:m")
    b = make_backend("openai-compatible:http://127.0.0.1:9/v1:llava:7b")
    assert (b.base_url, b.model, b.spec) == ("http://127.0.0.1:9/v1", "llava:7b", "openai-compatible:http://127.0.0.1:9/v1:llava:7b")
    assert b.price == (0.0, 0.0)
    assert make_backend("openai:gpt-4o-2024-08-06").price == (2.5, 10.0)
    assert make_backend("none").spec == "none"
    for bad in ("nope:x", "openai-compatible:http://h/v1", "openai:", "none:x", "replay:", f"replay:{tmp_path}/x.csv"):
        with pytest.raises(BackendConfigError):
            make_backend(bad)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert make_backend("openai-compatible:m").base_url == "http://127.0.0.1:9/v1"


def test_none_backend_is_retrieval_only() -> None:
    outcome = make_backend("none").perceive(None)
    assert outcome.perception is None and outcome.error is None and outcome.usage.model_calls == 0
    # A prior provider, not a chat model: nothing to plan or answer follow-ups with.
    none = make_backend("none")
    assert isinstance(none, PriorProvider) and not isinstance(none, ChatBackend) and none.chat_backend() is None


# --- replay -----------------------------------------------------------------------------------

REPLAY_CSV = """IMG_ID,LAT_pred,LON_pred,location,success,model_name
a.jpg,47.2344,38.9267,"Taganrog, Russia",True,gemini-2.0-flash
failed.jpg,0.0,0.0,,False,gemini-2.0-flash
garbled.jpg,abc,12,Somewhere,True,gemini-2.0-flash
far.jpg,95.0,12,North of north,True,gemini-2.0-flash
"""


@pytest.fixture
def replay_csv(tmp_path: Path) -> Path:
    path = tmp_path / "prior.csv"
    path.write_text(REPLAY_CSV, encoding="utf-8")
    return path


def test_replay_hit_and_misses(replay_csv: Path) -> None:
    backend = make_backend(f"replay:{replay_csv}", countries=False)
    hit = backend.perceive(None, image_id="a.jpg")
    assert hit.error is None and hit.perception is not None
    assert (hit.perception.lat, hit.perception.lon, hit.perception.rationale) == (47.2344, 38.9267, "Taganrog, Russia")
    assert hit.usage.cached and hit.usage.cost_usd == 0
    assert backend.perceive("/photos/x/a.jpg").perception == hit.perception  # id from the path
    assert backend.recorded_model == "gemini-2.0-flash"

    for image_id, why in [
        ("missing.jpg", "not in"),
        ("failed.jpg", "failed"),
        ("garbled.jpg", "unparsable"),
        ("far.jpg", "out of range"),
    ]:
        outcome = backend.perceive(None, image_id=image_id)
        assert outcome.perception is None and outcome.error.startswith("no recorded answer"), image_id
        assert why in outcome.error and not outcome.usage.cached
    with pytest.raises(ValueError, match="image_id"):
        backend.perceive(Image.new("RGB", (8, 8)))


def test_replay_country_from_offline_lookup(replay_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offline_mod, "_country_lookup", lambda: lambda lat, lon: SimpleNamespace(iso2="RU", name="Russia"))
    guess = make_backend(f"replay:{replay_csv}").perceive(None, image_id="a.jpg").perception.countries
    assert [(g.iso2, g.name, g.probability) for g in guess] == [("RU", "Russia", 1.0)]

    def broken(lat: float, lon: float) -> str:
        raise RuntimeError("no polygons")

    monkeypatch.setattr(offline_mod, "_country_lookup", lambda: broken)
    outcome = make_backend(f"replay:{replay_csv}").perceive(None, image_id="a.jpg")
    assert outcome.perception.countries == [] and outcome.perception.lat == 47.2344


# --- parsing and accounting -------------------------------------------------------------------


def test_parse_perception_is_lenient_where_models_are_sloppy() -> None:
    text = 'Sure! ```json\n{"countries": [{"country": "uk", "probability": 0.5}, {"country": "Ireland", "probability": 0.3}],' \
        ' "clues": [{"kind": "Road Markings", "text": "white dashes"}, {"kind": "weather", "text": "rain"}]}\n```'
    p, err = parse_perception(text)
    assert err is None and isinstance(p, Perception)
    assert [(c.iso2, c.name) for c in p.countries] == [("GB", None), (None, "Ireland")]
    assert [c.kind for c in p.clues] == ["road_markings", "other"]
    assert parse_perception('```json\n{"lat": 1, "lon": 2}\n```')[0].has_point


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("[1, 2]", "not an object"),
        ('{"lat": 10}', "both lat and lon"),
        ('{"countries": [{"probability": 2}]}', "countries.0"),
        ('{"lat": 1, "lon": 2', "not JSON"),
    ],
)
def test_parse_perception_reasons(text: str, reason: str) -> None:
    p, err = parse_perception(text)
    assert p is None and reason in err


def test_usage_sums_and_cached_flag() -> None:
    fresh = Usage(prompt_tokens=10, cost_usd=0.5, model_calls=1)
    hit = Usage(prompt_tokens=5, model_calls=1, cache_hits=1)
    assert hit.cached and not fresh.cached and not Usage().cached
    total = fresh + hit
    assert (total.prompt_tokens, total.model_calls, total.cached, total.cost_usd) == (15, 2, False, 0.5)
    assert total.model_dump()["cached"] is False


def test_retry_after_parsing() -> None:
    def exc(headers: dict[str, str]) -> SimpleNamespace:
        return SimpleNamespace(response=SimpleNamespace(headers=headers))

    assert retry_after_s(exc({"retry-after": "2"})) == 2.0
    assert retry_after_s(exc({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    in_5s = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 < retry_after_s(exc({"retry-after": in_5s})) <= 5.0
    assert retry_after_s(exc({})) is None and retry_after_s(ValueError()) is None


# --- failure kinds: "no usable prior" versus "the model cannot be used" ------------------------


@pytest.mark.parametrize(
    "reply, kind, hint",
    [
        (http_error(401, "Incorrect API key"), "misconfigured", "API key"),
        (http_error(403, "forbidden"), "misconfigured", "API key"),
        (http_error(404, "model not found"), "misconfigured", "/v1"),
        (http_error(400, "temperature is not supported"), "misconfigured", "HTTP 400"),
        (raw_reply(b"<html><body>It works!</body></html>", "text/html"), "misconfigured", "/v1"),
        (raw_reply(b'{"choices": [', "application/json"), "misconfigured", "JSON"),
        (http_error(429, "slow down", retry_after=0), "exhausted", "rate limit"),
    ],
)
def test_service_failures_are_classified(
    fake_openai: FakeOpenAIServer, photo: Image.Image, reply, kind: str, hint: str
) -> None:
    fake_openai.always(reply)
    outcome = compat(fake_openai, max_attempts=2).perceive(photo, "Where?")
    assert outcome.perception is None and outcome.failure == kind
    assert hint in outcome.error


def test_refused_connection_is_unreachable(photo: Image.Image) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = make_backend(f"openai-compatible:http://127.0.0.1:{port}/v1:m", **FAST, max_attempts=2)
    outcome = backend.perceive(photo, "Where?")
    assert outcome.failure == "unreachable" and "start the model server" in outcome.error


def test_deadline_caps_each_call(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    """A hanging server costs at most the time left in the photo's budget, not timeout x attempts."""
    fake_openai.always(delayed(30))
    backend = compat(fake_openai, timeout=20.0, max_attempts=4)
    start = time.perf_counter()
    outcome = backend.perceive(photo, "Where?", deadline=time.time() + 1.0)
    assert time.perf_counter() - start < 2.0
    assert outcome.failure == "exhausted" and outcome.perception is None


def test_a_text_only_server_refusing_images_is_misconfigured_not_retried(
    fake_openai: FakeOpenAIServer, photo: Image.Image
) -> None:
    """llama.cpp without a vision projector answers HTTP 500 to an image: retrying cannot help."""
    fake_openai.always(http_error(500, "image input is not supported - hint: you may need to provide the mmproj"))
    outcome = compat(fake_openai, max_attempts=4).perceive(photo, "Where?")
    assert outcome.failure == "misconfigured" and "vision=false" in outcome.error
    assert len(fake_openai.requests) == 1


def test_the_factory_gives_each_backend_only_the_runtime_options_it_declares(tmp_path, monkeypatch):
    """No spec prefix is tested: a backend says what it takes (``runtime_options``), so a new
    recorded-answer backend needs no edit of the factory, and model backends get the cache,
    timeout and attempts."""
    from geoguide.agent.backends import BACKENDS, backend_class
    from geoguide.agent.factory import open_backend

    class Recorded(PriorProvider):
        kind = "recorded-test"

        def __init__(self, model: str) -> None:  # takes no cache, timeout or attempts
            super().__init__(model)

        def perceive(self, image, prompt_text=None, *, image_id=None, deadline=None):
            raise NotImplementedError

    BACKENDS.load()
    monkeypatch.setitem(BACKENDS._entries, "recorded-test", Recorded)  # registered for this test only
    assert backend_class("recorded-test:x").runtime_options == frozenset()
    assert isinstance(open_backend("recorded-test:x", None, timeout=5, attempts=2), PriorProvider)
    model = open_backend("openai-compatible:http://127.0.0.1:9/v1:m", tmp_path / "c.sqlite", timeout=7, attempts=3)
    try:
        assert model.timeout == 7 and model.retry.max_attempts == 3 and model.cache is not None
    finally:
        model.close()
    for spec in ("none", f"replay:{tmp_path / 'p.csv'}"):
        assert backend_class(spec).runtime_options == frozenset()
