"""CLIP descriptor through the real loading path, on tiny randomly initialised checkpoints."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import transformers
from PIL import Image, ImageEnhance
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

from geoguide.core.errors import GeoguideError
from geoguide.indices.descriptors.base import ModelLoadError, WeightsNotFoundError
from geoguide.indices.descriptors.clip import CLIPDescriptor, ClipPreprocess
from geoguide.indices.descriptors.registry import DESCRIPTORS, get_descriptor

VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 16,
}
# Deliberately not the model's input size, so resize and crop both do something.
PREPROCESSOR = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}


def _processor_class() -> type:
    # transformers 5 names the torchvision-free processor ...Pil; in 4.x the plain class is PIL/numpy.
    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip_vision")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)).save_pretrained(path)
    _processor_class()(**PREPROCESSOR).save_pretrained(path)
    return path


def photo(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Smooth colour blobs plus a little noise: structured enough for a near-duplicate test."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.zeros((h, w, 3))
    for _ in range(6):
        cy, cx, r = rng.random(3) * [1, 1, 0.3] + [0, 0, 0.1]
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None] * rng.random(3)
    img = img / img.max() * 220 + rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [photo(s, (64 + 9 * s, 48 + 5 * (s % 3))) for s in range(6)]


def test_registered():
    assert DESCRIPTORS["clip"] is CLIPDescriptor
    assert CLIPDescriptor.default_conf["model"] == "openai/clip-vit-large-patch14"


def test_preprocessing_matches_transformers(vision_dir: Path, photos: list[Image.Image]):
    ref_proc = _processor_class().from_pretrained(vision_dir)
    _, mine = CLIPDescriptor({"model": str(vision_dir)})._net()
    images = [*photos, photos[0].transpose(Image.Transpose.ROTATE_90), photos[1].convert("L")]
    for img in images:  # one at a time: the reference wants equal sizes only after cropping
        ref = ref_proc(images=[img.convert("RGB")], return_tensors="np")["pixel_values"]
        np.testing.assert_allclose(mine([img]).numpy(), ref, atol=1e-5)


def test_preprocess_config_variants():
    old = ClipPreprocess.from_config({"size": 224, "crop_size": 224}, image_size=336)
    assert (old.resize, old.crop_height, old.crop_width) == (224, 224, 224)
    fixed = ClipPreprocess.from_config({"size": {"height": 40, "width": 30}, "do_center_crop": False}, 32)
    assert fixed.resize == (30, 40)
    assert fixed([Image.new("RGB", (100, 50))]).shape == (1, 3, 40, 30)
    default = ClipPreprocess.from_config({}, image_size=32)
    assert default.resize == 32 and default.crop_height == 32


def test_extract_shape_norm_determinism_and_batching(vision_dir: Path, photos: list[Image.Image]):
    d = CLIPDescriptor({"model": str(vision_dir)})
    assert not d.trainable and d.is_fitted and d.dim == 16 and d.state() == {}
    x = d.extract(photos)
    assert x.shape == (len(photos), 16) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x, d.extract(photos))
    small_batches = CLIPDescriptor({"model": str(vision_dir), "batch_size": 2}).extract(photos)
    np.testing.assert_allclose(small_batches, x, atol=1e-5)
    assert d.extract([]).shape == (0, 16)


def test_full_clip_checkpoint_gives_clip_image_features(tmp_path: Path, photos: list[Image.Image]):
    """openai/clip-* hub checkpoints are full CLIPModels: the vision tower must load from them intact."""
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(1)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16)).eval()
    full.save_pretrained(tmp_path)
    d = CLIPDescriptor({"model": str(tmp_path)})
    _, preprocess = d._net()
    with torch.inference_mode():
        ref = full.get_image_features(pixel_values=preprocess(photos))
    # transformers 4 returns the projected tensor; 5 an output whose pooler_output is projected.
    ref = (ref if isinstance(ref, torch.Tensor) else ref.pooler_output).numpy()
    assert ref.shape == (len(photos), 16)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(d.extract(photos), ref, atol=1e-5)


def test_pca_fit_state_round_trip(vision_dir: Path, photos: list[Image.Image]):
    conf = {"model": str(vision_dir), "pca_dim": 4}
    d = CLIPDescriptor(conf)
    assert d.trainable and not d.is_fitted
    with pytest.raises(RuntimeError, match="fit"):
        d.extract(photos[:1])
    d.fit(photos)
    x = d.extract(photos)
    assert x.shape == (len(photos), 4) and d.dim == 4
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    restored = CLIPDescriptor(conf)
    restored.load_state(d.state())
    np.testing.assert_array_equal(restored.extract(photos), x)
    assert restored.fingerprint() == d.fingerprint()
    with pytest.raises(ValueError, match="pca_dim=None"):
        CLIPDescriptor({"model": str(vision_dir)}).load_state(d.state())


def test_near_duplicate_closer_than_other_photos(vision_dir: Path):
    d = CLIPDescriptor({"model": str(vision_dir)})
    originals = [photo(s, (80, 60)) for s in range(10, 16)]
    dups = [ImageEnhance.Brightness(p.crop((3, 2, 77, 58))).enhance(1.15) for p in originals]
    sim = d.extract(dups) @ d.extract(originals).T
    assert (sim.argmax(axis=1) == np.arange(len(originals))).all(), np.round(sim, 3)


def test_conf_errors(vision_dir: Path):
    with pytest.raises(ValueError, match="unknown option"):
        CLIPDescriptor({"modle": str(vision_dir)})
    with pytest.raises(ValueError, match="batch_size"):
        CLIPDescriptor({"batch_size": 0})


@pytest.fixture
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """HF's offline switches off, an empty HF cache, and every DNS lookup or connect recorded and refused."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network use in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_hub_id_without_local_weights_fails_at_once_without_the_network(no_network: list[tuple]):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        get_descriptor("clip")  # the default hub id; construction must fail, before any image is read
    assert time.perf_counter() - start < 5 and no_network == []
    msg = str(err.value)
    assert "\n" not in msg and "openai/clip-vit-large-patch14" in msg
    for needle in ("never downloads", "--descriptor-opt model=", "config.json", "model.safetensors", "hf-cache"):
        assert needle in msg, needle
    assert isinstance(err.value, GeoguideError) and isinstance(err.value, FileNotFoundError)  # one CLI line


