"""Per-model options, strict structured outputs and tool modes, against a server that validates like the real API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from fakes.openai_server import (
    LLAMA_CPP_NO_VISION,
    FakeOpenAIServer,
    api_error,
    http_error,
    openai_violation,
    reply_json,
    reply_refusal,
    reply_text,
    reply_tool_calls,
    strict_schema_problem,
)
from PIL import Image
from pydantic import BaseModel, Field

from geoguide.agent.backends import (
    BackendConfigError,
    CallFailed,
    NotSupportedError,
    make_backend,
    parse_backend_options,
    usage_of,
    user_message,
)
from geoguide.agent.backends.chat_model import to_openai
from geoguide.agent.backends.media import NO_VISION_TEXT
from geoguide.agent.backends.openai_backend import (
    ACTION_MAX_TOKENS,
    PROBE_MAX_TOKENS,
    OpenAIBackend,
    is_reasoning_model,
)
from geoguide.agent.backends.structured import (
    ACTION_THOUGHT_CHARS,
    action_schema,
    parse_action_reply,
    parse_tool_call_blocks,
    strict_json_schema,
    strict_tools,
)
from geoguide.agent.schemas import Perception
from geoguide.agent.toolbox import openai_tools

FAST = {"timeout": 2.0, "retry_initial_s": 0.01, "retry_max_s": 0.05, "max_attempts": 2}
GOOD = {
    "clues": [{"kind": "script", "text": "French on shop signs"}],
    "countries": [{"iso2": "FR", "name": "France", "probability": 0.7}],
    "lat": 48.85,
    "lon": 2.35,
    "uncertainty_km": 50,
    "rationale": "Parisian boulevard.",
}
TOOLS = openai_tools()
PLAN = [{"role": "system", "content": "You plan."}, {"role": "user", "content": "prior: FR"}]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def emulated() -> Iterator[FakeOpenAIServer]:
    """A server that validates requests as the OpenAI API does."""
    with FakeOpenAIServer(emulate="openai") as server:
        yield server


@pytest.fixture
def no_tools() -> Iterator[FakeOpenAIServer]:
    """A local server without tool calling (and the API's strict-schema rules for what it does accept)."""
    with FakeOpenAIServer(emulate=("openai", "no_tools")) as server:
        yield server


@pytest.fixture
def photo() -> Image.Image:
    return Image.new("RGB", (640, 480), (40, 120, 200))


def openai_backend(server: FakeOpenAIServer, model: str, **options: Any) -> OpenAIBackend:
    backend = make_backend(f"openai:{model}", base_url=server.base_url, **{**FAST, **options})
    assert isinstance(backend, OpenAIBackend)
    return backend


def compat(server: FakeOpenAIServer, model: str = "qwen2.5-vl", **options: Any) -> OpenAIBackend:
    backend = make_backend(f"openai-compatible:{server.base_url}:{model}", **{**FAST, **options})
    assert isinstance(backend, OpenAIBackend)
    return backend


def action(name: str, arguments: dict[str, Any], thought: str = "checking") -> str:
    return json.dumps({"thought": thought, "action": {"name": name, "arguments": arguments}})


# --- reasoning models and per-family defaults -------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [("o1", True), ("o3-mini", True), ("o4-mini-2025-04-16", True), ("gpt-5", True), ("gpt-5-mini", True),
     ("openai/gpt-5.1", True), ("gpt-5-chat-latest", False), ("gpt-4o", False), ("gpt-4.1-mini", False),
     ("omni-moderation-latest", False), ("llava:13b", False)],
)
def test_reasoning_model_names(model: str, reasoning: bool) -> None:
    assert is_reasoning_model(model) is reasoning


@pytest.mark.parametrize("model", ["o3-mini", "gpt-5-mini"])
def test_reasoning_model_gets_a_request_the_api_accepts(emulated: FakeOpenAIServer, photo: Image.Image, model: str) -> None:
    emulated.script(reply_json(GOOD))
    outcome = openai_backend(emulated, model).perceive(photo, "Where is this? Answer in JSON.")

    assert outcome.error is None and outcome.perception is not None
    body = emulated.requests[0].body
    assert "temperature" not in body and "seed" not in body and "max_tokens" not in body
    assert body["max_completion_tokens"] == 25_000  # room for hidden reasoning tokens
    assert len(emulated.requests) == 1


