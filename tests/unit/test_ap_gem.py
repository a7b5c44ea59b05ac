"""``ap-gem`` through the real loading path, on checkpoints written here in the published
``Resnet-101-AP-GeM.pt`` layout (model_options, a ``module.``-prefixed state dict, preprocess, and
a scikit-learn PCA pickled under its real class name) with random weights.

No reference implementation installs from the package registry here: dirtorch is not on PyPI, and
timm (torchvision's ResNet) needs torchvision, which has no CPU wheel here. So the network is
checked against torchvision's published ResNet-101 parameter count and against a functional
transcription of dirtorch's forward pass (``F.conv2d`` / ``F.batch_norm`` straight from the state
dict), and the whitening against dirtorch's ``common.transform`` formula."""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geoguide.indices.descriptors.ap_gem import ARCHS, ENV_VAR, ResNetGeM
from geoguide.indices.descriptors.base import ModelLoadError
from geoguide.indices.descriptors.efficientnet_lite import WeightsLoadError
from geoguide.indices.descriptors.registry import get_descriptor
from geoguide.indices.descriptors.torch_network import IMAGENET, input_size, to_tensor
from tests.doctored import evil_pickle
from tests.synthetic import make_reference_set, place_image
from tests.weights_checks import assert_no_weights_says_where, run_descriptor_commands

TINY = {"variant": "tiny", "image_size": 64, "num_threads": 1}
OPTIONS = {"arch": "resnet101_rmac", "out_dim": 2048, "pooling": "gem", "gemp": 3, "without_fc": False}


def test_the_full_network_is_resnet101_gem_fc():
    """torchvision's ResNet-101 has 44,549,160 parameters, 2,049,000 of them its ImageNet fc;
    AP-GeM adds a 2048 x 2048 fc with bias and GeM's one learned power."""
    with torch.device("meta"):
        net = ResNetGeM(ARCHS["resnet101_rmac"])
    assert sum(p.numel() for p in net.parameters()) == 44_549_160 - 2_049_000 + 2048 * 2048 + 2048 + 1
    keys = net.state_dict()
    assert "layer3.22.conv3.weight" in keys and "layer3.23.conv1.weight" not in keys
    assert tuple(keys["layer2.0.downsample.0.weight"].shape) == (512, 256, 1, 1) and "adpool.p" in keys


class _SklearnPCA:
    """Pickled as ``sklearn.decomposition._pca.PCA``, as scikit-learn writes it (a dict of fields)."""


_SklearnPCA.__module__, _SklearnPCA.__qualname__ = "sklearn.decomposition._pca", "PCA"


@contextlib.contextmanager
def _sklearn_names() -> Iterator[None]:
    """``sklearn.decomposition._pca.PCA`` importable while a checkpoint is written (pickle looks the
    class up by name), gone again before anything else imports: the reader never uses scikit-learn."""
    names = ["sklearn", "sklearn.decomposition", "sklearn.decomposition._pca"]
    saved = {n: sys.modules.get(n) for n in names}
    for name in names:
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[names[-1]].PCA = _SklearnPCA
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _checkpoint(path, seed=0, **extra):
    torch.manual_seed(seed)
    with torch.device("cpu"):
        net = ResNetGeM((1, 1, 1, 1))
    for m in net.modules():  # BN statistics that are not the identity, so they matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    net.fc.bias.data.zero_()  # random photos' features are tiny: a random bias would make every vector alike
    rng = np.random.default_rng(seed)
    pca = _SklearnPCA()
    pca.__dict__.update({"n_components": None, "whiten": True, "mean_": rng.normal(size=2048) * 1e-3,
                         "components_": np.linalg.qr(rng.normal(size=(2048, 64)))[0].T.copy(),
                         "explained_variance_": rng.uniform(0.1, 2.0, size=64), "_sklearn_version": "0.20.3"})
    ckpt = {"model_options": OPTIONS, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
            "preprocess": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": 224},
            "pca": {"Landmarks_clean": pca}, "epoch": 17, **extra}
    _save(ckpt, path)
    return net.state_dict(), pca


def _save(ckpt: dict, path) -> None:
    with _sklearn_names():
        torch.save(ckpt, path)


