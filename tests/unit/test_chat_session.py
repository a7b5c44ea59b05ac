"""ChatSession in-process: a session file can only give back geoguide's own state (a doctored one
fails loudly and runs nothing), and follow-up answers say what they rest on."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ormsgpack
import pytest
from langgraph.checkpoint.serde import jsonplus

from geoguide.agent.backends import make_backend
from geoguide.agent.chat import ChatSession, SessionError
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext
from tests.doctored import assert_refused_and_ran_nothing, evil_pickle
from tests.synthetic import PLACES, place_image, similarity_calibration

PARIS, MADRID = PLACES[0], PLACES[2]
OPT = ormsgpack.OPT_NON_STR_KEYS


@pytest.fixture
def ctx(synthetic_index, tmp_path) -> AgentContext:
    """Replayed VLM: the Paris photo gets a Paris prior, the Madrid photo a (wrong) Paris prior."""
    replay = tmp_path / "prior.csv"
    replay.write_text(
        "IMG_ID,LAT_pred,LON_pred,location,success,model_name\n"
        "q_paris.jpg,48.80,2.30,Paris,True,t\nq_madrid.jpg,48.80,2.30,Paris,True,t\n"
    )
    return AgentContext(index=synthetic_index, backend=make_backend(f"replay:{replay}"), config=AgentConfig())


def _photo(tmp_path: Path, name: str, place: int) -> Path:
    path = tmp_path / name
    place_image(place, variant=7).save(path, quality=95)
    return path


@pytest.fixture
def session(ctx, tmp_path):
    s = ChatSession(ctx, tmp_path / "sessions.sqlite", "t1")
    s.attach(_photo(tmp_path, "q_paris.jpg", 0))
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------- session files


class _Kept:
    """An ext value kept opaque while a checkpoint is edited (ormsgpack.Ext hides its bytes)."""

    def __init__(self, code: int, data: bytes) -> None:
        self.code, self.data = code, data


def _keep_ext(code: int, data: bytes) -> _Kept:
    return _Kept(code, data)


def _repack(obj: Any) -> ormsgpack.Ext:
    if isinstance(obj, _Kept):
        return ormsgpack.Ext(obj.code, obj.data)
    raise TypeError(type(obj))


def _ext(code: int, payload: tuple) -> ormsgpack.Ext:
    """An ext value exactly as langgraph's JsonPlusSerializer encodes (module, name, args) objects."""
    return ormsgpack.Ext(code, ormsgpack.packb(payload, option=OPT))