def test_the_old_request_is_what_the_emulator_refuses(emulated: FakeOpenAIServer, photo: Image.Image) -> None:
    """temperature=0 (the old default) and max_tokens on a reasoning model: HTTP 400, as from the API."""
    assert openai_violation({"model": "o3", "temperature": 0.0}).body["error"]["code"] == "unsupported_value"
    refusal = openai_violation({"model": "gpt-5", "max_tokens": 10}).body["error"]
    assert refusal["param"] == "max_tokens" and "max_completion_tokens" in refusal["message"]
    assert openai_violation({"model": "gpt-4o", "temperature": 0.0, "max_tokens": 10}) is None

    emulated.script(reply_json(GOOD))
    outcome = openai_backend(emulated, "o3", temperature=0.0).perceive(photo, "Where? JSON.")
    assert outcome.failure == "misconfigured" and "temperature" in outcome.error
    assert emulated.pending == 1  # refused before the script was consulted


def test_user_options_reach_the_request(emulated: FakeOpenAIServer, photo: Image.Image) -> None:
    options = parse_backend_options(["reasoning_effort=low", "max_completion_tokens=4000", "seed=7", "temperature=1"])
    emulated.script(reply_json(GOOD))
    assert openai_backend(emulated, "o4-mini", **options).perceive(photo, "Where? JSON.").perception is not None
    body = emulated.requests[0].body
    assert (body["reasoning_effort"], body["max_completion_tokens"], body["seed"], body["temperature"]) == ("low", 4000, 7, 1.0)


def test_non_reasoning_models_keep_temperature_zero(emulated: FakeOpenAIServer, photo: Image.Image) -> None:
    emulated.script(reply_json(GOOD))
    assert openai_backend(emulated, "gpt-4o").perceive(photo, "Where? JSON.").perception is not None
    body = emulated.requests[0].body
    assert body["temperature"] == 0.0 and body["max_completion_tokens"] == 1024 and "reasoning_effort" not in body


