"""The rules policy end to end on a small index the tests build, with a replayed prior."""

from __future__ import annotations

import csv

import pytest

from geoguide.agent.backends import make_backend
from geoguide.agent.config import AgentConfig, Caps, OverrideConfig
from geoguide.agent.context import AgentContext
from geoguide.agent.graph import locate
from geoguide.geo.geometry import haversine_km
from tests.synthetic import PLACES, place_image, similarity_calibration

PARIS, MADRID, TOKYO = PLACES[0], PLACES[2], PLACES[7]


@pytest.fixture
def queries(tmp_path):
    """Query photos (new shots of known places) and a replay CSV of VLM answers for them."""
    paths = {}
    for name, place in [("q_paris.jpg", 0), ("q_tokyo.jpg", 7), ("q_noprior.jpg", 4)]:
        place_image(place, variant=7).save(tmp_path / name, quality=95)
        paths[name] = tmp_path / name
    replay = tmp_path / "prior.csv"
    with open(replay, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "LAT_pred", "LON_pred", "location", "success", "model_name"])
        w.writerow(["q_paris.jpg", 48.80, 2.30, "Paris, France", "True", "test-vlm"])
        w.writerow(["q_tokyo.jpg", MADRID[1], MADRID[2], "Madrid, Spain", "True", "test-vlm"])  # a wrong prior
        w.writerow(["q_noprior.jpg", "", "", "", "False", "test-vlm"])
    return paths, replay


def _run(index, replay, path, **cfg):
    ctx = AgentContext(index=index, backend=make_backend(f"replay:{replay}"), config=AgentConfig(**cfg))
    events = []
    pred = locate(ctx, path, on_event=events.append)
    return pred, events


def test_prior_confirmed_by_retrieval(synthetic_index, queries, monkeypatch):
    paths, replay = queries
    similarity_calibration(synthetic_index, monkeypatch)  # on this map a match at similarity 0.9+ is right
    pred, events = _run(synthetic_index, replay, paths["q_paris.jpg"])
    assert pred.trail[0].submap_id == "country:FR"
    assert {s.submap_id for s in pred.trail} == {"country:FR", "global"}  # area + probe, no widening
    assert pred.source == "retrieval"  # three Paris references agree, 6 km from the VLM's point
    assert haversine_km(pred.lat, pred.lon, PARIS[1], PARIS[2]) < 3
    assert pred.country == "FR" and pred.prior.rationale == "Paris, France"
    assert [e.node for e in events][:2] == ["perceive", "plan"] and events[-1].node == "finalize"
    assert pred.tool_calls == 2 and pred.timings["total_s"] > 0


def test_wrong_prior_widens_but_keeps_a_far_contradiction_out(synthetic_index, queries, monkeypatch):
    paths, replay = queries
    similarity_calibration(synthetic_index, monkeypatch)
    pred, _ = _run(synthetic_index, replay, paths["q_tokyo.jpg"])
    # Nothing in Spain looks like the photo (its best match is far less likely right than the
    # whole map's): widen twice to land neighbours. The probe's likely match in Japan is neither a
    # VLM hypothesis nor a neighbour, so the prior's point stands.
    assert [s.submap_id for s in pred.trail] == ["country:ES", "global", "country:ES,FR,PT", "country:ES,FR,PT,DE,IT"]
    assert all(r.startswith("widen: the best match in country:ES") and "is weak (P within 200 km" in r
               for r in [s.reason for s in pred.trail[2:3]])
    assert pred.source == "prior" and haversine_km(pred.lat, pred.lon, MADRID[1], MADRID[2]) < 1
    assert all(c.country != "JP" for c in pred.top_candidates)  # the probe's matches stay out of the pool


def test_wrong_prior_recovers_when_switch_allowed(synthetic_index, queries, tmp_path, monkeypatch):
    """With the VLM's second hypothesis naming Japan, the policy switches and retrieval wins."""
    paths, _ = queries
    similarity_calibration(synthetic_index, monkeypatch)
    replay = tmp_path / "two.csv"
    replay.write_text("IMG_ID,LAT_pred,LON_pred,location,success,model_name\n")
    ctx = AgentContext(index=synthetic_index, backend=make_backend(f"replay:{replay}"), config=AgentConfig())
    from geoguide.agent.schemas import CountryGuess, Perception, PerceptionOutcome

    wrong = Perception(countries=[CountryGuess(iso2="ES", probability=0.6), CountryGuess(iso2="JP", probability=0.3)],
                       lat=MADRID[1], lon=MADRID[2])
    ctx.backend.perceive = lambda *a, **k: PerceptionOutcome(perception=wrong)  # a VLM that hedged
    pred = locate(ctx, paths["q_tokyo.jpg"])
    assert [s.submap_id for s in pred.trail] == ["country:ES", "global", "country:JP"]
    assert pred.trail[-1].reason.startswith("switch:")
    assert pred.source == "retrieval" and haversine_km(pred.lat, pred.lon, TOKYO[1], TOKYO[2]) < 3


def test_no_prior_falls_back_to_global_retrieval(synthetic_index, queries):
    paths, replay = queries
    pred, _ = _run(synthetic_index, replay, paths["q_noprior.jpg"])
    assert pred.prior is None and "no recorded answer" in pred.prior_error
    assert [s.submap_id for s in pred.trail] == ["global"]
    assert pred.source == "retrieval-vote" and pred.country == "DE"