def _doctor_latest_checkpoint(db: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the newest checkpoint of the session: decode it keeping every ext value opaque,
    let ``edit`` change the channel values, encode it back."""
    con = sqlite3.connect(db)
    cid, blob = con.execute(
        "SELECT checkpoint_id, checkpoint FROM checkpoints WHERE thread_id LIKE 't1/%' "
        "ORDER BY checkpoint_id DESC LIMIT 1"
    ).fetchone()
    cp = ormsgpack.unpackb(blob, ext_hook=_keep_ext, option=OPT)
    edit(cp["channel_values"])
    con.execute(
        "UPDATE checkpoints SET checkpoint = ? WHERE checkpoint_id = ?",
        (ormsgpack.packb(cp, default=_repack, option=OPT), cid),
    )
    con.commit()
    con.close()


def _evil_cases(marker: Path) -> dict[str, Callable[[dict[str, Any]], None]]:
    cmd = f"touch {marker}"

    def top_level(code: int, payload: tuple) -> Callable[[dict[str, Any]], None]:
        def edit(values: dict[str, Any]) -> None:
            assert "image_id" in values  # the format this test doctors is the one langgraph writes
            values["image_id"] = _ext(code, payload)

        return edit

    def nested(values: dict[str, Any]) -> None:  # inside an allowed type: the prediction's `why`
        pred = values["prediction"]  # a plain dict after ChatSession's update_state, else a model ext
        if isinstance(pred, _Kept):
            pred = ormsgpack.unpackb(pred.data, ext_hook=_keep_ext, option=OPT)[2]
        pred["why"] = _ext(jsonplus.EXT_CONSTRUCTOR_POS_ARGS, ("os", "system", [cmd]))
        values["prediction"] = _ext(
            jsonplus.EXT_PYDANTIC_V2, ("geoguide.agent.state", "Prediction", pred, "model_validate_json")
        )

    return {
        "os.system(*args)": top_level(jsonplus.EXT_CONSTRUCTOR_POS_ARGS, ("os", "system", [cmd])),
        "subprocess.getoutput(arg)": top_level(
            jsonplus.EXT_CONSTRUCTOR_SINGLE_ARG, ("subprocess", "getoutput", cmd)
        ),
        "subprocess.run(**kwargs)": top_level(
            jsonplus.EXT_CONSTRUCTOR_KW_ARGS, ("subprocess", "run", {"args": cmd, "shell": True})
        ),
        "pydantic ext of a foreign class": top_level(
            jsonplus.EXT_PYDANTIC_V2,
            ("subprocess", "CompletedProcess", {"args": cmd, "returncode": 0}, "model_validate_json"),
        ),
        "nested in a geoguide type": nested,
    }


@pytest.mark.parametrize(
    "case",
    [
        "os.system(*args)",
        "subprocess.getoutput(arg)",
        "subprocess.run(**kwargs)",
        "pydantic ext of a foreign class",
        "nested in a geoguide type",
    ],
)
def test_doctored_session_file_fails_and_runs_nothing(ctx, session, tmp_path, case):
    db = tmp_path / "sessions.sqlite"
    session.close()
    marker = tmp_path / "MARKER"
    _doctor_latest_checkpoint(db, _evil_cases(marker)[case])

    resumed = ChatSession(ctx, db, "t1")
    try:
        with pytest.raises(SessionError, match="cannot be trusted") as err:
            resumed.state()
        assert str(db) in str(err.value) and "not written by geoguide" in str(err.value)
        with pytest.raises(SessionError):
            resumed.ask("why not Spain?")
    finally:
        resumed.close()
    assert not marker.exists(), "loading the session ran the command stored in it"


def test_session_row_in_another_serialization_format_is_refused(ctx, session, tmp_path):
    """A pickle row would run code on load if langgraph's pickle fallback were ever on."""
    db = tmp_path / "sessions.sqlite"
    session.close()
    marker = tmp_path / "MARKER"
    con = sqlite3.connect(db)
    con.execute("UPDATE checkpoints SET type = 'pickle', checkpoint = ? WHERE thread_id LIKE 't1/%'",
                (evil_pickle(marker),))
    con.commit()
    con.close()
    assert_refused_and_ran_nothing(ctx, db, "t1", marker)


def test_session_round_trip_is_exact_and_quiet(ctx, tmp_path, caplog, monkeypatch):
    """attach + ask + resume: the state comes back as the same pydantic objects, and langgraph has
    nothing to warn about (it used to print 'Deserializing unregistered type' for every type)."""
    monkeypatch.setattr(jsonplus, "_warned_unregistered_types", set())  # its warnings are once per process
    monkeypatch.setattr(jsonplus, "_warned_blocked_types", set())
    caplog.set_level(logging.WARNING)
    db = tmp_path / "sessions.sqlite"
    s = ChatSession(ctx, db, "t1")
    s.attach(_photo(tmp_path, "q_paris.jpg", 0))
    s.ask("look near Madrid instead")
    before = s.state()
    s.close()
    resumed = ChatSession(ctx, db, "t1")
    try:
        after = resumed.state()
        assert after == before and after.prediction.trail[-1].reason == "user: look near Madrid"
        assert "within 150 km of Lyon" in resumed.ask("search around Lyon")
    finally:
        resumed.close()
    noisy = [r.getMessage() for r in caplog.records if r.name.startswith("langgraph")]
    assert noisy == []


# ---------------------------------------------------------------------------------------------- honesty


def test_reanswer_resting_on_the_users_place_says_so(session):
    """Nothing near Madrid looks like the Paris photo: the new answer is the user's suggestion."""
    reply = session.ask("look near Madrid instead")
    pred = session.state().prediction
    assert (pred.lat, pred.lon) == pytest.approx((40.4165, -3.7026), abs=0.01)  # geocoded Madrid
    for text in (reply, pred.why):
        assert "your suggestion" in text and "not evidence" in text, text
    assert pred.source.startswith("user suggestion")
    assert "Paris" in reply  # and it names where the evidence does point
    assert pred.confidence <= 0.1


def test_reanswer_moved_by_retrieval_credits_the_references(ctx, tmp_path, monkeypatch):
    """A Madrid photo with a wrong Paris prior: references near Madrid confirm the user's hunch."""
    similarity_calibration(ctx.index, monkeypatch)  # on this map a match at similarity 0.9+ is right
    s = ChatSession(ctx, tmp_path / "sessions.sqlite", "t2")
    try:
        s.attach(_photo(tmp_path, "q_madrid.jpg", 2))
        reply = s.ask("look near Madrid instead")
        pred = s.state().prediction
    finally:
        s.close()
    assert pred.source.startswith("retrieval") and "reference(s) agree on a spot" in pred.why and "P(within 1 km)" in pred.why
    assert "your suggestion" not in reply and "not evidence" not in reply


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("why not Xyzzy?", "I don't know a place called 'Xyzzy'"),
        ("why not Gondor?", "Did you mean 'Gondomar', 'Kondor', 'Gonder'?"),  # the gazetteer's suggestions
        ("why not Lyon, Narnia?", "I don't know 'Narnia'"),  # an unknown qualifier is not dropped silently
        ("why not Europe?", "Europe is a continent"),
        ("look near Xyzzy instead", "I don't know a place called 'Xyzzy'"),
        ("look near Gondor instead", "Did you mean 'Gondomar', 'Kondor', 'Gonder'?"),
        ("look near Lyon, Narnia instead", "I don't know 'Narnia'"),
        ("look near Europe instead", "Europe is a continent"),
    ],
)
def test_unknown_places_are_reported_not_replaced(session, text, expected):
    before = session.state()
    reply = session.ask(text)
    assert expected in reply, reply
    after = session.state()
    assert after.prediction == before.prediction and after.trail == before.trail  # nothing was searched


