"""The agent's retrieval tools: typed results, summaries, widening, and errors a model can act on."""

from __future__ import annotations

import pytest

from geoguide.agent.backends import make_backend
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext
from geoguide.tools.base import ToolError  # noqa: F401
from geoguide.tools.retrieval import (
    ListSubmapsArgs,
    SearchArgs,
    WidenArgs,
    list_submaps,
    search_submap,
    widen,
)
from tests.synthetic import place_image


@pytest.fixture
def index(synthetic_index):
    return synthetic_index


def test_list_submaps_near_and_by_country(index):
    res = list_submaps(index, ListSubmapsArgs(scheme="country", near=(45.0, 5.0), limit=3))
    assert [s.id for s in res.submaps][:1] == ["country:FR"] and res.total == 6
    res = list_submaps(index, ListSubmapsArgs(scheme="kmeans", country="Japan"))
    assert len(res.submaps) == 1 and res.submaps[0].id.startswith("kmeans-3:")
    assert isinstance(list_submaps(index, ListSubmapsArgs(scheme="h3")), ToolError)
    assert isinstance(list_submaps(index, ListSubmapsArgs(country="Atlantis")), ToolError)


def test_search_summary_and_prior_agreement(index):
    q = place_image(0, variant=4)  # another shot of "paris"
    res = search_submap(index, q, SearchArgs(submap_id="global", k=6, prior_lat=48.85, prior_lon=2.35, prior_country="FR"))
    assert res.candidates[0].ref_id.startswith("paris")
    s = res.summary
    assert s.n_candidates == 6 and s.best_similarity == res.candidates[0].similarity
    assert sum(s.countries.values()) == 6
    assert s.agree_with_prior == sum(1 for c in res.candidates if c.country == "FR" or c.distance_to_prior_km < 200)
    assert res.candidates[0].distance_to_prior_km < 5


def test_search_in_wrong_country_disagrees(index):
    res = search_submap(index, place_image(0, variant=4), SearchArgs(submap_id="country:JP", k=3, prior_country="FR"))
    assert res.summary.agree_with_prior == 0 and set(res.summary.countries) == {"JP"}


def test_widen_chain_country(index):
    steps = ["country:PT"]
    while steps[-1] != "global":
        r = widen(index, WidenArgs(submap_id=steps[-1]))
        assert not isinstance(r, ToolError), r
        assert r.submap.size > index.describe_submap(steps[-1]).size
        steps.append(r.submap_id)
    # Portugal -> + its only land neighbour -> + Spain's -> + France's; all of Europe in this
    # index is then covered, so the continent step adds nothing and is skipped.
    assert steps == ["country:PT", "country:PT,ES", "country:PT,ES,FR", "country:PT,ES,FR,DE,IT", "global"]
    assert isinstance(widen(index, WidenArgs(submap_id="global")), ToolError)


def test_widen_kmeans_and_radius(index):
    first = index.list_submaps("kmeans-3")[-1].id
    r = widen(index, WidenArgs(submap_id=first))
    assert r.submap_id.startswith(first + ",") and r.submap.size > index.describe_submap(first).size
    r = widen(index, WidenArgs(submap_id="radius:48.85,2.35,100"))
    assert r.submap_id == "radius:48.8500,2.3500,400"


def _run_tools(ctx, path, calls):
    """The agent's own ToolNode over a one-message state, in a one-node graph with the run's context."""
    import json

    from langchain_core.messages import AIMessage
    from langgraph.graph import END, START, StateGraph

    from geoguide.agent.graph import initial_state
    from geoguide.agent.state import AgentState
    from geoguide.agent.toolbox import tool_node

    g = StateGraph(AgentState, context_schema=AgentContext)
    g.add_node("tools", tool_node())
    g.add_edge(START, "tools")
    g.add_edge("tools", END)
    msg = AIMessage(content="", tool_calls=[{"name": n, "args": a, "id": f"c{i}"} for i, (n, a) in enumerate(calls)])
    state = initial_state(path).model_copy(update={"messages": [msg]})
    out = g.compile().invoke(state, context=ctx)
    results = {m.tool_call_id: m for m in out["messages"][1:]}
    return [(results[f"c{i}"].status, json.loads(results[f"c{i}"].content) if results[f"c{i}"].content.startswith("{")
             else {"ok": False, "error": results[f"c{i}"].content}) for i in range(len(calls))], out


def test_tools_turn_every_problem_into_an_error_the_model_reads(index):
    ctx = AgentContext(index=index, backend=make_backend("none"), config=AgentConfig(exclude_authors=["author_rome_1"]))
    path = index.row(0)["path"]
    cases = [
        ("search_submap", {"submap_id": "country:ZZ"}),
        ("search_submap", {"submap_id": "global", "k": 0}),
        ("list_submaps", {"near": [95, 0]}),
        ("widen", {}),
        ("reverse_geocode", {"lat": 200, "lon": 0}),
        ("geocode", {"name": ""}),
        ("submit_location", {"lat": 1}),
        ("teleport", {}),
    ]
    results, _ = _run_tools(ctx, path, cases)
    for (name, args), (status, body) in zip(cases, results, strict=True):
        assert status == "error" and body["ok"] is False and body["error"], (name, args, body)
    (status, body), = _run_tools(ctx, path, [("search_submap", {"submap_id": "country:IT", "k": 3})])[0]
    assert status == "success" and len(body["candidates"]) == 2  # 3 Rome references, one photographer excluded
    assert all(c["author"] != "author_rome_1" for c in body["candidates"])


def test_widening_a_country_never_jumps_continents_through_an_overseas_part():
    """France (prior in Paris) grows into Spain, not Brazil via French Guiana; Brazil never grows
    into all of France's (European) photos; a prior in Cayenne grows French Guiana's way."""
    from types import SimpleNamespace

    from geoguide.indices.submaps import parse_scheme

    country = parse_scheme("country")
    spans = {c: (i, i + 1) for i, c in enumerate(["FR", "ES", "BR", "SR", "GF", "DE"])}
    index = SimpleNamespace(schemes={"country": SimpleNamespace(spans=spans)},
                            resolve=lambda sid: SimpleNamespace(size=10**6))
    paris, cayenne = (48.85, 2.35), (4.92, -52.31)
    fr, _ = country.widen(index, ["FR"], paris)
    assert "ES" in fr and "DE" in fr and "BR" not in fr and "SR" not in fr
    fr_plain, _ = country.widen(index, ["FR"], None)
    assert "BR" not in fr_plain
    br, _ = country.widen(index, ["BR"], (-15.8, -47.9))
    assert "FR" not in br.split(":")[1].split(",")
    gf, _ = country.widen(index, ["FR"], cayenne)
    assert "BR" in gf and "ES" not in gf


def test_country_submaps_take_names_and_suggest_the_nearest(synthetic_index):
    from geoguide.indices.submaps import SubmapError

    assert synthetic_index.resolve("country:Italy").size == synthetic_index.resolve("country:IT").size > 0
    assert synthetic_index.describe_submap("country:italy").id == "country:IT"
    assert synthetic_index.resolve("country:France,Spain").size == synthetic_index.resolve("country:FR,ES").size
    with pytest.raises(SubmapError, match="did you mean country:IT") as e:
        synthetic_index.resolve("country:Itly")
    assert "list_submaps" not in str(e.value)
    with pytest.raises(SubmapError, match="the largest are country:"):
        synthetic_index.resolve("country:Atlantis")
