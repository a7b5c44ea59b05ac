"""The leakage rule holds for chat follow-ups: "look near X" searches through the planner's own
search (``agent.toolbox.run_search``), so a photographer excluded from the run never comes back,
even when their references are exactly where the user points.

The synthetic set has three Madrid references: ``madrid_0`` and ``madrid_2`` by ``author_madrid_0``,
``madrid_1`` by ``author_madrid_1``. The query is a new Madrid photo by ``author_madrid_0``, answered
from a (wrong) Paris prior alone (``--policy prior``: no search before the follow-up, so whatever
the session holds afterwards came from the follow-up), then the user says "look near Madrid instead".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from geoguide.agent.backends import make_backend
from geoguide.agent.chat import ChatSession
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext
from tests.synthetic import place_image

PHOTOGRAPHER = "author_madrid_0"
THEIRS = {"madrid_0.jpg", "madrid_2.jpg"}


@pytest.fixture
def base_ctx(synthetic_index, tmp_path) -> AgentContext:
    replay = tmp_path / "prior.csv"
    replay.write_text("IMG_ID,LAT_pred,LON_pred,location,success,model_name\nq_madrid.jpg,48.80,2.30,Paris,True,t\n")
    return AgentContext(index=synthetic_index, backend=make_backend(f"replay:{replay}"),
                        config=AgentConfig(policy="prior"))


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "q_madrid.jpg"
    place_image(2, variant=7).save(path, quality=95)
    return path


def _look_near_madrid(ctx: AgentContext, photo: Path, db: Path) -> tuple[str, list[str], list[str]]:
    """(the reply, the authors of every candidate the session holds, their reference ids)."""
    session = ChatSession(ctx, db, "t")
    try:
        assert not session.attach(photo, image_id="q_madrid.jpg").top_candidates  # nothing searched yet
        reply = session.ask("look near Madrid instead")
        st = session.state()
    finally:
        session.close()
    assert st is not None and st.trail[-1].reason == "user: look near Madrid"
    pool = [*st.candidates, *st.prediction.top_candidates]
    return reply, [c.author for c in pool], [c.ref_id for c in pool]


def test_look_near_never_returns_the_query_photographer(base_ctx, photo, tmp_path):
    ctx = base_ctx.for_photo("q_madrid.jpg", author=PHOTOGRAPHER)
    reply, authors, refs = _look_near_madrid(ctx, photo, tmp_path / "s.sqlite")
    assert "Searched the 3 references within 150 km of Madrid" in reply and "(madrid_1.jpg)" in reply
    assert PHOTOGRAPHER not in authors and not THEIRS & set(refs)
    assert set(refs) == {"madrid_1.jpg"}  # the other photographer's, and nothing else within 150 km


def test_without_the_rule_the_same_follow_up_finds_them(base_ctx, photo, tmp_path):
    """The control: the photographer's references are right there, so the test above is not vacuous."""
    ctx = base_ctx.for_photo("q_madrid.jpg")
    reply, authors, refs = _look_near_madrid(ctx, photo, tmp_path / "s.sqlite")
    assert PHOTOGRAPHER in authors and set(refs) == {*THEIRS, "madrid_1.jpg"}
