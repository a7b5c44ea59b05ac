"""``amosnet`` on ``.caffemodel`` files written here by the protobuf library itself, from message
types declared with caffe.proto's field numbers (the real encoder, not ours), in both the current
(``layer``) and the pre-2015 (``layers``, V1) layouts, with random weights. Outputs match a
transcription of VPR-Bench's ``AMOSNet.py`` (Caffe's BGR 0..255 minus the mean, conv5, its 30
pyramid regions by explicit loops) to 1e-4; pycaffe is not on PyPI, so Caffe itself cannot run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from geoguide.indices.descriptors.amosnet import CONVS, ENV_VAR
from geoguide.indices.descriptors.base import ModelLoadError
from geoguide.indices.descriptors.efficientnet_lite import WeightsLoadError
from geoguide.indices.descriptors.registry import get_descriptor
from geoguide.indices.descriptors.torch_network import PixelNorm, to_tensor
from tests.synthetic import make_reference_set, place_image
from tests.weights_checks import assert_no_weights_says_where, run_descriptor_commands

F_ = descriptor_pb2.FieldDescriptorProto
# caffe.proto's messages as far as weights go (BVLC/caffe src/caffe/proto/caffe.proto).
CAFFE = {
    "BlobShape": [("dim", 1, F_.TYPE_INT64, F_.LABEL_REPEATED, None, True)],
    "BlobProto": [("shape", 7, F_.TYPE_MESSAGE, F_.LABEL_OPTIONAL, ".caffe.BlobShape", False),
                  ("data", 5, F_.TYPE_FLOAT, F_.LABEL_REPEATED, None, True),
                  ("num", 1, F_.TYPE_INT32, F_.LABEL_OPTIONAL, None, False),
                  ("channels", 2, F_.TYPE_INT32, F_.LABEL_OPTIONAL, None, False),
                  ("height", 3, F_.TYPE_INT32, F_.LABEL_OPTIONAL, None, False),
                  ("width", 4, F_.TYPE_INT32, F_.LABEL_OPTIONAL, None, False)],
    "LayerParameter": [("name", 1, F_.TYPE_STRING, F_.LABEL_OPTIONAL, None, False),
                       ("type", 2, F_.TYPE_STRING, F_.LABEL_OPTIONAL, None, False),
                       ("bottom", 3, F_.TYPE_STRING, F_.LABEL_REPEATED, None, False),
                       ("blobs", 7, F_.TYPE_MESSAGE, F_.LABEL_REPEATED, ".caffe.BlobProto", False)],
    "V1LayerParameter": [("name", 4, F_.TYPE_STRING, F_.LABEL_OPTIONAL, None, False),
                         ("type", 5, F_.TYPE_INT32, F_.LABEL_OPTIONAL, None, False),
                         ("blobs", 6, F_.TYPE_MESSAGE, F_.LABEL_REPEATED, ".caffe.BlobProto", False)],
    "NetParameter": [("name", 1, F_.TYPE_STRING, F_.LABEL_OPTIONAL, None, False),
                     ("layers", 2, F_.TYPE_MESSAGE, F_.LABEL_REPEATED, ".caffe.V1LayerParameter", False),
                     ("layer", 100, F_.TYPE_MESSAGE, F_.LABEL_REPEATED, ".caffe.LayerParameter", False)],
}


@pytest.fixture(scope="module")
def caffe():
    proto = descriptor_pb2.FileDescriptorProto(name="geoguide_test_caffe.proto", package="caffe", syntax="proto2")
    for message, spec in CAFFE.items():
        m = proto.message_type.add(name=message)
        for name, number, kind, label, type_name, packed in spec:
            f = m.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                f.type_name = type_name
            if packed:
                f.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}")) for name in CAFFE}


def _weights(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (n_out, per_group, k, *_rest) in CONVS.items():
        fan_in = per_group * k * k
        out[name] = (rng.normal(0, np.sqrt(2 / fan_in), (n_out, per_group, k, k)).astype(np.float32),
                     rng.normal(0, 0.1, n_out).astype(np.float32))
    return out


def write_caffemodel(caffe, path, weights, *, v1=False, extra=()):
    net = caffe["NetParameter"](name="AmosNet")
    for name, arrays in [*weights.items(), *extra]:
        layer = net.layers.add(name=name, type=4) if v1 else net.layer.add(name=name, type="Convolution", bottom=["x"])
        for a in arrays:
            b = layer.blobs.add()
            if v1:  # the legacy 4-D fields: biases as (1, 1, 1, n)
                dims = list(a.shape) if a.ndim == 4 else [1, 1, 1, a.size]
                b.num, b.channels, b.height, b.width = dims
            else:
                b.shape.dim.extend(a.shape)
            b.data.extend(a.reshape(-1).tolist())
    path.write_bytes(net.SerializeToString())


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _vpr_bench(weights, mean_bgr, img) -> np.ndarray:
    """VPR-Bench's AMOSNet.py: Caffe's input, conv5 (in-place ReLU), the 30 regions by its loops."""
    x = to_tensor([img], (227, 227), PixelNorm(1.0, (0.0, 0.0, 0.0)))[:, [2, 1, 0]]  # RGB 0..255 -> BGR
    x = x - torch.from_numpy(mean_bgr).reshape(3, 1, 1) if mean_bgr.ndim == 1 else x - torch.from_numpy(mean_bgr)
    w = {k: (torch.from_numpy(a), torch.from_numpy(b)) for k, (a, b) in weights.items()}

    def conv(x, name):
        _, _, _, stride, pad, groups = CONVS[name]
        return F.relu(F.conv2d(x, *w[name], stride=stride, padding=pad, groups=groups))

    def lrn(x):  # Caffe: x / (1 + alpha / n * sum of squares over 5 channels) ^ beta
        sq = F.pad(x.pow(2), (0, 0, 0, 0, 2, 2))
        s = sum(sq[:, i:i + x.shape[1]] for i in range(5))
        return x / (1 + 1e-4 / 5 * s).pow(0.75)

    x = lrn(F.max_pool2d(conv(x, "conv1"), 3, 2, ceil_mode=True))
    x = lrn(F.max_pool2d(conv(x, "conv2"), 3, 2, ceil_mode=True))
    f = conv(conv(conv(x, "conv3"), "conv4"), "conv5")[0].numpy()
    loc = np.zeros((256, 30))
    regions = [(slice(None), slice(None)),
               *[(r, c) for r in (slice(0, 6), slice(7, 12)) for c in (slice(0, 6), slice(7, 12))],
               *[(r, c) for r in (slice(0, 4), slice(5, 8), slice(9, 12)) for c in (slice(0, 4), slice(5, 8), slice(9, 12))],
               *[(r, c) for r in (slice(0, 3), slice(4, 6), slice(7, 9), slice(10, 12))
                 for c in (slice(0, 3), slice(4, 6), slice(7, 9), slice(10, 12))]]
    for i in range(256):
        for j, (r, c) in enumerate(regions):
            loc[i, j] = np.max(f[i, r, c])
    v = loc.reshape(-1)
    return v / np.linalg.norm(v)


@pytest.fixture
def model(caffe, tmp_path):
    weights = _weights()
    path = tmp_path / "AmosNet.caffemodel"
    write_caffemodel(caffe, path, weights, extra=[("fc8_new", [np.zeros((5, 4), np.float32)])])
    mean = np.array([104.0, 117.0, 123.0], np.float32)  # BGR, per channel
    np.save(tmp_path / "amosnet_mean.npy", mean)
    return path, weights, mean


def test_outputs_match_vpr_bench_in_both_layouts(caffe, model, tmp_path):
    path, weights, mean = model
    photos = [place_image(0, variant=1), place_image(5, variant=2).resize((120, 80))]
    out = get_descriptor("amosnet", {"weights": str(path), "num_threads": 1}).extract(photos)
    assert out.shape == (2, 7680)
    for i, img in enumerate(photos):
        assert np.abs(out[i] - _vpr_bench(weights, mean, img)).max() < 1e-4
    v1 = tmp_path / "v1" / "AmosNet.caffemodel"
    v1.parent.mkdir()
    write_caffemodel(caffe, v1, weights, v1=True)
    image = np.random.default_rng(1).uniform(0, 255, (3, 227, 227)).astype(np.float32)  # a mean image (BGR)
    np.save(v1.parent / "mean.npy", image)
    out = get_descriptor("amosnet", {"weights": str(v1), "mean": str(v1.parent / "mean.npy")}).extract(photos[:1])
    want = _vpr_bench(weights, image, photos[0])
    assert np.abs(out[0] - want).max() < 1e-4


def test_every_layer_is_checked(caffe, model, tmp_path):
    path, weights, _ = model
    cases = {"missing": ({k: v for k, v in weights.items() if k != "conv3"}, (), "conv3.weight"),
             "mis-shaped": ({**weights, "conv4": (weights["conv4"][0][:, :96], weights["conv4"][1])}, (), "conv4.weight"),
             "unexpected": (weights, [("fc6", [np.zeros(3, np.float32)])], "fc6")}
    for case, (w, extra, named) in cases.items():
        bad = tmp_path / case / "AmosNet.caffemodel"
        bad.parent.mkdir()
        write_caffemodel(caffe, bad, w, extra=extra)
        np.save(bad.parent / "amosnet_mean.npy", np.zeros(3, np.float32))
        with pytest.raises((WeightsLoadError, ModelLoadError), match=named):
            get_descriptor("amosnet", {"weights": str(bad)})
    cut = tmp_path / "cut" / "AmosNet.caffemodel"
    cut.parent.mkdir()
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="not a readable .caffemodel"):
        get_descriptor("amosnet", {"weights": str(cut), "mean": str(path.with_name("amosnet_mean.npy"))})
    # a layer whose type claims 2**36 bytes as a varint: refused at once, no 64 GB string
    huge = tmp_path / "huge" / "AmosNet.caffemodel"
    huge.parent.mkdir()
    inner = bytes([0x10]) + _varint(2 ** 36)
    huge.write_bytes(bytes([0xA2, 0x06]) + _varint(len(inner)) + inner)  # field 100, wire type 2
    with pytest.raises(ModelLoadError, match="no layer with weights"):
        get_descriptor("amosnet", {"weights": str(huge), "mean": str(path.with_name("amosnet_mean.npy"))})
    np.save(tmp_path / "bad_mean.npy", np.zeros((3, 256, 256), np.float32))
    with pytest.raises(ModelLoadError, match=r"shape \(3, 256, 256\)"):
        get_descriptor("amosnet", {"weights": str(path), "mean": str(tmp_path / "bad_mean.npy")})
    path.with_name("amosnet_mean.npy").unlink()
    with pytest.raises(ModelLoadError, match="no mean file"):
        get_descriptor("amosnet", {"weights": str(path)})


def test_without_weights_it_says_where_to_put_them(tmp_path, monkeypatch):
    assert_no_weights_says_where("amosnet", ENV_VAR, "VPR-Bench", tmp_path, monkeypatch)


def test_every_command_runs_with_it(model, tmp_path, capsys):
    path, _, _ = model
    root = tmp_path / "refs"
    make_reference_set(root)
    info = run_descriptor_commands(root, tmp_path, "amosnet", {"weights": str(path)}, capsys)
    assert info["descriptor"]["name"] == "amosnet" and info["descriptor"]["dim"] == 7680
