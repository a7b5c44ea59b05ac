"""DenseVLAD: dense RootSIFT correctness, the Descriptor contract, and place-level discrimination."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from geoguide.indices.descriptors import densevlad
from geoguide.indices.descriptors.densevlad import DenseVLAD, dense_rootsift, vlad
from geoguide.indices.descriptors.registry import DESCRIPTORS

# Small images and vocabulary keep the whole file to a few seconds.
CONF = {"max_side": 160, "n_clusters": 8, "max_descriptors_for_kmeans": 5000, "pca_dim": 8}


def scene(seed: int, size: tuple[int, int] = (200, 150)) -> Image.Image:
    """A synthetic "place": random shapes and lines, so SIFT has corners and edges to describe."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(40):
        x0, x1 = sorted(rng.integers(0, w, 2).tolist())
        y0, y1 = sorted(rng.integers(0, h, 2).tolist())
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle((x0, y0, x1 + 2, y1 + 2), fill=colour)
        elif kind == 1:
            draw.ellipse((x0, y0, x1 + 4, y1 + 4), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 4)))
    return img


def near_duplicate(img: Image.Image) -> Image.Image:
    """The same view re-shot: 5% cropped off each side, rescaled, 20% brighter."""
    w, h = img.size
    dx, dy = w // 20, h // 20
    crop = img.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BILINEAR)
    return ImageEnhance.Brightness(crop).enhance(1.2)


@pytest.fixture(scope="module")
def refs() -> list[Image.Image]:
    return [scene(s) for s in range(12)]


@pytest.fixture(scope="module")
def fitted(refs: list[Image.Image]) -> DenseVLAD:
    d = DenseVLAD(CONF)
    d.fit(refs)
    return d


def test_registered():
    assert DESCRIPTORS["densevlad"] is DenseVLAD
    assert DenseVLAD.trainable


def test_dense_rootsift_matches_opencv_sift():
    grey = np.asarray(scene(1, (240, 180)).convert("L"))
    step, bins = 8, [6, 8, 10]
    desc = dense_rootsift(grey, step, bins)
    margin = 2 * max(bins)
    ys = np.arange(margin, grey.shape[0] - margin + 1, step)
    xs = np.arange(margin, grey.shape[1] - margin + 1, step)
    n = len(ys) * len(xs)
    assert desc.shape == (len(bins) * n, 128) and desc.dtype == np.float32
    sift = cv2.SIFT_create()
    for i, b in enumerate(bins):
        # Same centres, upright, OpenCV keypoint size 2b/3 = spatial bin of b px.
        kps = [cv2.KeyPoint(float(x), float(y), 2 * b / 3, 0) for y in ys for x in xs]
        _, ref = sift.compute(grey, kps)
        ref = np.sqrt(ref / np.maximum(ref.sum(axis=1, keepdims=True), 1e-12))
        mine = desc[i * n : (i + 1) * n]
        textured = ref.sum(axis=1) > 0
        cos = (mine[textured] * ref[textured]).sum(axis=1)
        assert np.median(cos) > 0.9, (b, np.median(cos))


def test_dense_rootsift_rows_are_rootsift_and_flat_patches_dropped():
    grey = np.asarray(scene(2).convert("L"))
    desc = dense_rootsift(grey, 4, [4, 8], min_contrast=0.005)
    assert len(desc) > 100 and (desc >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)  # sqrt of an L1-unit vector
    flat = np.full((120, 160), 128, np.uint8)
    assert dense_rootsift(flat, 4, [4, 8], min_contrast=0.005).shape == (0, 128)
    assert dense_rootsift(np.zeros((10, 10), np.uint8), 4, [4, 8]).shape == (0, 128)  # too small for a grid


def test_vlad_shape_norm_and_empty():
    rng = np.random.default_rng(0)
    centroids = rng.random((4, 128), dtype=np.float32)
    v = vlad(rng.random((500, 128), dtype=np.float32), centroids)
    assert v.shape == (512,) and v.dtype == np.float32
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    assert not vlad(np.zeros((0, 128), np.float32), centroids).any()


