"""``geoguide models`` tells the truth: what it says runs here does construct, and weights put
where it says it looks are found."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from geoguide.agent.backends import make_backend
from geoguide.app.cli import main
from geoguide.indices.descriptors.registry import get_descriptor


def _models(*args: str) -> dict[str, dict]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["models", "--json", *args]) == 0
    return {(m["kind"], m["name"]): m for m in json.loads(buf.getvalue())["models"]}


def test_every_registered_model_is_listed_and_what_runs_here_constructs(monkeypatch):
    from geoguide.agent.backends.registry import BACKENDS
    from geoguide.indices.descriptors.registry import DESCRIPTORS

    monkeypatch.delenv("GEOGUIDE_CLIP_DIR", raising=False)
    models = _models()
    assert {n for k, n in models if k == "descriptor"} == set(DESCRIPTORS)
    assert {n for k, n in models if k == "backend"} == set(BACKENDS)
    assert models[("backend", "none")]["runs_here"] is True
    assert models[("backend", "replay")]["runs_here"] is None
    assert models[("descriptor", "effnet-gem")]["runs_here"] is True
    for (kind, name), m in models.items():
        if kind == "descriptor" and m["runs_here"]:
            get_descriptor(name)  # constructing checks the weights: it must not raise
        if m["runs_here"] is False:
            assert m["detail"] and (m["looks_in"] or m["how_to_get"]), m


def test_weights_put_where_it_looks_are_found(monkeypatch, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=16,
                                                   projection_dim=768)).save_pretrained(tmp_path)
    monkeypatch.delenv("GEOGUIDE_CLIP_DIR", raising=False)
    before = _models()[("backend", "geoclip")]
    assert before["runs_here"] is False and "$GEOGUIDE_CLIP_DIR" in before["looks_in"]
    with pytest.raises(Exception, match="never downloads"):
        make_backend("geoclip")
    monkeypatch.setenv("GEOGUIDE_CLIP_DIR", str(tmp_path))
    after = _models()[("backend", "geoclip")]
    assert after["runs_here"] is True and str(tmp_path) in after["detail"]
    assert make_backend("geoclip").folder == tmp_path  # the spec without a folder uses the variable


def test_plain_listing_names_each_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "effnet-gem" in out and "geoclip" in out and "depends" in out
