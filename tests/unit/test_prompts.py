"""Prompt templates: loading, strict rendering, and that published versions never change."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from geoguide.agent.schemas import CLUE_KINDS, Perception
from geoguide.prompts import PromptError, list_prompts, load_prompt, parse_template
from geoguide.prompts.loader import TEMPLATES_DIR

# A published template is frozen: runs record its sha256, so editing it would silently change
# what old results mean. Make a new version (perceive/v2.md) and add its hash here instead.
PUBLISHED = {
    "chat/v1": "2b7882fea7e9bfef6e09c9ad95e942f347549eee535c4cbe3665032d00b1ac33",
    "perceive/v1": "6b8dd3d6785c558362ec5ae170be6444091cf214eca5f7a4edd3f04e6438bbb6",
    "plan/v1": "c9079d3992223810e769b842b3379f2e8c24e85555f79a529684e27a0bd350c6",
    "plan/v2": "a4991de9a9f747182686ee5322d69a0f3832d483e241a93c055132f2eecbea52",
    "plan/v3": "485e5235353465e86371349b1c073d95386636edd2812af17d44c03f7146fafd",
    "repair/v1": "4c767c11965ee9fbe777958d17b0f5fa3040c570704f366b620bce62b1ff7455",
}


def test_every_template_loads_and_published_ones_are_frozen() -> None:
    assert set(PUBLISHED) <= set(list_prompts())
    for prompt_id in list_prompts():
        t = load_prompt(prompt_id)
        assert (t.id, t.task, t.version) == (prompt_id, prompt_id.split("/")[0], prompt_id.split("/")[1])
        assert t.purpose and t.text.strip()
        file_sha = hashlib.sha256((TEMPLATES_DIR / f"{prompt_id}.md").read_bytes()).hexdigest()
        assert t.sha256 == file_sha
        if prompt_id in PUBLISHED:
            assert t.sha256 == PUBLISHED[prompt_id], f"{prompt_id} was edited after publication; add a new version"


def test_render_is_strict_and_keeps_json_braces() -> None:
    t = load_prompt("perceive/v1")
    assert t.variables == ("max_countries",)
    text = t.render(max_countries=5)
    assert "at most 5 candidate countries" in text and "{max_countries}" not in text
    assert '{"iso2": "GB", "name": "United Kingdom", "probability": 0.6}' in text  # literal JSON survives
    with pytest.raises(PromptError, match="missing variables \\['max_countries'\\]"):
        t.render()
    with pytest.raises(PromptError, match="unexpected \\['temperature'\\]"):
        t.render(max_countries=3, temperature=0)
    assert "Reply again" in load_prompt("repair/v1").render(error="lat: must be <= 90")


def test_perceive_prompt_matches_the_schema() -> None:
    text = load_prompt("perceive/v1").render(max_countries=3)
    for field in Perception.model_fields:
        assert f'"{field}"' in text, field
    for kind in CLUE_KINDS:
        assert f'"{kind}"' in text, kind
    repair = load_prompt("repair/v1").text
    assert all(f'"{field}"' in repair for field in Perception.model_fields)


def test_plan_prompt_names_every_tool() -> None:
    from geoguide.agent.config import AgentConfig
    from geoguide.agent.toolbox import TOOL_DOCS

    text = load_prompt("plan/v1").render(max_steps=8)
    for tool in ("list_submaps", "search_submap", "widen", "geocode", "reverse_geocode", "submit_location"):
        assert tool in text
    assert "at most 8 tool calls" in text
    default = load_prompt(AgentConfig().plan_prompt).render(max_steps=8)
    assert all(tool in default for tool in TOOL_DOCS), "the default planner prompt must describe every tool"
    assert "PRED" in load_prompt("chat/v1").render(prediction="PRED")


GOOD = "---\nid: demo/v2\nversion: v2\npurpose: test\nvariables: [a, b_2]\n---\nA={a} B={b_2} {\"x\": 1}\n"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("no header\n", "starts with"),
        ("---\nid: demo/v2\n", "not closed"),
        (GOOD.replace("purpose: test\n", ""), "lacks 'purpose'"),
        (GOOD.replace("version: v2", "version: v3"), "disagree"),
        (GOOD.replace("id: demo/v2", "id: Demo"), "is not"),
        (GOOD.replace("[a, b_2]", "[a]"), "differ from declared"),
        (GOOD.replace("[a, b_2]", "[a, b_2, c]"), "differ from declared"),
        (GOOD.replace("purpose: test", "purpose test"), "expected 'key: value'"),
    ],
)
def test_malformed_templates_are_rejected(source: str, problem: str) -> None:
    with pytest.raises(PromptError, match=problem):
        parse_template(source)


def test_custom_template_folder(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "v2.md").write_text(GOOD, encoding="utf-8")
    (tmp_path / "demo" / "v3.md").write_text(GOOD, encoding="utf-8")  # header says v2: mismatch
    assert list_prompts(tmp_path) == ["demo/v2", "demo/v3"]
    assert load_prompt("demo/v2", root=tmp_path).render(a=1, b_2="x") == 'A=1 B=x {"x": 1}\n'
    with pytest.raises(PromptError, match="disagree|does not match"):
        load_prompt("demo/v3", root=tmp_path)
    with pytest.raises(PromptError, match="unknown prompt"):
        load_prompt("demo/v9", root=tmp_path)
    with pytest.raises(PromptError, match="unknown prompt"):
        load_prompt("../../etc/passwd")
