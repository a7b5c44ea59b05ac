"""``dinov2`` through the real loading path, on folders written by transformers' own
``save_pretrained`` (the layout of the published facebook/dinov2-* folders) at tiny sizes, with
random weights made here: outputs match transformers' reference ``from_pretrained`` model to
1e-4, and any missing, unexpected or mis-shaped key is an error naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from geoguide.indices.descriptors.base import WeightsNotFoundError
from geoguide.indices.descriptors.dinov2 import ENV_VAR
from geoguide.indices.descriptors.efficientnet_lite import WeightsLoadError
from geoguide.indices.descriptors.registry import get_descriptor
from geoguide.indices.descriptors.torch_network import IMAGENET, input_size, to_tensor
from tests.synthetic import make_reference_set, place_image
from tests.weights_checks import run_descriptor_commands

transformers = pytest.importorskip("transformers", reason="geoguide[hf] is not installed")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=56, patch_size=14)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("dinov2-tiny")
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY)).eval().save_pretrained(out)
    return out


def _photos():
    return [place_image(0, variant=3), place_image(4, variant=5).resize((90, 60))]


def _reference(folder, photos, model_cls=None):
    """transformers' own loading and forward pass on the descriptor's input tensors."""
    model = (model_cls or transformers.Dinov2Model).from_pretrained(folder).eval()
    outs = []
    for img in photos:
        size = input_size(*img.size, 56, "short", 14)
        with torch.inference_mode():
            outs.append(model(pixel_values=to_tensor([img], size, IMAGENET)).last_hidden_state[0])
    return outs


def test_outputs_match_transformers_reference(folder):
    photos = _photos()
    ref = _reference(folder, photos)
    cls = get_descriptor("dinov2", {"weights": str(folder), "image_size": 56, "num_threads": 1}).extract(photos)
    gem = get_descriptor("dinov2", {"weights": str(folder / "model.safetensors"), "image_size": 56,
                                    "pooling": "gem", "num_threads": 1}).extract(photos)
    for i, tokens in enumerate(ref):
        want_cls = torch.nn.functional.normalize(tokens[0], dim=0).numpy()
        want_gem = tokens[1:].clamp(min=1e-6).pow(3).mean(0).pow(1 / 3)
        want_gem = torch.nn.functional.normalize(want_gem, dim=0).numpy()
        assert np.abs(cls[i] - want_cls).max() < 1e-4
        assert np.abs(gem[i] - want_gem).max() < 1e-4
    assert cls.shape == (2, 32) and np.allclose(np.linalg.norm(cls, axis=1), 1, atol=1e-5)


def test_every_key_is_checked(folder, tmp_path):
    state = load_file(folder / "model.safetensors")
    key = "encoder.layer.1.mlp.fc1.weight"
    cases = {"missing": {k: v for k, v in state.items() if k != key},
             "unexpected": {**state, "encoder.layer.2.norm1.weight": torch.zeros(32)},
             "mis-shaped": {**state, key: torch.zeros(3, 3)}}
    for case, bad in cases.items():
        where = tmp_path / case
        where.mkdir()
        (where / "config.json").write_text((folder / "config.json").read_text())
        save_file({k: v.contiguous() for k, v in bad.items()}, where / "model.safetensors")
        with pytest.raises(WeightsLoadError) as err:
            get_descriptor("dinov2", {"weights": str(where), "image_size": 56})
        named = "encoder.layer.2.norm1.weight" if case == "unexpected" else key
        assert named in str(err.value) and str(where / "model.safetensors") in str(err.value), (case, str(err.value))


def test_a_classification_checkpoint_and_registers_load(tmp_path):
    torch.manual_seed(1)
    cls_dir = tmp_path / "cls"
    transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**TINY, num_labels=3)).save_pretrained(cls_dir)
    reg_dir = tmp_path / "reg"
    transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(**TINY, num_register_tokens=4)) \
        .save_pretrained(reg_dir)
    photos = _photos()[:1]
    out = get_descriptor("dinov2", {"weights": str(cls_dir), "image_size": 56}).extract(photos)
    want = _reference(cls_dir, photos, transformers.Dinov2Model)[0][0]  # its backbone, loaded by transformers
    assert np.abs(out[0] - torch.nn.functional.normalize(want, dim=0).numpy()).max() < 1e-4
    gem = get_descriptor("dinov2", {"weights": str(reg_dir), "image_size": 56, "pooling": "gem"}).extract(photos)
    tokens = _reference(reg_dir, photos, transformers.Dinov2WithRegistersModel)[0]
    want = torch.nn.functional.normalize(tokens[5:].clamp(min=1e-6).pow(3).mean(0).pow(1 / 3), dim=0)
    assert np.abs(gem[0] - want.numpy()).max() < 1e-4  # CLS and the 4 registers left out


def test_the_giant_swiglu_mlp_loads(tmp_path):
    """ViT-g's files store its SwiGLU MLP as weights_in (gate and up stacked) and weights_out."""
    torch.manual_seed(2)
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY, use_swiglu_ffn=True)).save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors")
    assert any("mlp.weights_in" in k for k in keys)  # the published layout, not transformers 5's
    photos = _photos()[:1]
    out = get_descriptor("dinov2", {"weights": str(tmp_path), "image_size": 56}).extract(photos)
    want = torch.nn.functional.normalize(_reference(tmp_path, photos)[0][0], dim=0).numpy()
    assert np.abs(out[0] - want).max() < 1e-4


def test_without_weights_it_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(WeightsNotFoundError) as err:
        get_descriptor("dinov2")
    for needle in ("never downloads", "--descriptor-opt weights=", ENV_VAR, "facebook/dinov2-base"):
        assert needle in str(err.value)
    with pytest.raises(WeightsNotFoundError, match="no such folder"):
        get_descriptor("dinov2", {"weights": str(tmp_path / "absent")})
    with pytest.raises(WeightsNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        get_descriptor("dinov2", {"weights": str(tmp_path)})
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsNotFoundError, match="no config.json"):
        get_descriptor("dinov2", {"weights": str(tmp_path)})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(Exception, match="describes a 'vit' model"):
        get_descriptor("dinov2", {"weights": str(tmp_path)})


def test_every_command_runs_with_it(folder, tmp_path, capsys):
    root = tmp_path / "refs"
    make_reference_set(root)
    info = run_descriptor_commands(root, tmp_path, "dinov2", {"weights": str(folder), "image_size": 56}, capsys)
    assert info["descriptor"]["name"] == "dinov2" and info["descriptor"]["dim"] == 32