def test_extract_shape_dtype_norm_and_determinism(fitted: DenseVLAD, refs: list[Image.Image]):
    x = fitted.extract(refs[:5])
    assert x.shape == (5, fitted.dim) and fitted.dim == 8 and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x, fitted.extract(refs[:5]))
    np.testing.assert_allclose(x[2:3], fitted.extract([refs[2]]), atol=1e-6)  # batch-independent
    assert fitted.extract([]).shape == (0, 8)


def test_extract_in_chunks_matches_one_batch(fitted: DenseVLAD, refs: list[Image.Image], monkeypatch):
    whole = fitted.extract(refs[:5])
    monkeypatch.setattr(densevlad, "_EXTRACT_CHUNK", 2)
    np.testing.assert_allclose(fitted.extract(refs[:5]), whole, atol=1e-6)


def test_fit_is_deterministic(fitted: DenseVLAD, refs: list[Image.Image]):
    again = DenseVLAD(CONF)
    again.fit(refs)
    np.testing.assert_allclose(again.centroids, fitted.centroids, atol=1e-5)
    np.testing.assert_allclose(np.abs(again.extract(refs[:3])), np.abs(fitted.extract(refs[:3])), atol=1e-4)


def test_state_round_trip(fitted: DenseVLAD, refs: list[Image.Image]):
    state = fitted.state()
    assert set(state) == {"centroids", "pca_mean", "pca_proj"}
    restored = DenseVLAD(CONF)
    assert not restored.is_fitted
    restored.load_state(state)
    assert restored.is_fitted and restored.dim == fitted.dim
    np.testing.assert_array_equal(restored.extract(refs[:4]), fitted.extract(refs[:4]))
    assert restored.fingerprint() == fitted.fingerprint() != DenseVLAD(CONF).fingerprint()


def test_mismatched_state_is_rejected(fitted: DenseVLAD):
    with pytest.raises(ValueError, match="centroids"):
        DenseVLAD({**CONF, "n_clusters": 16}).load_state(fitted.state())
    with pytest.raises(ValueError, match="pca_dim=None"):
        DenseVLAD({**CONF, "pca_dim": None}).load_state(fitted.state())


def test_extract_before_fit_raises(refs: list[Image.Image]):
    with pytest.raises(RuntimeError, match="fit"):
        DenseVLAD(CONF).extract(refs[:1])


def test_conf_errors():
    with pytest.raises(ValueError, match="unknown option"):
        DenseVLAD({"n_cluster": 8})
    with pytest.raises(ValueError, match="n_clusters"):
        DenseVLAD({"n_clusters": 0})
    with pytest.raises(ValueError, match="scales"):
        DenseVLAD({"scales": []})


def test_fit_needs_images_with_texture():
    with pytest.raises(ValueError, match="at least 2"):
        DenseVLAD(CONF).fit([scene(0)])
    with pytest.raises(ValueError, match="descriptors"):
        DenseVLAD(CONF).fit([Image.new("RGB", (100, 80), (90, 90, 90))] * 3)


def test_raw_vlad_without_pca(refs: list[Image.Image]):
    d = DenseVLAD({**CONF, "pca_dim": None})
    d.fit(refs[:4])
    assert d.dim == 8 * 128 and set(d.state()) == {"centroids"}
    x = d.extract(refs[:2])
    assert x.shape == (2, 1024)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("pca_dim", [8, None])
def test_near_duplicate_beats_other_places(fitted: DenseVLAD, pca_dim: int | None):
    d = fitted if pca_dim else DenseVLAD({**CONF, "pca_dim": None})
    if not d.is_fitted:
        d.load_state({"centroids": fitted.centroids})
    queries = [scene(s) for s in range(100, 106)]  # places the vocabulary and PCA never saw
    db = d.extract(queries)
    dup = d.extract([near_duplicate(q) for q in queries])
    sim = dup @ db.T  # row i: re-shot place i against every place
    assert (sim.argmax(axis=1) == np.arange(len(queries))).all(), np.round(sim, 2)
    assert (np.diag(sim) > 0.5).all()
