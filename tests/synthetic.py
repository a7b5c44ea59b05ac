"""Synthetic geotagged photo sets the tests make themselves (no shared data needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

# (name, lat, lon, country) — real places so country submaps and neighbours are meaningful.
PLACES = [
    ("paris", 48.8566, 2.3522, "FR"),
    ("lyon", 45.7640, 4.8357, "FR"),
    ("madrid", 40.4168, -3.7038, "ES"),
    ("barcelona", 41.3874, 2.1686, "ES"),
    ("berlin", 52.5200, 13.4050, "DE"),
    ("rome", 41.9028, 12.4964, "IT"),
    ("lisbon", 38.7223, -9.1393, "PT"),
    ("tokyo", 35.6762, 139.6503, "JP"),
]


def place_image(seed: int, variant: int = 0, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A textured image unique to ``seed``; ``variant`` adds small noise and a shift (another shot)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(size[1] // 8 + 2, size[0] // 8 + 2, 3)).astype(np.float32)
    big = np.kron(base, np.ones((8, 8, 1)))
    dx = variant % 3
    img = big[dx : dx + size[1], dx : dx + size[0]]
    if variant:
        img = img + np.random.default_rng(1000 + variant).normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_reference_set(root: Path, per_place: int = 3, authors_per_place: int = 2) -> Path:
    """Write ``root/images/*.jpg`` and ``root/labels.csv``; returns the labels path."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for p, (name, lat, lon, _) in enumerate(PLACES):
        for j in range(per_place):
            img_id = f"{name}_{j}.jpg"
            place_image(p, variant=j).save(images / img_id, quality=95)
            jitter = 0.01 * j
            rows.append((img_id, f"author_{name}_{j % authors_per_place}", lat + jitter, lon - jitter))
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "AUTHOR", "LAT", "LON"])
        w.writerows(rows)
    return labels


def similarity_calibration(index, monkeypatch):
    """Give ``index`` a calibration in which only the best match's similarity counts (P near 1 from
    0.8 up, near 0 below 0.3; a best-match spread of 0.1, effnet-gem's order), so a test can say
    what a weak or a strong match is on this tiny map."""
    from geoguide.indices.calibration import THRESHOLDS_KM, MapCalibration, ScopeModels, ThresholdModel

    models = [ThresholdModel(km=km, coef=[-1.0, 1.5, 0.0, 0.0], base_rate=0.3, ece=0.0, reliability=[])
              for km in THRESHOLDS_KM]
    scopes = [ScopeModels(scope=s, n_sample=100, mean=[0.5, 0.1, 0.3], std=[0.1, 0.1, 0.2], lo=[0, 0, 0],
                          hi=[1, 1, 1], models=models) for s in ("map", "area")]
    cal = MapCalibration(descriptor="thumbnail", n_references=len(index), k=10, scopes=scopes, seconds=0,
                         created_utc="test")
    monkeypatch.setitem(index.__dict__, "_map_calibration", cal)
    return cal
