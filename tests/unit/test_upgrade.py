"""Files written by geoguide 0.1.0 (six top-level import names, before ``geoguide.*``) still open
and resume: indices (a base, and one with a segment and a tombstone), a terminal chat session, the
web server's state folder and the response cache. The fixtures were written by that release's code
(``tests/fixtures/release-0.1.0/README.md`` says how); ``expected.json`` is what it answered.

The trap they guard: a session stores its models' types as (module, class) pairs, and those module
paths changed (``agent.state`` -> ``geoguide.agent.state``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from geoguide.agent.backends import make_backend
from geoguide.agent.chat import ChatSession
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext, SerialDescriptor
from geoguide.app.cli import main
from geoguide.indices.store import ReferenceIndex
from tests.synthetic import place_image

RELEASE = Path(__file__).resolve().parents[1] / "fixtures" / "release-0.1.0"
EXPECTED = json.loads((RELEASE / "expected.json").read_text())


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A writable copy of the release's files (resuming writes to them)."""
    root = tmp_path / "release"
    shutil.copytree(RELEASE, root)
    (root / "prior.csv").write_text((RELEASE / "prior.csv").read_text())
    return root


@pytest.fixture
def query(tmp_path: Path) -> Path:
    path = tmp_path / "q_paris.jpg"
    place_image(0, variant=7).save(path, quality=95)
    return path


def _ctx(root: Path) -> AgentContext:
    return AgentContext(index=ReferenceIndex(root / "index"), backend=make_backend(f"replay:{root / 'prior.csv'}"),
                        config=AgentConfig())


def _answer(pred: dict) -> tuple:
    """The answer and its three best candidates. (0.2 re-ranks in units of the map's similarity
    spread and counts corroborating neighbours instead of summing their similarities: candidates
    that do not match at all, similarity ~ -0.03 here, may trade places below those.)"""
    return (pred["lat"], pred["lon"], pred["source"], pred["country"],
            [(c["ref_id"], round(c["similarity"], 4)) for c in pred["top_candidates"][:3]])


def test_old_indices_open_verify_and_answer_as_before(old, query, capsys, monkeypatch):
    from geoguide.agent.graph import locate
    from tests.synthetic import similarity_calibration

    assert main(["index", "verify", str(old / "index")]) == 0
    assert main(["index", "verify", str(old / "index-updated")]) == 0
    assert ReferenceIndex(old / "index-updated").manifest.n_references == 24
    ctx = _ctx(old)
    # 0.1.0 decided in cosine units; 0.2 asks the map's calibration (fitted on first use for an old
    # index: tests/unit/test_calibration.py). Told what 0.1.0 assumed (a 0.94 match is right), it
    # gives 0.1.0's answer.
    similarity_calibration(ctx.index, monkeypatch)
    pred = locate(ctx, query)
    assert _answer(pred.model_dump(mode="json")) == _answer(EXPECTED["chat"]["prediction"])
    assert main(["index", "compact", str(old / "index-updated")]) == 0  # the update path still works on it
    assert ReferenceIndex(old / "index-updated").manifest.n_references == 24


def test_old_chat_session_resumes_and_answers_follow_ups(old, query):
    session = ChatSession(_ctx(old), old / "chat" / "sessions.sqlite", "upgrade1", must_exist=True)
    try:
        state = session.state()
        assert state is not None and state.chat == EXPECTED["chat"]["chat"]
        assert _answer(state.prediction.model_dump(mode="json")) == _answer(EXPECTED["chat"]["prediction"])
        # 0.1.0 talked ("I searched areas including Spain..."); 0.2 searches Spain and weighs it
        reply = session.ask("why not Spain?")
        assert reply.startswith("Can't tell: the best match in Spain") and "made before geoguide 0.2" in reply, reply
        session.attach(query)  # a new photo in the old session
        assert len(session.state().chat) == len(EXPECTED["chat"]["chat"]) + 4
    finally:
        session.close()


def test_old_web_sessions_open_and_take_follow_ups(old):
    from geoguide.app.web_sessions import SessionStore

    ctx = _ctx(old)
    store = SessionStore(ctx, old / "serve", SerialDescriptor(lambda: ctx.index.descriptor()))
    sid = EXPECTED["web"]["session_id"]
    view = store.view(sid).model_dump(mode="json")
    assert view["chat"] == EXPECTED["web"]["chat"] and _answer(view["prediction"]) == _answer(EXPECTED["web"]["prediction"])
    after = store.ask(sid, "why not Spain?")
    assert after.chat[-1].text.startswith("Can't tell: the best match in Spain") and len(after.chat) == len(view["chat"]) + 2
    photo = store.photo(sid)  # found in the (moved) state folder, not at the absolute path stored then
    assert photo.is_file() and photo.is_relative_to(old / "serve")


def test_old_response_cache_still_answers_without_the_server(old, query, monkeypatch):
    """Nothing listens on the fixture's port: the reply can only come from the 0.1.0 cache."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fixture")
    backend = make_backend(EXPECTED["cache"]["spec"], cache=str(old / "responses.sqlite"), timeout=2.0,
                           max_attempts=1)
    outcome = backend.perceive(Image.open(query).convert("RGB"))
    assert outcome.error is None and outcome.usage.cached
    assert outcome.perception.model_dump(mode="json") == EXPECTED["cache"]["perception"]
