"""effnet-gem descriptor and the EfficientNet-Lite0 it runs on; synthetic images only, no shared data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from geoguide.indices.descriptors.efficientnet_lite import (
    EfficientNetLite0,
    WeightsLoadError,
    default_weights_path,
    load_efficientnet_lite0,
    load_state_dict_strict,
)
from geoguide.indices.descriptors.effnet_gem import EffNetGeM, target_size
from geoguide.indices.descriptors.registry import DESCRIPTORS

# Small inputs keep the file fast; the code paths are the same as at full size.
FAST = {"image_size": 96, "batch_size": 4, "num_threads": 1}


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A deterministic 'scene': gradient sky, coloured boxes, noise; varied enough to separate images."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 1, h)[:, None, None] * rng.uniform(60, 200, 3)
    arr = np.broadcast_to(ramp, (h, w, 3)) + rng.normal(0, 12, (h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
        x1, y1 = x0 + int(rng.integers(4, max(5, w // 2))), y0 + int(rng.integers(4, max(5, h // 2)))
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


SIZES = [(160, 120), (120, 160), (150, 100), (200, 60), (64, 64), (33, 97), (160, 120), (101, 77)]
IMAGES = [_photo(i, s) for i, s in enumerate(SIZES)] + [_photo(100 + i, (128, 96)) for i in range(4)]


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    return torch.load(default_weights_path(), map_location="cpu", weights_only=True)


def test_every_checkpoint_key_loads(checkpoint: dict[str, torch.Tensor]) -> None:
    model = EfficientNetLite0()
    assert set(model.state_dict()) == set(checkpoint)
    load_state_dict_strict(model, checkpoint)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008


def test_bad_checkpoint_names_the_keys(checkpoint: dict[str, torch.Tensor], tmp_path) -> None:
    broken = dict(checkpoint)
    del broken["_blocks.3._depthwise_conv.weight"]
    broken["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    broken["_fc.bias"] = torch.zeros(10)
    with pytest.raises(WeightsLoadError) as err:
        load_state_dict_strict(EfficientNetLite0(), broken)
    msg = str(err.value)
    assert "missing (1): _blocks.3._depthwise_conv.weight" in msg
    assert "unexpected (1): _blocks.3._se_reduce.weight" in msg
    assert "_fc.bias: checkpoint (10,) vs model (1000,)" in msg
    with pytest.raises(WeightsLoadError, match="no such weights file"):
        load_efficientnet_lite0(tmp_path / "absent.pth")


def test_logits_pinned_and_fusion_exact_enough() -> None:
    """Guards the architecture (SAME padding, ReLU6, eps): values cross-checked against timm's
    tf_efficientnet_lite0 with these weights, which matched bit for bit."""
    model = load_efficientnet_lite0()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 96), indexing="ij")
    x = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy]).unsqueeze(0)
    with torch.inference_mode():
        logits = model(x)[0]
        fused = model.fused()
        assert torch.allclose(fused.features(x), model.features(x), atol=1e-4)
    assert model.features(x).shape == (1, 1280, 2, 3)
    expected = torch.tensor([1.36230, 6.56347, 0.02218, -2.57827])
    assert torch.allclose(logits[:4], expected, atol=1e-3)


def test_registered_and_conf_checked() -> None:
    assert DESCRIPTORS["effnet-gem"] is EffNetGeM
    with pytest.raises(ValueError, match="unknown option"):
        EffNetGeM({"gem": 3})
    with pytest.raises(ValueError, match="resize"):
        EffNetGeM({"resize": "crop"})
    with pytest.raises(ValueError, match="pca_dim"):
        EffNetGeM({"pca_dim": 5000})
    with pytest.raises(ValueError, match="engine"):
        EffNetGeM({"engine": "tensorrt"})


@pytest.mark.parametrize("resize", ["long", "square"])
def test_onnx_and_torch_engines_describe_alike(resize: str) -> None:
    """The ONNX export traces SAME padding as a function of the input size: photos of other shapes
    than the one it was traced at (224 x 224) must still match torch, not just the traced shape."""
    onnx = EffNetGeM({**FAST, "resize": resize, "engine": "onnx"}).extract(IMAGES)
    torch_ = EffNetGeM({**FAST, "resize": resize, "engine": "torch"}).extract(IMAGES)
    assert np.abs(onnx - torch_).max() < 2e-5
    assert np.min(np.sum(onnx * torch_, axis=1)) > 1 - 1e-6


def test_onnx_export_is_cached_and_keyed_by_its_sources(tmp_path, monkeypatch) -> None:
    from geoguide.core.derived import derived_path
    from geoguide.indices.descriptors import effnet_onnx

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    weights = tmp_path / "lite0.pth"
    weights.write_bytes(default_weights_path().read_bytes())
    first = effnet_onnx.onnx_model_path(weights)
    assert first.is_file() and first.parent == tmp_path / "geoguide" / "derived"
    stamp = first.stat().st_mtime_ns
    assert effnet_onnx.onnx_model_path(weights) == first and first.stat().st_mtime_ns == stamp  # reused
    os.utime(weights, ns=(stamp + 10**9, stamp + 10**9))  # a changed checkpoint: another file
    assert derived_path("effnet-lite0", [weights, Path(effnet_onnx.__file__),
                                         Path(effnet_onnx.__file__).with_name("efficientnet_lite.py")],
                        "1", ".onnx") != first
    assert not list(first.parent.glob("*.tmp"))


def test_a_cold_describe_never_imports_torch(tmp_path) -> None:
    """What makes a cold locate fast: with the export cached, describing a photo loads no torch."""
    EffNetGeM({**FAST, "engine": "onnx"}).extract(IMAGES[:1])  # the export is in the shared cache now
    path = tmp_path / "p.png"
    IMAGES[0].save(path)
    code = (
        "import sys; from PIL import Image; from geoguide.indices.descriptors.effnet_gem import EffNetGeM;"
        f"v = EffNetGeM({FAST!r}).extract([Image.open({str(path)!r})]);"
        "print(v.shape, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(1, 1280) False"


def test_fingerprint_ignores_runtime_options_only() -> None:
    base = EffNetGeM(FAST).fingerprint()
    assert EffNetGeM({**FAST, "batch_size": 1, "num_threads": None, "engine": "torch"}).fingerprint() == base
    assert EffNetGeM({**FAST, "gem_p": 3.0}).fingerprint() != base
    assert EffNetGeM(FAST).conf["batch_size"] == FAST["batch_size"]  # conf itself untouched


def test_target_size_keeps_aspect_and_snaps_to_stride() -> None:
    assert target_size(640, 480, 320, "long") == (320, 256)
    assert target_size(480, 640, 320, "long") == (256, 320)
    assert target_size(640, 427, 384, "long") == (384, 256)
    assert target_size(640, 480, 224, "short") == (288, 224)
    assert target_size(4000, 500, 224, "short") == (448, 64)  # panorama: long side capped at 2x
    assert target_size(10, 3000, 224, "long") == (32, 224)  # never below one stride
    assert target_size(640, 427, 224, "square") == (224, 224)


@pytest.mark.parametrize("resize", ["long", "short", "square"])
def test_extract_shape_dtype_norm_determinism(resize: str) -> None:
    desc = EffNetGeM({**FAST, "resize": resize})
    assert not desc.trainable and desc.is_fitted and desc.dim == 1280 and desc.state() == {}
    a = desc.extract(IMAGES)
    assert a.shape == (len(IMAGES), 1280) and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, desc.extract(IMAGES))
    # Distinct synthetic scenes are not collapsed onto one vector.
    assert (a @ a.T)[np.triu_indices(len(a), 1)].min() < 0.999
    assert desc.extract([]).shape == (0, 1280)


def test_batch_equals_single() -> None:
    desc = EffNetGeM(FAST)
    batched = desc.extract(IMAGES)
    single = np.concatenate([desc.extract([img]) for img in IMAGES])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # Identical pixels give identical rows wherever they sit in the batch.
    np.testing.assert_allclose(batched[0], desc.extract([IMAGES[6], IMAGES[0]])[1], atol=1e-5)


def test_gem_p_changes_pooling() -> None:
    avg = EffNetGeM({**FAST, "gem_p": 1.0}).extract(IMAGES[:3])
    gem3 = EffNetGeM({**FAST, "gem_p": 3.0}).extract(IMAGES[:3])
    assert not np.allclose(avg, gem3, atol=1e-3)


def test_pca_fit_state_round_trip() -> None:
    conf = {**FAST, "pca_dim": 8}
    desc = EffNetGeM(conf)
    assert desc.trainable and not desc.is_fitted and desc.dim == 8
    with pytest.raises(RuntimeError, match="not fitted"):
        desc.extract(IMAGES[:1])
    desc.fit(IMAGES)
    assert desc.is_fitted and desc.dim == 8
    out = desc.extract(IMAGES)
    assert out.shape == (len(IMAGES), 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)

    state = desc.state()
    assert set(state) == {"pca_mean", "pca_proj"} and state["pca_proj"].shape == (1280, 8)
    restored = EffNetGeM(conf)
    restored.load_state({k: v.copy() for k, v in state.items()})
    assert restored.is_fitted and restored.fingerprint() == desc.fingerprint()
    np.testing.assert_array_equal(restored.extract(IMAGES), out)

    with pytest.raises(ValueError, match="pca_dim=None"):
        EffNetGeM(FAST).load_state(state)


def test_auto_falls_back_to_torch_when_the_export_cannot_be_made(monkeypatch, caplog):
    """A read-only cache or a full disk must not stop describing: ``auto`` runs on torch and says
    why; ``engine=onnx`` asked for it and fails."""
    from geoguide.indices.descriptors import effnet_onnx

    def no_room(weights):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(effnet_onnx, "onnx_model_path", no_room)
    out = EffNetGeM({**FAST, "engine": "auto"}).extract(IMAGES[:2])
    assert out.shape == (2, 1280) and any("runs on torch" in r.getMessage() for r in caplog.records)
    with pytest.raises(OSError, match="No space"):
        EffNetGeM({**FAST, "engine": "onnx"}).extract(IMAGES[:1])