def test_country_level_prior_and_rerank_off(synthetic_index, queries):
    paths, replay = queries
    pred, _ = _run(synthetic_index, replay, paths["q_paris.jpg"], prior_level="country",
                   rerank={"enabled": False})
    assert pred.prior.lat is None and pred.trail[0].submap_id == "country:FR"
    assert pred.source == "retrieval" and haversine_km(pred.lat, pred.lon, PARIS[1], PARIS[2]) < 3


def test_kmeans_scheme(synthetic_index, queries):
    paths, replay = queries
    pred, _ = _run(synthetic_index, replay, paths["q_paris.jpg"], scheme="kmeans", kmeans_clusters=1)
    assert pred.trail[0].submap_id.startswith("kmeans-3:")


def test_step_cap_finalizes_with_note(synthetic_index, queries):
    paths, replay = queries
    pred, _ = _run(synthetic_index, replay, paths["q_paris.jpg"], caps=Caps(max_steps=1))
    assert any("step cap" in n for n in pred.notes)
    assert pred.lat is not None  # still answers with what is known


def test_leakage_rule_is_enforced(synthetic_index, queries):
    paths, replay = queries
    pred, _ = _run(synthetic_index, replay, paths["q_paris.jpg"],
                   exclude_authors=["author_paris_0", "author_paris_1"])
    assert all(not c.ref_id.startswith("paris") for c in pred.top_candidates)
    assert pred.source == "prior"  # nothing left to corroborate the point


def test_prior_policy_answers_without_retrieval(synthetic_index, queries):
    paths, replay = queries
    pred, _ = _run(synthetic_index, replay, paths["q_paris.jpg"], policy="prior")
    assert pred.trail == [] and pred.source == "prior" and (pred.lat, pred.lon) == (48.80, 2.30)
    pred, _ = _run(synthetic_index, replay, paths["q_noprior.jpg"], policy="prior")
    assert pred.lat is None and pred.source == "none"


def test_reuse_index_descriptors_matches_extraction(synthetic_index, synthetic_refs, tmp_path):
    root, samples = synthetic_refs
    s = samples[4]
    replay = tmp_path / "none.csv"
    replay.write_text("IMG_ID,LAT_pred,LON_pred,location,success,model_name\n")
    runs = []
    for reuse in (False, True):
        ctx = AgentContext(index=synthetic_index, backend=make_backend(f"replay:{replay}"),
                           config=AgentConfig(reuse_index_descriptors=reuse, exclude_ids=[s.image_id]))
        runs.append(locate(ctx, s.image_path, image_id=s.image_id))
    a, b = ([c.ref_id for c in r.top_candidates] for r in runs)
    assert a == b and s.image_id not in a


def test_why_lines_say_what_ran(synthetic_index, queries, monkeypatch):
    """The prior kept with no search says so, not that retrieval 'did not agree'; kept after a
    search, it gives both probabilities and where the prior's comes from."""
    paths, replay = queries
    pred, _ = _run(synthetic_index, replay, paths["q_paris.jpg"], policy="prior")
    assert pred.why == "the VLM's point; no reference was searched"
    assert pred.probability_source == "default" and pred.p_within_km["25"] == pred.confidence == 0.412
    similarity_calibration(synthetic_index, monkeypatch)
    pred, _ = _run(synthetic_index, replay, paths["q_tokyo.jpg"])  # searched Spain and its neighbours, kept Madrid
    assert pred.source == "prior" and "is less likely right: P(within 1 km)" in pred.why
    assert "for the VLM (default)" in pred.why


def test_a_profile_says_how_far_the_vlm_is_trusted(synthetic_index, queries):
    """The VLM's reliability comes from a calibration profile when there is one: a profile that
    found this VLM never within 1 km lets retrieval move its point where the default would not."""
    import math

    from geoguide.agent.profile import KEYS, CalibrationProfile, GroupProfile

    paths, replay = queries
    # compared at 25 km, with retrieval asked to be likelier by 0.6: beyond reach of the default 0.41
    cfg = {"override": OverrideConfig(compare_km=25.0, margin=0.6)}
    plain, _ = _run(synthetic_index, replay, paths["q_paris.jpg"], **cfg)
    assert plain.source == "prior" and "for the VLM (default)" in plain.why
    never_close = {k: [-12.0, 0.0] for k in KEYS}  # P' = sigmoid(-12) at every distance
    profile = CalibrationProfile(n=100, groups=[
        GroupProfile(group="all", n=100, platt={k: [0.0, 1.0] for k in KEYS}, score_quantile=math.log(2)),
        GroupProfile(group="prior/default", n=100, platt=never_close, score_quantile=math.log(2))])
    ctx = AgentContext(index=synthetic_index, backend=make_backend(f"replay:{replay}"), config=AgentConfig(**cfg),
                       profile=profile)
    pred = locate(ctx, paths["q_paris.jpg"])
    assert pred.source == "retrieval" and "for the VLM (profile)" in pred.why, pred.why
    assert pred.probability_source == "profile" and pred.radius_km is not None
