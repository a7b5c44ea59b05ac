"""``megaloc`` through the real loading path, on checkpoints shaped like the official one.

The full-size key set is checked on the meta device against the list read from upstream; the
rest runs the ``tiny`` variant (same key names, small shapes) so the file stays fast on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from geoguide.core.errors import GeoguideError
from geoguide.indices.descriptors.base import ModelLoadError
from geoguide.indices.descriptors.efficientnet_lite import WeightsLoadError
from geoguide.indices.descriptors.local_weights import shapes
from geoguide.indices.descriptors.megaloc import ENV_VAR, MegaLocDescriptor
from geoguide.indices.descriptors.megaloc_model import (
    MEGALOC_OFFICIAL,
    MEGALOC_TINY,
    PATCH,
    MegaLoc,
    log_sinkhorn,
)
from geoguide.indices.descriptors.registry import DESCRIPTORS, get_descriptor
from geoguide.indices.descriptors.torch_network import input_size
from tests.synthetic import make_reference_set, place_image
from tests.weights_checks import assert_no_weights_says_where, run_descriptor_commands

# From gmberton/MegaLoc megaloc_model.py (HEAD 1af071c): every key of MegaLoc().state_dict() with
# its shape; upstream's model has 189 tensors and 228,639,553 parameters.
UPSTREAM_BLOCK = {
    "norm1.weight": (768,), "norm1.bias": (768,),
    "attn.qkv.weight": (2304, 768), "attn.qkv.bias": (2304,),
    "attn.proj.weight": (768, 768), "attn.proj.bias": (768,),
    "ls1.gamma": (768,),
    "norm2.weight": (768,), "norm2.bias": (768,),
    "mlp.fc1.weight": (3072, 768), "mlp.fc1.bias": (3072,),
    "mlp.fc2.weight": (768, 3072), "mlp.fc2.bias": (768,),
    "ls2.gamma": (768,),
}
UPSTREAM_KEYS = {
    "backbone.cls_token": (1, 1, 768),
    "backbone.pos_embed": (1, 1370, 768),
    "backbone.patch_embed.proj.weight": (768, 3, 14, 14),
    "backbone.patch_embed.proj.bias": (768,),
    **{f"backbone.blocks.{i}.{k}": s for i in range(12) for k, s in UPSTREAM_BLOCK.items()},
    "backbone.norm.weight": (768,),
    "backbone.norm.bias": (768,),
    "aggregator.agg.token_features.0.weight": (512, 768),
    "aggregator.agg.token_features.0.bias": (512,),
    "aggregator.agg.token_features.2.weight": (256, 512),
    "aggregator.agg.token_features.2.bias": (256,),
    "aggregator.agg.cluster_features.0.weight": (512, 768, 1, 1),
    "aggregator.agg.cluster_features.0.bias": (512,),
    "aggregator.agg.cluster_features.3.weight": (256, 512, 1, 1),
    "aggregator.agg.cluster_features.3.bias": (256,),
    "aggregator.agg.score.0.weight": (512, 768, 1, 1),
    "aggregator.agg.score.0.bias": (512,),
    "aggregator.agg.score.3.weight": (64, 512, 1, 1),
    "aggregator.agg.score.3.bias": (64,),
    "aggregator.agg.dust_bin": (),
    "aggregator.linear.weight": (8448, 16640),
    "aggregator.linear.bias": (8448,),
}
# Upstream's MegaLoc code (DINOv2 + Aggregator + L2Norm at the tiny sizes) run on
# random_state(seed 0) and a N(0, 1) input of seed 1, shape (2, 3, 56, 70): first 6 values.
UPSTREAM_TINY_OUTPUT = np.array([
    [-0.255226, -0.143264, -0.217264, 0.106308, 0.178055, -0.295596],
    [-0.250841, -0.150699, -0.213939, 0.144038, 0.151975, -0.281016],
], np.float32)
TINY = {"variant": "tiny", "image_size": 56, "num_threads": 1}


def random_state(key_shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {k: torch.tensor(np.asarray(rng.standard_normal(s) * 0.3, np.float32)) for k, s in sorted(key_shapes.items())}


def tiny_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return shapes(MegaLoc(MEGALOC_TINY))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("megaloc") / "model.safetensors"
    save_file(random_state(tiny_shapes(), 0), str(path))
    return path


def photos() -> list[Image.Image]:
    """Three photos of different shapes, then the first one again."""
    return [place_image(seed, size=size) for seed, size in [(0, (96, 72)), (1, (72, 96)), (2, (130, 60)), (0, (96, 72))]]


def test_registered():
    assert DESCRIPTORS["megaloc"] is MegaLocDescriptor


def test_full_size_keys_and_shapes_are_upstreams():
    with torch.device("meta"):
        model = MegaLoc(MEGALOC_OFFICIAL)
    assert shapes(model) == UPSTREAM_KEYS
    assert sum(v.numel() for v in model.state_dict().values()) == 228_639_553
    assert MEGALOC_OFFICIAL.feat_dim == 8448 and MEGALOC_OFFICIAL.salad_dim == 16640


def test_tiny_variant_has_the_official_key_names():
    assert set(tiny_shapes()) == set(UPSTREAM_KEYS) - {f"backbone.blocks.{i}.{k}" for i in range(2, 12) for k in UPSTREAM_BLOCK}


def test_network_matches_upstream_numbers(weights: Path):
    net = get_descriptor("megaloc", {**TINY, "weights": str(weights)})._net
    x = torch.tensor(np.random.default_rng(1).standard_normal((2, 3, 56, 70)).astype(np.float32))
    with torch.inference_mode():
        out = net(x).numpy()
    np.testing.assert_allclose(out[:, :6], UPSTREAM_TINY_OUTPUT, atol=2e-6)


def test_extract_through_the_registry(weights: Path):
    d = get_descriptor("megaloc", {**TINY, "weights": str(weights)})
    assert d.dim == 24 and not d.trainable and d.state() == {}
    imgs = photos()
    x = d.extract(imgs)
    assert x.shape == (4, 24) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x, d.extract(imgs))
    np.testing.assert_allclose(x[0], x[3], atol=1e-6)  # same pixels, same vector
    assert abs(float(x[0] @ x[1])) < 0.999  # different photos differ
    one_by_one = np.concatenate([d.extract([img]) for img in imgs])
    np.testing.assert_allclose(one_by_one, x, atol=1e-5)
    assert d.extract([]).shape == (0, 24)


def test_pth_legacy_release_layout_and_env_var_give_the_same_vectors(weights, tmp_path, monkeypatch):
    state = random_state(tiny_shapes(), 0)
    torch.save(state, tmp_path / "model.pth")
    # v1.0's megaloc.torch: DINOv2's hub module under backbone.model, with its training-only mask token.
    legacy = {k.replace("backbone.", "backbone.model.", 1): v for k, v in state.items()}
    legacy["backbone.model.mask_token"] = torch.zeros(1, 32)
    torch.save({"state_dict": legacy}, tmp_path / "megaloc.torch")
    ref = get_descriptor("megaloc", {**TINY, "weights": str(weights)}).extract(photos())
    for name in ("model.pth", "megaloc.torch"):
        got = get_descriptor("megaloc", {**TINY, "weights": str(tmp_path / name)}).extract(photos())
        np.testing.assert_allclose(got, ref, atol=1e-6)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "model.pth"))
    np.testing.assert_allclose(MegaLocDescriptor(TINY).extract(photos()), ref, atol=1e-6)


def _broken(tmp_path: Path, name: str, edit) -> str:
    state = random_state(tiny_shapes(), 0)
    edit(state)
    path = tmp_path / name
    save_file(state, str(path))
    return str(path)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda s: s.pop("backbone.blocks.1.ls2.gamma"), "missing (1): backbone.blocks.1.ls2.gamma"),
        (lambda s: s.__setitem__("backbone.register_tokens", torch.zeros(1, 4, 32)),
         "unexpected (1): backbone.register_tokens"),
        (lambda s: s.__setitem__("aggregator.linear.weight", torch.zeros(24, 41)),
         "shape mismatch (1): aggregator.linear.weight: checkpoint (24, 41) vs model (24, 40)"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_checkpoint_that_does_not_fit_names_the_key_and_file(tmp_path, edit, needle):
    path = _broken(tmp_path, "bad.safetensors", edit)
    with pytest.raises(WeightsLoadError) as err:
        MegaLocDescriptor({**TINY, "weights": path})
    msg = str(err.value)
    assert needle in msg and path in msg and "\n" not in msg
    assert isinstance(err.value, GeoguideError) and err.value.exit_code == 2


def test_official_variant_refuses_tiny_weights_in_a_readable_line(weights: Path):
    with pytest.raises(WeightsLoadError, match=r"missing \(140\): backbone.blocks.10.*shape mismatch \(48\)") as err:
        MegaLocDescriptor({"weights": str(weights)})
    assert "(+132 more)" in str(err.value) and len(str(err.value)) < 2000


def test_unreadable_files_are_clear_errors(tmp_path: Path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"cannot read weights from .*junk.pth"):
        MegaLocDescriptor({**TINY, "weights": str(tmp_path / "junk.pth")})
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ModelLoadError, match="not a state dict"):
        MegaLocDescriptor({**TINY, "weights": str(tmp_path / "list.pt")})


def test_no_weights_says_where_to_get_them(tmp_path, monkeypatch):
    assert_no_weights_says_where("megaloc", ENV_VAR, "huggingface.co/gberton/MegaLoc", tmp_path, monkeypatch)


def test_conf_errors(weights: Path):
    with pytest.raises(ValueError, match="variant"):
        MegaLocDescriptor({"variant": "large", "weights": str(weights)})
    with pytest.raises(ValueError, match="resize"):
        MegaLocDescriptor({"resize": "crop", "weights": str(weights)})


def test_tiny_inputs_and_panoramas_keep_more_patches_than_clusters(weights: Path):
    d = MegaLocDescriptor({**TINY, "weights": str(weights), "image_size": 14, "resize": "square"})
    assert d.extract(photos()[:1]).shape == (1, 24)  # 3 x 3 patches, not 1 x 1
    assert MegaLocDescriptor({"weights": str(weights), "variant": "tiny"}).min_units == 3
    assert input_size(4000, 300, 322, "long", PATCH, 9) == (322, 126)
    with pytest.raises(ValueError, match="1 patches for 4 clusters"):
        log_sinkhorn(torch.zeros(1, 4, 1), torch.tensor(1.0))


def test_index_build_search_locate_eval(weights: Path, tmp_path: Path, capsys):
    root = tmp_path / "refs"
    make_reference_set(root)
    info = run_descriptor_commands(root, tmp_path, "megaloc", {**TINY, "weights": str(weights)}, capsys)
    assert info["descriptor"]["name"] == "megaloc" and info["descriptor"]["dim"] == 24


def test_fingerprint_follows_the_checkpoint_content_not_its_path(weights: Path, tmp_path, monkeypatch):
    base = MegaLocDescriptor({**TINY, "weights": str(weights)}).fingerprint()
    copy = tmp_path / "moved.safetensors"
    copy.write_bytes(weights.read_bytes())
    assert MegaLocDescriptor({**TINY, "weights": str(copy), "batch_size": 1, "device": "cpu"}).fingerprint() == base
    monkeypatch.setenv(ENV_VAR, str(copy))
    assert MegaLocDescriptor(TINY).fingerprint() == base
    save_file(random_state(tiny_shapes(), 1), str(tmp_path / "other.safetensors"))
    assert MegaLocDescriptor({**TINY, "weights": str(tmp_path / "other.safetensors")}).fingerprint() != base
    assert MegaLocDescriptor({**TINY, "weights": str(weights), "image_size": 70}).fingerprint() != base