def test_compatible_server_max_tokens_spelling(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(reply_json(GOOD), reply_json(GOOD), reply_json(GOOD))
    compat(fake_openai, max_tokens=300).perceive(photo, "Where? JSON.")
    compat(fake_openai, max_completion_tokens=300).perceive(photo, "Where? JSON.")
    compat(fake_openai, "gpt-5-mini").perceive(photo, "Where? JSON.")  # a proxy to a reasoning model
    first, second, third = (r.body for r in fake_openai.requests)
    assert first["max_tokens"] == 300 and "max_completion_tokens" not in first
    assert second["max_completion_tokens"] == 300 and "max_tokens" not in second
    assert "max_tokens" not in third and "temperature" not in third
    with pytest.raises(BackendConfigError, match="not both"):
        compat(fake_openai, max_tokens=1, max_completion_tokens=1)


def test_options_are_in_the_cache_key(fake_openai: FakeOpenAIServer, photo: Image.Image, tmp_path) -> None:
    db = tmp_path / "c.sqlite"
    fake_openai.script(reply_json(GOOD), reply_json(GOOD), reply_json(GOOD))
    compat(fake_openai, "o3", cache=db).perceive(photo, "Where? JSON.")
    compat(fake_openai, "o3", cache=db).perceive(photo, "Where? JSON.")  # hit
    compat(fake_openai, "o3", cache=db, reasoning_effort="high").perceive(photo, "Where? JSON.")
    compat(fake_openai, "o3", cache=db, temperature=1.0).perceive(photo, "Where? JSON.")
    assert len(fake_openai.requests) == 3


# --- structured outputs for perception ---------------------------------------------------------------


def test_strict_perception_schema_is_accepted(emulated: FakeOpenAIServer, photo: Image.Image) -> None:
    emulated.script(reply_json(GOOD))
    outcome = openai_backend(emulated, "gpt-4o").perceive(photo, "Where? JSON.")
    assert outcome.perception is not None and len(emulated.requests) == 1
    fmt = emulated.requests[0].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and set(schema["required"]) == set(Perception.model_fields)
    assert strict_schema_problem(Perception.model_json_schema()) is not None  # pydantic's own schema would be refused


def test_refused_schema_steps_down(emulated: FakeOpenAIServer, photo: Image.Image) -> None:
    emulated.script(http_error(400, "Invalid schema for response_format 'perception': bad"), reply_json(GOOD))
    backend = openai_backend(emulated, "gpt-4o")
    assert backend.perceive(photo, "Where? JSON.").perception is not None
    assert emulated.requests[1].body["response_format"] == {"type": "json_object"}


def test_structured_refusal_is_final(emulated: FakeOpenAIServer, photo: Image.Image) -> None:
    emulated.script(reply_refusal("I can't help with that."))
    outcome = openai_backend(emulated, "gpt-4o").perceive(photo, "Where? JSON.")
    assert outcome.failure == "refused" and len(emulated.requests) == 1


class _Args(BaseModel):
    """Shapes strict mode refuses as pydantic writes them: a tuple, defaults, a string length."""

    near: tuple[float, float] | None = None
    limit: int = Field(10, ge=1, le=500)
    name: str = Field(min_length=1, max_length=200, description="a place")
    mode: Literal["a", "b"] | None = None


def test_strict_json_schema_transform() -> None:
    params = _Args.model_json_schema()
    before = json.dumps(params, sort_keys=True)
    assert strict_schema_problem(params) is not None
    strict = strict_json_schema(params)
    assert json.dumps(params, sort_keys=True) == before  # the input is not modified
    assert strict == strict_json_schema(_Args)
    near = strict["properties"]["near"]["anyOf"][0]
    assert "prefixItems" not in near and near["items"] == {"type": "number"} and near["maxItems"] == 2
    assert strict["properties"]["limit"]["description"] == "default: 10"
    assert strict["properties"]["limit"]["maximum"] == 500  # bounds that strict mode supports stay
    assert strict["properties"]["name"]["description"] == "a place (length >= 1; length <= 200)"
    assert strict["required"] == ["near", "limit", "name", "mode"]
    assert strict_schema_problem(strict) is None
    assert strict_schema_problem(strict_json_schema(Perception)) is None


# --- native tools ------------------------------------------------------------------------------------


def test_native_strict_tools_are_accepted(emulated: FakeOpenAIServer) -> None:
    emulated.script(reply_tool_calls(("search_submap", {"submap_id": "country:FR", "k": 5})))
    turn = openai_backend(emulated, "gpt-4o").chat(PLAN, tools=TOOLS)
    assert [(c["name"], c["args"]) for c in turn.tool_calls] == [("search_submap", {"submap_id": "country:FR", "k": 5})]
    sent = emulated.requests[0].body["tools"]
    assert all(t["function"]["strict"] is True for t in sent) and len(emulated.requests) == 1
    unstrict = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    refusal = openai_violation({"model": "gpt-4o", "tools": unstrict}).body["error"]
    assert refusal["code"] == "invalid_function_parameters" and "additionalProperties" in refusal["message"]


def test_tool_choice_without_tools_is_refused() -> None:
    assert openai_violation({"model": "gpt-4o", "tool_choice": "auto"}).body["error"]["param"] == "tool_choice"


# --- json tool mode ------------------------------------------------------------------------------------


def test_json_tool_mode_against_a_server_without_tools(no_tools: FakeOpenAIServer) -> None:
    no_tools.script(reply_text(action("search_submap", {"submap_id": "country:FR", "k": 5}, "The prior says France.")))
    backend = compat(no_tools, tool_mode="json")
    turn = backend.chat(PLAN, tools=TOOLS)

    assert turn.content == "The prior says France."
    [call] = turn.tool_calls
    assert call["name"] == "search_submap" and call["args"] == {"submap_id": "country:FR", "k": 5}
    assert call["id"].startswith("call_")
    body = no_tools.requests[0].body
    assert "tools" not in body and "tool_choice" not in body
    fmt = body["response_format"]
    # A compatible server: the thought is bounded (its grammar stops it), so the schema is not strict.
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is False
    thought = fmt["json_schema"]["schema"]["properties"]["thought"]
    assert thought["maxLength"] == ACTION_THOUGHT_CHARS and body["max_tokens"] == ACTION_MAX_TOKENS
    variants = fmt["json_schema"]["schema"]["properties"]["action"]["anyOf"]
    assert [v["properties"]["name"]["enum"] for v in variants] == [[t["function"]["name"]] for t in TOOLS]
    system = body["messages"][0]["content"]
    assert system.startswith("You plan.") and "exactly one JSON object" in system and "- search_submap:" in system

    # The next turn: the native-format history is rewritten into turns such a server accepts.
    no_tools.script(reply_text(action("submit_location", {"lat": 48.85, "lon": 2.35, "confidence": 0.8, "evidence": "x"})))
    history = [*PLAN, to_openai([turn])[0], {"role": "tool", "tool_call_id": call["id"], "content": '{"ok": true}'}]
    second = backend.chat(history, tools=TOOLS)
    assert second.tool_calls[0]["name"] == "submit_location"
    sent = no_tools.requests[1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert json.loads(sent[2]["content"])["action"]["name"] == "search_submap"
    assert sent[3]["content"].startswith("Result of search_submap:") and all("tool_calls" not in m for m in sent)


def test_json_tool_mode_steps_down_response_format(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(http_error(400, "response_format json_schema is not supported"),
                       reply_text("```json\n" + action("geocode", {"name": "Paris", "country": None, "limit": 5}) + "\n```"))
    turn = compat(fake_openai, tool_mode="json").chat(PLAN, tools=TOOLS)
    assert turn.tool_calls[0]["args"] == {"name": "Paris", "country": None, "limit": 5}
    assert fake_openai.requests[1].body["response_format"] == {"type": "json_object"}


def test_auto_mode_steps_down_after_a_tools_rejection(no_tools: FakeOpenAIServer) -> None:
    no_tools.script(reply_text(action("list_submaps", {"scheme": "country", "near": None, "country": "FR", "limit": 5})))
    backend = compat(no_tools)  # openai-compatible defaults to tool_mode=auto
    turn = backend.chat(PLAN, tools=TOOLS)
    assert turn.tool_calls[0]["name"] == "list_submaps" and usage_of(turn).retries == 0
    first, second = (r.body for r in no_tools.requests)
    assert "tools" in first and "tools" not in second and second["response_format"]["type"] == "json_schema"

    no_tools.script(reply_text(action("widen", {"submap_id": "country:FR", "near_lat": None, "near_lon": None})))
    assert backend.chat(PLAN, tools=TOOLS).tool_calls[0]["name"] == "widen"
    assert len(no_tools.requests) == 3  # remembered: no second refused round-trip


def test_auto_is_the_default_tool_mode(fake_openai: FakeOpenAIServer) -> None:
    assert compat(fake_openai).tool_mode == "auto"
    assert openai_backend(fake_openai, "gpt-4o").tool_mode == "auto"


def test_auto_mode_switches_to_json_when_tools_are_ignored(tmp_path) -> None:
    """llama.cpp + SmolLM2: HTTP 200 and prose to ``tools=``. One wasted call, then json for good."""
    search = action("search_submap", {"submap_id": "country:FR", "k": 5})
    submit = action("submit_location", {"lat": 48.85, "lon": 2.35, "confidence": 0.5, "evidence": "x"})
    with FakeOpenAIServer(emulate="ignores_tools") as server:
        server.script(reply_text(search), reply_text(submit))
        backend = compat(server, cache=str(tmp_path / "c.sqlite"))
        turn = backend.chat(PLAN, tools=TOOLS)
        assert [c["name"] for c in turn.tool_calls] == ["search_submap"]
        first, second = (r.body for r in server.requests)
        assert "tools" in first and "tools" not in second and second["response_format"]["type"] == "json_schema"
        assert (first["max_tokens"], second["max_tokens"]) == (PROBE_MAX_TOKENS, ACTION_MAX_TOKENS)  # both bounded
        assert usage_of(turn).model_calls == 2 and usage_of(turn).prompt_tokens == 300 + 100  # the wasted call is counted
        [note] = backend.adaptations()
        assert note.startswith("the server ignored tools=") and "JSON-schema mode" in note

        history = [*PLAN, to_openai([turn])[0], {"role": "tool", "tool_call_id": turn.tool_calls[0]["id"], "content": "{}"}]
        assert backend.chat(history, tools=TOOLS).tool_calls[0]["name"] == "submit_location"
        assert len(server.requests) == 3 and "tools" not in server.requests[2].body  # straight to json
        assert backend.adaptations() == [note]
        backend.close()

        # A re-run on the same cache remembers the server: straight to json (no probe), replayed.
        again = compat(server, cache=str(tmp_path / "c.sqlite"))
        replayed = again.chat(PLAN, tools=TOOLS)
        assert replayed.tool_calls[0]["name"] == "search_submap" and usage_of(replayed).cache_hits == 1
        assert usage_of(replayed).model_calls == 1 and len(server.requests) == 3
        [remembered] = again.adaptations()
        assert "on an earlier run" in remembered and "JSON-schema mode" in remembered
        again.close()
        # An option the user sets wins over the memory: tool_mode=native asks natively again.
        server.script(reply_text("prose"))
        native = compat(server, cache=str(tmp_path / "c.sqlite"), tool_mode="native")
        native.chat([*PLAN, {"role": "user", "content": "again"}], tools=TOOLS)
        assert "tools" in server.requests[-1].body and native.adaptations() == []
        native.close()


def test_a_refused_photo_is_remembered_per_server_and_model(tmp_path) -> None:
    """The next run on the same cache sends no image to a server that refused one, and says so;
    another model on the same server is asked afresh."""
    search = action("search_submap", {"submap_id": "country:FR", "k": 5})
    with FakeOpenAIServer(emulate="no_vision") as server:
        server.script(reply_text(search))
        photo_plan = [PLAN[0], {"role": "user", "content": [
            {"type": "text", "text": "Where?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
        first = compat(server, cache=str(tmp_path / "c.sqlite"), tool_mode="json")
        first.chat(photo_plan, tools=TOOLS)
        assert len(server.requests) == 2 and not first.vision  # refused, then asked blind
        first.close()
        server.script(reply_text(search))
        second = compat(server, cache=str(tmp_path / "c.sqlite"), tool_mode="json")
        assert not second.vision and any("refused photos on an earlier run" in a for a in second.adaptations())
        second.chat([*photo_plan, {"role": "user", "content": "go on"}], tools=TOOLS)
        assert len(server.requests) == 3 and "image_url" not in json.dumps(server.requests[-1].body)
        second.close()
        other = compat(server, "another-model", cache=str(tmp_path / "c.sqlite"), tool_mode="json")
        assert other.vision and other.adaptations() == []
        other.close()
        with pytest.raises(NotSupportedError, match="refused photos on an earlier run"):  # as a VLM: says why
            compat(server, cache=str(tmp_path / "c.sqlite")).perceive(b"\x89PNG", "where?")


def test_an_explicit_option_that_works_clears_the_memory(tmp_path) -> None:
    """The server was fixed (an mmproj added): vision=true asked once and answered, the refusal is
    forgotten, and the next run with no option sends the photo again."""
    search = action("search_submap", {"submap_id": "country:FR", "k": 5})
    photo_plan = [PLAN[0], {"role": "user", "content": [
        {"type": "text", "text": "Where?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
    db = str(tmp_path / "c.sqlite")
    with FakeOpenAIServer(emulate="no_vision") as server:
        server.script(reply_text(search))
        first = compat(server, cache=db, tool_mode="json")
        first.chat(photo_plan, tools=TOOLS)
        first.close()
        server.emulate = ()  # the server can see now
        server.script(reply_text(search), reply_text(search))
        asked = compat(server, cache=db, tool_mode="json", vision=True)
        asked.chat([*photo_plan, {"role": "user", "content": "again"}], tools=TOOLS)
        assert "image_url" in json.dumps(server.requests[-1].body)
        asked.close()
        later = compat(server, cache=db, tool_mode="json")
        assert later.vision and later.adaptations() == []
        later.chat([*photo_plan, {"role": "user", "content": "once more"}], tools=TOOLS)
        assert "image_url" in json.dumps(server.requests[-1].body)
        later.close()


def test_the_openai_api_gets_a_strict_action_schema(emulated: FakeOpenAIServer) -> None:
    """The API's strict subset has no maxLength: json actions to it stay strict and unbounded in
    characters (its own tokens limit still bounds them)."""
    emulated.script(reply_text(action("search_submap", {"submap_id": "country:FR", "k": 5})))
    backend = openai_backend(emulated, "gpt-4o", tool_mode="json")
    assert backend.chat(PLAN, tools=TOOLS).tool_calls[0]["name"] == "search_submap"
    fmt = emulated.requests[0].body["response_format"]["json_schema"]
    assert fmt["strict"] is True and "maxLength" not in json.dumps(fmt["schema"])


def test_auto_mode_settles_native_on_a_first_tool_call(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(reply_tool_calls(("search_submap", {"submap_id": "country:FR", "k": 5})),
                       reply_text("I am not sure yet."))
    backend = compat(fake_openai)
    assert backend.chat(PLAN, tools=TOOLS).tool_calls
    assert backend.chat(PLAN, tools=TOOLS).content == "I am not sure yet."  # prose later is the model's choice
    assert len(fake_openai.requests) == 2 and all("tools" in r.body for r in fake_openai.requests)
    assert backend.adaptations() == []


def test_auto_mode_does_not_judge_a_conversation_that_already_holds_calls(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(reply_text("Paris."))
    call = {"id": "c1", "type": "function", "function": {"name": "widen", "arguments": "{}"}}
    history = [*PLAN, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "c1", "content": "{}"}]
    backend = compat(fake_openai)
    assert backend.chat(history, tools=TOOLS).content == "Paris."
    assert len(fake_openai.requests) == 1 and backend.adaptations() == []


def test_native_mode_does_not_step_down(no_tools: FakeOpenAIServer) -> None:
    with pytest.raises(CallFailed, match="does not support tools"):
        compat(no_tools, tool_mode="native").chat(PLAN, tools=TOOLS)


def test_auto_mode_ignores_unrelated_400s(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(http_error(400, "context length exceeded"))
    with pytest.raises(CallFailed, match="context length"):
        compat(fake_openai).chat(PLAN, tools=TOOLS)
    assert len(fake_openai.requests) == 1


# --- calls written into plain content --------------------------------------------------------------------


def test_hermes_tool_call_blocks_in_content(fake_openai: FakeOpenAIServer) -> None:
    content = (
        "Let me search France first.\n"
        '<tool_call>\n{"name": "search_submap", "arguments": {"submap_id": "country:FR", "k": 5}}\n</tool_call>\n'
        '<tool_call>{"name": "geocode", "arguments": "{\\"name\\": \\"Lyon\\"}"}'  # unclosed, arguments as a string
    )
    fake_openai.script(reply_text(content))
    turn = compat(fake_openai, tool_mode="native").chat(PLAN, tools=TOOLS)
    assert turn.content == "Let me search France first."
    assert [(c["name"], c["args"]) for c in turn.tool_calls] == [
        ("search_submap", {"submap_id": "country:FR", "k": 5}),
        ("geocode", {"name": "Lyon"}),
    ]
    assert len({c["id"] for c in turn.tool_calls}) == 2
    assert to_openai([turn])[0]["tool_calls"][0]["function"]["name"] == "search_submap"


def test_broken_json_still_comes_back_as_a_call(fake_openai: FakeOpenAIServer) -> None:
    broken = '<tool_call>{"name": "search_submap", "arguments": {"submap_id": "country:FR", </tool_call>'
    fake_openai.script(reply_text(broken), reply_text('{"thought": "x", "action": {"name": "widen", "arguments": {"submap_id": '))
    turn = compat(fake_openai, tool_mode="native").chat(PLAN, tools=TOOLS)
    [call] = turn.invalid_tool_calls
    assert not turn.tool_calls
    assert call["name"] == "search_submap" and "country:FR" in call["args"] and "not valid JSON" in call["error"]
    # It goes back to the server as the model wrote it, beside the error the model reads.
    assert to_openai([turn])[0]["tool_calls"][0]["function"]["arguments"] == call["args"]

    json_turn = compat(fake_openai, tool_mode="json").chat(PLAN, tools=TOOLS)
    [broken] = json_turn.invalid_tool_calls
    assert broken["name"] == "widen" and "not valid JSON" in broken["error"]


def test_prose_in_json_mode_stays_content() -> None:
    assert parse_action_reply("I think this is Paris.") == ("I think this is Paris.", [])
    assert parse_tool_call_blocks("no calls here") == ("no calls here", [])
    thought, [call] = parse_action_reply('{"name": "geocode", "parameters": {"name": "Oslo"}}')  # Llama-style keys
    assert thought is None and json.loads(call["arguments_json"]) == {"name": "Oslo"}


def test_action_schema_is_strict() -> None:
    schema = action_schema(TOOLS)
    assert strict_schema_problem(schema) is None
    assert schema["required"] == ["thought", "action"]
    assert all(t["function"]["strict"] for t in strict_tools(TOOLS))


# --- text-only planner ---------------------------------------------------------------------------------------


def test_text_only_planner_gets_no_image(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(reply_tool_calls(("search_submap", {"submap_id": "global", "k": 5})))
    messages = [{"role": "system", "content": "You plan."}, user_message("prior: FR", photo)]
    backend = compat(fake_openai, vision=False)
    backend.chat(messages, tools=TOOLS)

    sent = fake_openai.requests[0].body["messages"]
    assert "image_url" not in json.dumps(sent)
    assert sent[1]["content"] == f"prior: FR\n{NO_VISION_TEXT}"
    assert messages[1]["content"][1]["type"] == "image_url"  # the caller's history is untouched
    with pytest.raises(NotSupportedError, match="vision=false"):
        backend.perceive(photo, "Where?")


def test_image_refusal_makes_the_planner_text_only(photo: Image.Image) -> None:
    """llama.cpp without an mmproj: HTTP 500 "image input is not supported"; the turn is asked again
    without the image and the backend stays text-only, which its notes say."""
    with FakeOpenAIServer(emulate="no_vision") as server:
        server.script(reply_tool_calls(("search_submap", {"submap_id": "global", "k": 5})),
                      reply_tool_calls(("submit_location", {"lat": 1.0, "lon": 2.0})))
        backend = compat(server)
        messages = [{"role": "system", "content": "You plan."}, user_message("prior: FR", photo)]
        turn = backend.chat(messages, tools=TOOLS)
        assert turn.tool_calls[0]["name"] == "search_submap" and usage_of(turn).model_calls == 2
        refused, kept = (r.body for r in server.requests)
        assert "image_url" in json.dumps(refused) and "image_url" not in json.dumps(kept)
        assert kept["messages"][1]["content"] == f"prior: FR\n{NO_VISION_TEXT}"
        assert backend.vision is False
        [note] = backend.adaptations()
        assert LLAMA_CPP_NO_VISION[:28] in note and "text-only" in note
        assert backend.chat(messages, tools=TOOLS).tool_calls[0]["name"] == "submit_location"
        assert len(server.requests) == 3 and "image_url" not in json.dumps(server.requests[2].body)


def test_openai_wording_of_an_image_refusal(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(api_error("Invalid content type. image_url is only supported by certain models.",
                                 param="messages.[1].content.[1].type"),
                       reply_tool_calls(("widen", {"submap_id": "global"})))
    backend = openai_backend(fake_openai, "gpt-3.5-turbo")
    turn = backend.chat([{"role": "system", "content": "You plan."}, user_message("prior: FR", photo)], tools=TOOLS)
    assert turn.tool_calls[0]["name"] == "widen" and backend.vision is False
    assert "only supported by certain models" in backend.adaptations()[0]


def test_other_failures_are_not_read_as_image_refusals(fake_openai: FakeOpenAIServer, photo: Image.Image) -> None:
    fake_openai.script(http_error(400, "context length exceeded"))
    backend = compat(fake_openai)
    with pytest.raises(CallFailed, match="context length"):
        backend.chat([user_message("prior: FR", photo)], tools=TOOLS)
    assert backend.vision is True and len(fake_openai.requests) == 1


# --- option parsing -------------------------------------------------------------------------------------------


def test_parse_backend_options_types_values() -> None:
    assert parse_backend_options(
        ["temperature=0.2", "reasoning_effort=low", "max_completion_tokens=2048", "seed=none",
         "tool_mode=json", "response_format=none", "vision=false", "strict_tools=yes"]
    ) == {"temperature": 0.2, "reasoning_effort": "low", "max_completion_tokens": 2048, "seed": None,
          "tool_mode": "json", "response_format": "none", "vision": False, "strict_tools": True}
    assert parse_backend_options([]) == {}
    assert parse_backend_options(["temperature=none"]) == {"temperature": None}


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        (["top_k=5"], "unknown model option 'top_k'; allowed: temperature, reasoning_effort"),
        (["temperature"], "not KEY=VALUE"),
        (["temperature=hot"], "temperature"),
        (["temperature=3"], "less than or equal to 2"),
        (["reasoning_effort=extreme"], "reasoning_effort"),
        (["max_tokens=1.5"], "max_tokens"),
        (["tool_mode=xml"], "native"),
        (["seed=1", "seed=2"], "given twice"),
    ],
)
def test_parse_backend_options_refuses(pairs: list[str], match: str) -> None:
    with pytest.raises(BackendConfigError, match=match):
        parse_backend_options(pairs)


def test_backends_refuse_options_they_do_not_take(tmp_path) -> None:
    with pytest.raises(BackendConfigError, match="does not take model option.*tool_mode"):
        make_backend(f"llava:{tmp_path}", tool_mode="json")
    with pytest.raises(BackendConfigError, match="does not take"):
        make_backend("none", temperature=0.1)
    with pytest.raises(BackendConfigError, match="tool_mode must be one of"):
        make_backend("openai:gpt-4o", tool_mode="xml")
