"""``netvlad`` through the real loading path, on checkpoints shaped like the released ones.

Both families: pytorch-NetVlad's ``checkpoint.pth.tar`` (a training checkpoint with NumPy metrics)
and the authors' MatConvNet ``*_struct.mat`` (written here with the layer list hloc reads). The
full-size key set is checked on the meta device; the rest runs the ``tiny`` variant.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from geoguide.core.errors import GeoguideError
from geoguide.indices.descriptors.base import ModelLoadError
from geoguide.indices.descriptors.efficientnet_lite import WeightsLoadError
from geoguide.indices.descriptors.local_weights import shapes
from geoguide.indices.descriptors.netvlad import ENV_VAR, NetVLADDescriptor
from geoguide.indices.descriptors.netvlad_model import NETVLAD_OFFICIAL, NETVLAD_TINY, NetVLAD
from geoguide.indices.descriptors.registry import DESCRIPTORS, get_descriptor
from tests.synthetic import make_reference_set, place_image
from tests.weights_checks import assert_no_weights_says_where, run_descriptor_commands

# torchvision's vgg16().features[:-2] (conv index -> in, out channels) and pytorch-NetVlad's pool.
VGG16_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
               14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512),
               26: (512, 512), 28: (512, 512)}
UPSTREAM_KEYS = {
    **{f"encoder.{i}.weight": (o, c, 3, 3) for i, (c, o) in VGG16_CONVS.items()},
    **{f"encoder.{i}.bias": (o,) for i, (_, o) in VGG16_CONVS.items()},
    "pool.conv.weight": (64, 512, 1, 1),
    "pool.centroids": (64, 512),
}
# The reference implementations on the tiny weights below and reference_input(): first 6 values.
# pytorch-NetVlad's netvlad.NetVLAD layer after the torch state's encoder; hloc's conversion of the
# .mat (its NetVLADLayer, whitening and averageImage[0, 0] subtraction).
NANNE_TINY_OUTPUT = np.array([
    [0.013964, -0.045431, 0.022925, -0.028624, -0.017737, 0.009303],
    [0.014297, -0.045712, 0.023864, -0.028188, -0.016756, 0.008472],
], np.float32)
HLOC_TINY_OUTPUT = np.array([
    [-0.074343, -0.04001, 0.021434, 0.093742, -0.042811, 0.147841],
    [-0.074078, -0.040311, 0.020801, 0.093483, -0.041827, 0.14847],
], np.float32)
AVERAGE_RGB = (122.68, 116.65, 103.99)
TINY = {"variant": "tiny", "image_size": 64, "num_threads": 1}


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        key_shapes = shapes(NetVLAD(NETVLAD_TINY))
    rng = np.random.default_rng(seed)
    return {k: torch.tensor(np.asarray(rng.standard_normal(s) * 0.3, np.float32)) for k, s in sorted(key_shapes.items())}


def write_matconvnet_struct(path: Path, seed: int = 0, n_layers: int = 35) -> None:
    """A ``*_struct.mat`` laid out as the released ones: ``net.layers`` (conv weights S x S x IN x OUT
    at VGG16's indices, NetVLAD assignment and negated centres D x K at 30, whitening 1 x 1 x DK x OUT
    at 33) and ``net.meta.normalization.averageImage``."""
    rng = np.random.default_rng(seed)
    layers = np.empty(n_layers, dtype=object)
    for i in range(n_layers):
        layers[i] = {"weights": np.empty(0, dtype=object)}

    def weights(*arrays: np.ndarray) -> dict:
        cell = np.empty(len(arrays), dtype=object)
        for j, a in enumerate(arrays):
            cell[j] = np.asarray(a, np.float32)
        return {"weights": cell}

    for i, module in enumerate(NetVLAD(NETVLAD_TINY).encoder):
        if isinstance(module, torch.nn.Conv2d):
            layers[i] = weights(rng.standard_normal((3, 3, module.in_channels, module.out_channels)) * 0.3,
                                rng.standard_normal(module.out_channels) * 0.1)
    d, k = NETVLAD_TINY.feature_dim, NETVLAD_TINY.num_clusters
    layers[30] = weights(rng.standard_normal((d, k)), rng.standard_normal((d, k)) * 0.3)
    if n_layers > 33:
        layers[33] = weights(rng.standard_normal((1, 1, d * k, NETVLAD_TINY.whiten_dim)),
                             rng.standard_normal(NETVLAD_TINY.whiten_dim) * 0.1)
    average = np.broadcast_to(np.asarray(AVERAGE_RGB), (4, 4, 3))  # an average *image*, as MatConvNet keeps it
    scipy.io.savemat(path, {"net": {"layers": layers, "meta": {"normalization": {"averageImage": average}}}})


def save_as_numpy1_pickle(obj: dict, path: Path) -> None:
    """``torch.save`` as pytorch-NetVlad's 2019 checkpoints are: NumPy scalars under NumPy 1's module
    path (``numpy.core.multiarray.scalar``), which a plain ``weights_only`` load refuses."""
    torch.save(obj, path.with_suffix(".tmp"))
    with zipfile.ZipFile(path.with_suffix(".tmp")) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(item, data)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("netvlad")
    save_as_numpy1_pickle({"epoch": 30, "state_dict": tiny_state(), "recalls": {1: np.float64(0.85), 5: np.float64(0.95)},
                           "best_score": np.float64(0.95), "parallel": False}, root / "checkpoint.pth.tar")
    write_matconvnet_struct(root / "Pitts30K_struct.mat")
    return {"torch": root / "checkpoint.pth.tar", "mat": root / "Pitts30K_struct.mat"}


def photos() -> list[Image.Image]:
    """Three photos of different shapes, then the first one again."""
    return [place_image(seed, size=size) for seed, size in [(0, (96, 72)), (1, (72, 96)), (2, (130, 60)), (0, (96, 72))]]


def reference_input(mean: tuple[float, ...] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """N(0, 1) pixels of seed 1, shape (2, 3, 64, 96), minus ``mean``: a normalised network input."""
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 96)).astype(np.float32)
    return torch.tensor(x) - torch.tensor(mean).view(1, 3, 1, 1)


def test_registered():
    assert DESCRIPTORS["netvlad"] is NetVLADDescriptor


def test_full_size_keys_and_shapes_are_pytorch_netvlads():
    with torch.device("meta"):
        plain, whitened = NetVLAD(NETVLAD_OFFICIAL), NetVLAD(NETVLAD_OFFICIAL, whiten=True)
    assert shapes(plain) == UPSTREAM_KEYS and plain.dim == 32768
    assert shapes(whitened) == {**UPSTREAM_KEYS, "whiten.weight": (4096, 32768), "whiten.bias": (4096,)}
    assert whitened.dim == 4096


def test_tiny_variant_has_the_official_key_names():
    assert set(tiny_state()) == set(UPSTREAM_KEYS)


def test_torch_checkpoint_matches_pytorch_netvlad_numbers(checkpoints):
    d = get_descriptor("netvlad", {**TINY, "weights": str(checkpoints["torch"])})
    assert d.dim == 256 and d._pixels.mean == (0.485, 0.456, 0.406)
    with torch.inference_mode():
        out = d._net(reference_input()).numpy()
    np.testing.assert_allclose(out[:, :6], NANNE_TINY_OUTPUT, atol=2e-6)


def test_matconvnet_struct_matches_hloc_numbers(checkpoints):
    d = get_descriptor("netvlad", {**TINY, "weights": str(checkpoints["mat"])})
    assert d.dim == 16 and d._pixels.mean == pytest.approx(AVERAGE_RGB) and d._pixels.scale == 1.0
    with torch.inference_mode():
        out = d._net(reference_input(AVERAGE_RGB)).numpy()
    np.testing.assert_allclose(out[:, :6], HLOC_TINY_OUTPUT, atol=2e-6)
    assert get_descriptor("netvlad", {**TINY, "weights": str(checkpoints["mat"]), "whiten": False}).dim == 256


@pytest.mark.parametrize("kind, dim", [("torch", 256), ("mat", 16)])
def test_extract_through_the_registry(checkpoints, kind, dim):
    d = get_descriptor("netvlad", {**TINY, "weights": str(checkpoints[kind])})
    assert d.dim == dim and not d.trainable and d.state() == {}
    imgs = photos()
    x = d.extract(imgs)
    assert x.shape == (4, dim) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x, d.extract(imgs))
    np.testing.assert_allclose(x[0], x[3], atol=1e-6)  # same pixels, same vector
    assert abs(float(x[0] @ x[1])) < 0.999
    np.testing.assert_allclose(np.concatenate([d.extract([img]) for img in imgs]), x, atol=1e-5)


def test_other_layouts_of_the_same_weights(checkpoints, tmp_path, monkeypatch):
    ref = get_descriptor("netvlad", {**TINY, "weights": str(checkpoints["torch"])}).extract(photos())
    parallel = {k.replace("encoder.", "encoder.module.").replace("pool.", "pool.module."): v
                for k, v in tiny_state().items()}
    torch.save({"state_dict": parallel, "parallel": True}, tmp_path / "parallel.pth.tar")
    got = get_descriptor("netvlad", {**TINY, "weights": str(tmp_path / "parallel.pth.tar")}).extract(photos())
    np.testing.assert_allclose(got, ref, atol=1e-6)
    monkeypatch.setenv(ENV_VAR, str(checkpoints["torch"]))
    np.testing.assert_allclose(NetVLADDescriptor(TINY).extract(photos()), ref, atol=1e-6)


def _saved(tmp_path: Path, state: dict) -> str:
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda s: s.pop("encoder.28.bias"), "missing (1): encoder.28.bias"),
        (lambda s: s.__setitem__("pool.alpha", torch.zeros(1)), "unexpected (1): pool.alpha"),
        (lambda s: s.__setitem__("pool.centroids", torch.zeros(8, 31)),
         "shape mismatch (1): pool.centroids: checkpoint (8, 31) vs model (8, 32)"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_checkpoint_that_does_not_fit_names_the_key_and_file(tmp_path, edit, needle):
    state = tiny_state()
    edit(state)
    path = _saved(tmp_path, state)
    with pytest.raises(WeightsLoadError) as err:
        NetVLADDescriptor({**TINY, "weights": path})
    msg = str(err.value)
    assert needle in msg and path in msg and "\n" not in msg
    assert isinstance(err.value, GeoguideError) and err.value.exit_code == 2


def test_unsupported_or_broken_files_are_clear_errors(checkpoints, tmp_path):
    with pytest.raises(ModelLoadError, match="vladv2"):
        NetVLADDescriptor({**TINY, "weights": _saved(tmp_path, {**tiny_state(), "pool.conv.bias": torch.zeros(8)})})
    with pytest.raises(ModelLoadError, match="no PCA-whitening"):
        NetVLADDescriptor({**TINY, "weights": str(checkpoints["torch"]), "whiten": True})
    write_matconvnet_struct(tmp_path / "short.mat", n_layers=31)  # no whitening layer
    assert NetVLADDescriptor({**TINY, "weights": str(tmp_path / "short.mat")}).dim == 256
    with pytest.raises(ModelLoadError, match=r"short.mat is not a usable MatConvNet.*no whitening at 33"):
        NetVLADDescriptor({**TINY, "weights": str(tmp_path / "short.mat"), "whiten": True})
    (tmp_path / "junk.mat").write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(ModelLoadError, match="junk.mat is not a usable MatConvNet NetVLAD struct"):
        NetVLADDescriptor({**TINY, "weights": str(tmp_path / "junk.mat")})
    with pytest.raises(ValueError, match="whiten must be"):
        NetVLADDescriptor({**TINY, "weights": str(checkpoints["torch"]), "whiten": "yes"})


def test_no_weights_says_where_to_get_them(tmp_path, monkeypatch):
    assert_no_weights_says_where("netvlad", ENV_VAR, "Pitts30K_struct.mat", tmp_path, monkeypatch)


def test_index_build_search_locate_eval(checkpoints, tmp_path: Path, capsys):
    root = tmp_path / "refs"
    make_reference_set(root)
    info = run_descriptor_commands(root, tmp_path, "netvlad", {**TINY, "weights": str(checkpoints["mat"])}, capsys)
    assert info["descriptor"]["name"] == "netvlad" and info["descriptor"]["dim"] == 16