def test_why_not_names_the_place_it_resolved(session):
    """'Atlantis' is a town in South Africa: the answer says that is what it looked up."""
    reply = session.ask("why not Atlantis?")
    assert "I read 'Atlantis' as Atlantis, a city in South Africa" in reply, reply


def test_how_sure_is_answered_with_the_calibrated_numbers(session):
    """Not a model's improvisation: the answer's P(within X km), where they come from, and why
    there is no radius without a calibration profile."""
    reply = session.ask("How sure are you?")
    pred = session.state().prediction
    assert f"{pred.p_within_km['25']:.0%} within 25 km" in reply and "within 2500 km" in reply
    assert "no calibration profile was given" in reply and "geoguide calibrate" in reply


def test_follow_ups_act_without_a_language_model(session):
    """Each intent on a real (small) index with a replayed VLM: the place is searched and weighed,
    not talked about; anything not understood gets the help line, not the summary again."""
    before = session.state()
    assert session.ask("is it in France?").startswith("Yes: my answer")
    reply = session.ask("why not Spain?")
    assert reply.split(":")[0] in ("Possibly", "Probably not", "Can't tell") and "country:ES" in \
        [s.submap_id for s in session.state().trail]
    assert "P(within 25 km)" in reply and "for my answer" in reply
    reply = session.ask("is this near 40.4168, -3.7038?")  # coordinates are a place too
    assert reply.split(":")[0] in ("Possibly", "Probably not", "Can't tell")
    assert [s.submap_id.split(":")[0] for s in session.state().trail[-2:]] == ["radius", "global"]  # both said
    assert session.state().prediction.lat == before.prediction.lat  # weighing a place never moves the answer
    assert "reasoning: Paris" in session.ask("what did you see?")
    assert session.ask("help").startswith("I understand:")
    assert "Without a language model" in session.ask("tell me a joke") and "look near" in session.ask("hmm")
    assert session.ask("is it in Narnia?").startswith("I don't know a place called 'Narnia'")
    assert session.ask("is it near 95, 10?").endswith("is no point on Earth (latitude -90..90, longitude -180..180).")


def test_a_suggestion_never_raises_the_confidence(session):
    old = session.state().prediction.confidence
    session.ask("look near Tokyo instead")  # no reference near Tokyo matches a Paris photo
    pred = session.state().prediction
    assert pred.source.startswith("user suggestion") and pred.confidence <= old


def test_regions_are_places_too(session):
    """'is it in Tuscany?' (issue 24): a first-level region is searched around its centre, as wide
    as its towns lie (150 km at least), and the answer (Paris) is tested against the region of its
    nearest town."""
    before = session.state().prediction
    reply = session.ask("is it in Tuscany?")
    assert reply.startswith("Can't tell: there are no reference photos within 150 km of Tuscany's centre"), reply
    assert "I read 'Tuscany' as Tuscany, a region in Italy" in reply
    assert session.state().trail[-1].submap_id.startswith("radius:43.5")  # searched, found nothing there
    assert session.ask("is it in Ile-de-France?").startswith("Yes: my answer")
    reply = session.ask("is it in Catalonia?")  # Barcelona's references are there
    assert reply.split(":")[0] in ("Possibly", "Probably not"), reply
    assert "within 150 km of Catalonia's centre" in reply and "P(within 25 km)" in reply
    assert "within 450 km of California's centre" in session.ask("is it in California?")  # wider than 150 km
    assert session.state().prediction == before  # weighing never moves the answer
