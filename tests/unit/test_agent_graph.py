"""The graph the LangGraph way: compiled once, context per run, one thread per photo in a chat,
no pixels in checkpoints, a separate (text-only) planner, and the graph drawn for the README."""

from __future__ import annotations

import sqlite3

from fakes.openai_server import reply_json, reply_tool_calls

from geoguide.agent.backends import make_backend
from geoguide.agent.chat import ChatSession
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext
from geoguide.agent.graph import compiled_graph, locate
from tests.synthetic import PLACES, place_image

TOKYO, PARIS = PLACES[7], PLACES[0]


def _prior(place) -> dict:
    name, lat, lon, iso = place
    return {"countries": [{"iso2": iso, "probability": 0.8}], "lat": lat, "lon": lon, "rationale": name}


def _photos(tmp_path):
    out = {}
    for i, place in ((7, TOKYO), (0, PARIS)):
        p = tmp_path / f"q_{place[0]}.jpg"
        place_image(i, variant=7).save(p, quality=95)
        out[place[0]] = p
    return out


def _llm_ctx(index, server, **options) -> AgentContext:
    backend = make_backend(f"openai-compatible:{server.base_url}:fake-vlm", timeout=5.0, retry_initial_s=0.01,
                           **options)
    return AgentContext(index=index, backend=backend, config=AgentConfig(policy="llm"))


def test_one_compiled_graph_serves_every_context(synthetic_index, tmp_path):
    photos = _photos(tmp_path)
    g = compiled_graph()
    assert compiled_graph() is g
    for policy in ("rules", "prior"):
        ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig(policy=policy))
        pred = locate(ctx, photos["paris"], graph=g)
        assert pred.policy == policy
    mermaid = g.get_graph().draw_mermaid()
    assert all(n in mermaid for n in ("perceive", "plan", "tools", "finalize", "follow_up"))


def test_two_photos_in_one_chat_session_get_their_own_answers(synthetic_index, fake_openai, tmp_path):
    """The old chat ran every photo on one thread, so with --policy llm a Tokyo photo was answered at Paris."""
    photos = _photos(tmp_path)
    fake_openai.script(
        reply_json(_prior(PARIS)),
        reply_tool_calls(("search_submap", {"submap_id": "country:FR", "k": 5})),
        reply_tool_calls(("submit_location", {"lat": PARIS[1], "lon": PARIS[2], "confidence": 0.9})),
        reply_json(_prior(TOKYO)),
        reply_tool_calls(("search_submap", {"submap_id": "country:JP", "k": 5})),
        reply_tool_calls(("submit_location", {"lat": TOKYO[1], "lon": TOKYO[2], "confidence": 0.9})),
    )
    db = tmp_path / "sessions.sqlite"
    chat = ChatSession(_llm_ctx(synthetic_index, fake_openai), db, "s1")
    first = chat.attach(photos["paris"])
    second = chat.attach(photos["tokyo"])
    assert (first.lat, first.country) == (PARIS[1], "FR")
    assert (second.lat, second.country) == (TOKYO[1], "JP")
    st = chat.state()
    assert [s.submap_id for s in st.trail] == ["country:JP"]  # nothing inherited from the Paris photo
    assert all(c.country == "JP" for c in st.candidates)
    # The Tokyo planner conversation never saw the Paris one.
    tokyo_plan = fake_openai.requests[4].body["messages"]
    assert not any("country:FR" in str(m.get("content")) for m in tokyo_plan)
    chat.close()
    # A restart resumes the session at its latest photo, with the transcript of both.
    resumed = ChatSession(_llm_ctx(synthetic_index, fake_openai), db, "s1", must_exist=True)
    st = resumed.state()
    assert st.prediction.country == "JP" and len(st.chat) == 4
    # Follow-ups run through the graph's follow_up node on the photo's own thread, for this policy too.
    n_requests = len(fake_openai.requests)
    assert "Portugal" in resumed.ask("why not Portugal?")
    reply = resumed.ask("look near Osaka instead")
    assert "Osaka" in reply and len(fake_openai.requests) == n_requests  # answered from the evidence, no model
    st = resumed.state()
    assert st.trail[-1].purpose == "user" and len(st.chat) == 8 and st.question is None
    resumed.close()
    # Checkpoints hold the image's path and hash, never its pixels.
    with sqlite3.connect(db) as conn:
        blobs = b"".join(row[0] for row in conn.execute("SELECT checkpoint FROM checkpoints"))
        blobs += b"".join(row[0] or b"" for row in conn.execute("SELECT value FROM writes"))
    assert b"data:image" not in blobs and b"base64" not in blobs