def _functional(state, x):
    """dirtorch's ResNet_RMAC forward, written out op by op from the state dict (one block a stage)."""

    def bn(x, k):
        return F.batch_norm(x, state[f"{k}.running_mean"], state[f"{k}.running_var"], state[f"{k}.weight"],
                            state[f"{k}.bias"], eps=1e-5)

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for stage in range(1, 5):
        k = f"layer{stage}.0"
        stride = 1 if stage == 1 else 2
        out = F.relu(bn(F.conv2d(x, state[f"{k}.conv1.weight"]), f"{k}.bn1"))
        out = F.relu(bn(F.conv2d(out, state[f"{k}.conv2.weight"], stride=stride, padding=1), f"{k}.bn2"))
        out = bn(F.conv2d(out, state[f"{k}.conv3.weight"]), f"{k}.bn3")
        x = F.relu(out + bn(F.conv2d(x, state[f"{k}.downsample.0.weight"], stride=stride), f"{k}.downsample.1"))
    p = state["adpool.p"]
    x = F.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(p), 1).pow(1.0 / p).flatten(1)
    return F.normalize(F.linear(x, state["fc.weight"], state["fc.bias"]), dim=-1)


def test_outputs_match_dirtorch_forward_and_whitening(tmp_path):
    path = tmp_path / "Resnet-101-AP-GeM.pt"
    state, pca = _checkpoint(path)
    photos = [place_image(1, variant=2), place_image(3, variant=4).resize((96, 64))]
    raw = get_descriptor("ap-gem", {**TINY, "weights": str(path), "whiten": False}).extract(photos)
    white = get_descriptor("ap-gem", {**TINY, "weights": str(path)}).extract(photos)
    for i, img in enumerate(photos):
        x = to_tensor([img], input_size(*img.size, 64, "long", 32), IMAGENET)
        with torch.inference_mode():
            want = _functional(state, x)[0].double().numpy()
        assert np.abs(raw[i] - want).max() < 1e-4
        w = ((want - pca.mean_) @ pca.components_.T) / np.power(pca.explained_variance_, 0.25)  # whitenp 0.25
        assert np.abs(white[i] - w / np.linalg.norm(w)).max() < 1e-4
    assert raw.shape == (2, 2048) and white.shape == (2, 64)


def test_every_key_is_checked_and_nothing_foreign_is_run(tmp_path):
    path = tmp_path / "ok.pt"
    _checkpoint(path)
    with _sklearn_names():
        ckpt = torch.load(path, weights_only=False)
    broken = {"missing": {k: v for k, v in ckpt["state_dict"].items() if k != "module.layer2.0.conv2.weight"},
              "unexpected": {**ckpt["state_dict"], "module.layer5.0.conv1.weight": torch.zeros(1)}}
    for case, sd in broken.items():
        _save({**ckpt, "state_dict": sd}, tmp_path / f"{case}.pt")
        with pytest.raises(WeightsLoadError, match="layer2.0.conv2.weight" if case == "missing" else "layer5"):
            get_descriptor("ap-gem", {**TINY, "weights": str(tmp_path / f"{case}.pt")})
    marker = tmp_path / "MARKER"
    (tmp_path / "evil.pt").write_bytes(evil_pickle(marker))
    with pytest.raises(ModelLoadError, match="cannot read"):
        get_descriptor("ap-gem", {**TINY, "weights": str(tmp_path / "evil.pt")})
    assert not marker.exists()
    _save({**ckpt, "model_options": {**OPTIONS, "arch": "resnet18_rmac"}}, tmp_path / "r18.pt")
    with pytest.raises(ModelLoadError, match="resnet18_rmac"):
        get_descriptor("ap-gem", {**TINY, "weights": str(tmp_path / "r18.pt")})
    _save({k: v for k, v in ckpt.items() if k != "pca"}, tmp_path / "nopca.pt")
    with pytest.raises(ModelLoadError, match="whiten=false"):
        get_descriptor("ap-gem", {**TINY, "weights": str(tmp_path / "nopca.pt")})
    assert get_descriptor("ap-gem", {**TINY, "weights": str(tmp_path / "nopca.pt"), "whiten": False}).dim == 2048


def test_without_weights_it_says_where_to_put_them(tmp_path, monkeypatch):
    assert_no_weights_says_where("ap-gem", ENV_VAR, "deep-image-retrieval", tmp_path, monkeypatch)


def test_every_command_runs_with_it(tmp_path, capsys):
    path = tmp_path / "w.pt"
    _checkpoint(path)
    root = tmp_path / "refs"
    make_reference_set(root)
    info = run_descriptor_commands(root, tmp_path, "ap-gem", {**TINY, "weights": str(path)}, capsys)
    assert info["descriptor"]["name"] == "ap-gem" and info["descriptor"]["dim"] == 64
