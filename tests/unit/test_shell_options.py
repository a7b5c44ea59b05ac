"""Every command that runs the agent takes the same options from one definition (``app.options``):
the same flags, the same checks, ``--set`` included, and they open the context the same way."""

from __future__ import annotations

import json

import pytest
import typer

from geoguide.app.cli import app, main
from geoguide.app.options import SHARED, AgentOptions
from geoguide.eval.spec import RunSpec
from tests.synthetic import place_image

AGENT_COMMANDS = ["locate", "chat", "serve", "eval"]


def _params(name: str) -> dict[str, list[str]]:
    cmd = typer.main.get_command(app).commands[name]
    return {p.name: sorted(p.opts) for p in cmd.params}


@pytest.mark.parametrize("name", AGENT_COMMANDS)
def test_agent_commands_take_every_shared_option(name):
    params = _params(name)
    reference = _params("locate")
    for option in SHARED:
        assert option in params, f"{name} lacks {option}"
        assert params[option] == reference[option]  # the same flag spellings everywhere


@pytest.mark.parametrize("name", AGENT_COMMANDS)
def test_a_mistyped_set_key_fails_the_same_way_everywhere(name, synthetic_index, tmp_path, capsys):
    extra = {"locate": [str(tmp_path / "x.jpg")], "eval": ["--out", str(tmp_path / "run"), "--labels",
                                                          str(tmp_path / "l.csv")]}.get(name, [])
    (tmp_path / "l.csv").write_text("IMG_ID,AUTHOR,LAT,LON\nx.jpg,a,1,2\n")
    place_image(0).save(tmp_path / "x.jpg")
    rc = main([name, *extra, "--index", str(synthetic_index.root), "--set", "overide.k=3"])
    assert rc == 2
    assert "unknown setting 'overide.k'" in capsys.readouterr().err


def test_set_reaches_the_agent_config(synthetic_index, tmp_path, capsys):
    photo = tmp_path / "q.jpg"
    place_image(0, variant=3).save(photo)
    argv = ["locate", str(photo), "--index", str(synthetic_index.root), "--json", "--prior-level", "country"]
    assert main(argv) == 0
    free = json.loads(capsys.readouterr().out)
    assert main([*argv, "--set", "no_prior.k=3"]) == 0  # no prior: the whole-map search takes no_prior.k
    assert len(json.loads(capsys.readouterr().out)["top_candidates"]) <= 3 < len(free["top_candidates"])
    # one tool call: the photo's text is read, no search is left, so there is no answer (exit 4)
    assert main([*argv, "--set", "caps.max_tool_calls=1"]) == 4
    capped = json.loads(capsys.readouterr().out)
    assert free["tool_calls"] > 1 and capped["tool_calls"] == 1 and capped["lat"] is None


def test_locate_and_eval_open_the_same_context_spec(tmp_path):
    opts = AgentOptions(index=tmp_path, vlm="replay:p.csv", policy="llm", planner="none", planner_opt=["vision=false"],
                        prior_level="country", rerank=False, max_seconds=9.0, exclude_author=["bob"],
                        settings=["k=7", "rerank.prior_weight=0.2"])
    ctx = opts.context_spec()
    run = RunSpec.from_settings({**opts.settings_map(), "limit": 3})
    for field in ("index", "vlm", "policy", "planner", "planner_opts", "timeout", "attempts", "cache", "config"):
        assert getattr(ctx, field) == getattr(run, field), field
    assert ctx.config == {"k": 7, "rerank.prior_weight": 0.2, "prior_level": "country", "rerank.enabled": False,
                          "caps.max_seconds": 9.0, "exclude_authors": ["bob"]}
    cfg = ctx.agent_config()
    assert cfg.k == 7 and cfg.caps.max_seconds == 9.0 and cfg.rerank.enabled is False and cfg.policy == "llm"