def test_separate_text_only_planner_never_sees_the_photo(synthetic_index, fake_openai, tmp_path):
    photos = _photos(tmp_path)
    replay_prior = tmp_path / "prior.csv"
    replay_prior.write_text("IMG_ID,LAT_pred,LON_pred,location,success,model_name\n"
                            f"q_paris.jpg,{PARIS[1]},{PARIS[2]},Paris,True,gemini\n")
    fake_openai.script(
        reply_tool_calls(("search_submap", {"submap_id": "country:FR", "k": 5})),
        reply_tool_calls(("submit_location", {"lat": PARIS[1], "lon": PARIS[2], "confidence": 0.7})),
    )
    planner = make_backend(f"openai-compatible:{fake_openai.base_url}:text-planner", timeout=5.0, vision=False)
    ctx = AgentContext(index=synthetic_index, backend=make_backend(f"replay:{replay_prior}"),
                       config=AgentConfig(policy="llm"), planner=planner)
    pred = locate(ctx, photos["paris"], image_id="q_paris.jpg")
    assert pred.source == "llm" and pred.prior is not None and pred.planner.endswith("text-planner")
    for req in fake_openai.requests:
        assert req.body["model"] == "text-planner"
        assert "image_url" not in str(req.body["messages"])


def test_a_failure_inside_a_tool_is_not_swallowed(synthetic_index, tmp_path, monkeypatch):
    """Only argument errors go back to the model; a broken descriptor or index ends the run loudly."""
    import pytest

    photos = _photos(tmp_path)
    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())

    def broken(*args, **kwargs):
        raise RuntimeError("descriptor weights vanished")

    monkeypatch.setattr(ctx, "query_vector", broken)
    with pytest.raises(RuntimeError, match="weights vanished"):
        locate(ctx, photos["paris"])


def test_two_submissions_in_one_turn_keep_the_first(synthetic_index, fake_openai, tmp_path):
    photos = _photos(tmp_path)
    fake_openai.script(
        reply_json(_prior(PARIS)),
        reply_tool_calls(("submit_location", {"lat": PARIS[1], "lon": PARIS[2]}),
                         ("submit_location", {"lat": 0.0, "lon": 0.0})),
    )
    pred = locate(_llm_ctx(synthetic_index, fake_openai), photos["paris"])
    assert (pred.lat, pred.lon) == (PARIS[1], PARIS[2]) and pred.source == "llm"


def test_a_failed_image_keeps_the_session_on_its_photo(synthetic_index, tmp_path):
    import pytest

    from geoguide.core.images import ImageLoadError

    photos = _photos(tmp_path)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a photo")
    ctx = AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())
    chat = ChatSession(ctx, tmp_path / "s.sqlite", "s2")
    first = chat.attach(photos["paris"])
    with pytest.raises(ImageLoadError):
        chat.attach(bad)
    assert chat.state().prediction.lat == first.lat  # still the Paris photo
    assert "in Spain" in chat.ask("why not Spain?")
    chat.close()


def test_a_call_that_already_failed_is_refused_not_rerun(synthetic_index, fake_openai, tmp_path):
    """A small model repeats a failing call until the cap; the repeat is refused with valid ids."""
    photos = _photos(tmp_path)
    bad = ("search_submap", {"submap_id": "country:ZZ", "k": 5})
    fake_openai.script(reply_json(_prior(PARIS)), reply_tool_calls(bad), reply_tool_calls(bad),
                       reply_tool_calls(("submit_location", {"lat": PARIS[1], "lon": PARIS[2]})))
    events = []
    pred = locate(_llm_ctx(synthetic_index, fake_openai), photos["paris"], on_event=events.append)
    assert pred.tool_calls == 2  # the failed search and the submission; the repeat never ran
    refused = [e for e in events if e.text.startswith("refused search_submap")]
    assert len(refused) == 1 and "already failed" in refused[0].text
    last_tool = [m for m in fake_openai.requests[-1].body["messages"] if m.get("role") == "tool"][-1]
    assert "country:FR" in last_tool["content"]  # the refusal lists ids that exist


def test_a_planner_that_repeats_a_refused_call_is_stopped(synthetic_index, fake_openai, tmp_path):
    """Told that the exact call failed, the model made it again: it will go on doing so at
    temperature 0 (SmolLM2 did, 7 times), so the run answers with what is known instead."""
    photos = _photos(tmp_path)
    bad = ("search_submap", {"submap_id": "country:ZZ", "k": 5})
    fake_openai.script(reply_json(_prior(PARIS)), reply_tool_calls(bad), reply_tool_calls(bad), reply_tool_calls(bad),
                       reply_tool_calls(("submit_location", {"lat": 0.0, "lon": 0.0})))
    pred = locate(_llm_ctx(synthetic_index, fake_openai), photos["paris"])
    assert len(fake_openai.requests) == 4  # the prior, the failed call, two repeats; no fourth planner turn
    assert any("repeated a call that had failed" in n for n in pred.notes)
    assert pred.lat is not None and pred.source != "llm"  # answered from the evidence, not the planner