def test_unusable_local_folders_say_what_is_missing(tmp_path: Path, no_network: list[tuple]):
    with pytest.raises(WeightsNotFoundError, match=r"no such folder.*--descriptor-opt model="):
        CLIPDescriptor({"model": str(tmp_path / "not-there")})
    with pytest.raises(WeightsNotFoundError, match=r"holds no config.json"):
        CLIPDescriptor({"model": str(tmp_path)})  # an empty folder
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match=r"no weights file \(model.safetensors"):
        CLIPDescriptor({"model": str(tmp_path)})
    assert no_network == []


def test_hub_id_found_in_the_local_cache_loads_offline(vision_dir: Path, no_network: list[tuple]):
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--someone--tiny-clip"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(vision_dir, target_is_directory=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    d = CLIPDescriptor({"model": "someone/tiny-clip"})
    assert d.dim == 16 and d.extract([photo(0)]).shape == (1, 16)
    assert no_network == []


def test_broken_local_weights_are_a_clear_error(tmp_path: Path, no_network: list[tuple]):
    CLIPVisionConfig(**VISION).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="cannot load CLIP vision weights"):
        _ = CLIPDescriptor({"model": str(tmp_path)}).dim
    assert no_network == []


def test_checkpoint_without_projection_is_refused(tmp_path: Path):
    CLIPVisionModel(CLIPVisionConfig(**VISION)).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="lacks"):
        _ = CLIPDescriptor({"model": str(tmp_path)}).dim


def test_fingerprint_ignores_runtime_options_only(vision_dir: Path):
    base = CLIPDescriptor({"model": str(vision_dir)}).fingerprint()
    assert CLIPDescriptor({"model": str(vision_dir), "batch_size": 1, "device": "cpu"}).fingerprint() == base
    assert CLIPDescriptor({"model": str(vision_dir), "pca_dim": 8}).fingerprint() != base
