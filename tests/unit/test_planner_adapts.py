"""``geoguide locate --policy llm`` with no ``--planner-opt`` against servers that cannot do what a
planner asks by default: one that ignores ``tools=`` (HTTP 200, prose) and one that refuses images.

The planner adapts on its own (``tool_mode=auto``, ``vision`` on until refused), says so in the
prediction's notes, and the run is not a model-service failure (exit 0, not 3). The fake server
(``tests/fakes/openai_server``) emulates both faults as llama.cpp shows them; the last test runs the
real llama.cpp server with SmolLM2-135M (``tests/llama_server.py``), which has both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes.openai_server import FakeOpenAIServer, reply_text

from geoguide.app.cli import main
from tests.synthetic import PLACES, make_reference_set, place_image

PARIS = PLACES[0]
IGNORED = "planner: the server ignored tools="
TEXT_ONLY = "planner: the server refused the photo"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(a query photo of Paris, the index of the synthetic set, a replayed Paris prior)."""
    root = tmp_path_factory.mktemp("adapts")
    labels = make_reference_set(root)
    index = root / "idx"
    assert main(["index", "build", "--images", str(root / "images"), "--labels", str(labels), "--out", str(index),
                 "--descriptor", "thumbnail", "--submaps", "country,kmeans:3", "--descriptor-opt", "size=8"]) == 0
    photo = root / "q_paris.jpg"
    place_image(0, variant=7).save(photo, quality=95)
    prior = root / "prior.csv"
    prior.write_text("IMG_ID,LAT_pred,LON_pred,location,success,model_name\n"
                     f"q_paris.jpg,{PARIS[1]},{PARIS[2]},Paris,True,gemini\n")
    return photo, index, prior


def _locate(world, planner_spec: str, tmp_path: Path, capsys, *extra: str) -> tuple[int, dict]:
    photo, index, prior = world
    capsys.readouterr()
    rc = main(["locate", str(photo), "--index", str(index), "--vlm", f"replay:{prior}", "--policy", "llm",
               "--planner", planner_spec, "--cache", str(tmp_path / "c.sqlite"), "--json", *extra])
    out = capsys.readouterr().out
    return rc, (json.loads(out) if out.strip().startswith("{") else {})


def _action(name: str, arguments: dict) -> str:
    return json.dumps({"thought": "checking", "action": {"name": name, "arguments": arguments}})


def test_llama_cpp_like_server_is_planned_in_json_mode_and_text_only(world, tmp_path, capsys, monkeypatch):
    """Both faults at once, as llama.cpp + SmolLM2 has them: the image is refused (one wasted call),
    then ``tools=`` are ignored (one more), and every later turn goes straight to json mode."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with FakeOpenAIServer(emulate=("no_vision", "ignores_tools")) as server:
        server.script(reply_text(_action("search_submap", {"submap_id": "country:FR", "k": 5})),
                      reply_text(_action("submit_location", {"lat": PARIS[1], "lon": PARIS[2], "confidence": 0.7,
                                                             "evidence": "paris matches"})))
        rc, pred = _locate(world, f"openai-compatible:{server.base_url}:smollm2", tmp_path, capsys)
        assert rc == 0, pred
        bodies = [r.body for r in server.requests]
    assert len(bodies) == 4
    assert "image_url" in json.dumps(bodies[0]["messages"])  # refused: HTTP 500
    assert "image_url" not in json.dumps(bodies[1:]) and "tools" in bodies[1]  # ignored: prose
    assert all("tools" not in b and b["response_format"]["type"] == "json_schema" for b in bodies[2:])
    assert pred["tool_calls"] == 2 and pred["source"] == "llm" and pred["service_failure"] is None
    assert [s["submap_id"] for s in pred["trail"]] == ["country:FR"]
    assert sum(n.startswith(IGNORED) for n in pred["notes"]) == 1
    assert sum(n.startswith(TEXT_ONLY) and "image input is not supported" in n for n in pred["notes"]) == 1


def test_an_image_refusal_is_not_a_model_service_failure(world, tmp_path, capsys, monkeypatch):
    """Before: exit 3, "this model cannot see images ... pass vision=false". Now the planner goes on blind."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from fakes.openai_server import reply_tool_calls

    with FakeOpenAIServer(emulate="no_vision") as server:
        server.script(reply_tool_calls(("submit_location", {"lat": PARIS[1], "lon": PARIS[2]})))
        rc, pred = _locate(world, f"openai-compatible:{server.base_url}:text-model", tmp_path, capsys)
        assert len(server.requests) == 2
    assert rc == 0 and pred["source"] == "llm" and pred["service_failure"] is None
    assert any(n.startswith(TEXT_ONLY) for n in pred["notes"]) and not any(n.startswith(IGNORED) for n in pred["notes"])


@pytest.fixture
def fresh_llama_server():
    """A llama.cpp server of its own (loads in 0.4 s): on the shared one, requests other tests made
    before leave its prompt cache in another state, and SmolLM2's greedy replies change with it
    (measured: 1 tool call alone, 0 after tests/unit/test_llama_server.py on the same server)."""
    from tests.llama_server import require_packages, start_llama_server

    require_packages()
    server = start_llama_server()
    try:
        yield server
    finally:
        server.stop()


def test_smollm2_on_llama_cpp_calls_tools_with_no_planner_options(world, tmp_path, capsys, monkeypatch,
                                                                   fresh_llama_server):
    """The issue's case, on the real server: no ``--planner-opt`` at all, and at least one tool call.

    Measured on a shared 2-core machine (one decoding thread): the refused image 0.2 s, the probe
    (256 prose tokens) 17 s, the first json action 18 s (the tool catalogue is new prompt), later
    actions 5-8 s. The budget is generous because that machine's load varies; the model-call cap
    (the replayed prior, the refused image, the probe, then three json actions) ends the run soon
    after the point is made. (Capping tool calls instead changes the prompt, "at most 1 tool
    calls", and SmolLM2 then rambled inside the action's thought until the token limit.)
    """
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rc, pred = _locate(world, fresh_llama_server.spec, tmp_path, capsys, "--timeout", "150", "--max-seconds", "300",
                       "--set", "caps.max_model_calls=7")
    assert rc == 0, json.dumps({k: pred.get(k) for k in ("notes", "service_failure", "usage", "timings")})[:3000]
    print(f"\n{pred['tool_calls']} tool calls, {pred['usage']['model_calls']} model calls, notes {pred['notes']}")
    assert pred["tool_calls"] >= 1
    assert sum(n.startswith(IGNORED) for n in pred["notes"]) == 1
    assert sum(n.startswith(TEXT_ONLY) and "image input is not supported" in n for n in pred["notes"]) == 1
    assert pred["service_failure"] is None
