"""The map's own calibration: fitted from the references alone, stored in the index like every
other file (listed, checksummed, kill-safe), refitted by ``index calibrate``, shown by ``index
info``, and invariant to an affine change of the similarity scale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from geoguide.app.cli import main
from geoguide.indices.calibration import (
    THRESHOLDS_KM,
    MapCalibration,
    evidence_of,
    fit_models,
    load_calibration,
    map_calibration,
)
from geoguide.indices.store import ReferenceIndex
from tests.synthetic import make_reference_set


def _synthetic_evidence(n: int = 3000, seed: int = 0):
    """Queries whose best-match error shrinks as their similarity, margin and agreement grow."""
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0, 1, n)
    ev = np.column_stack([0.4 + 0.4 * quality + rng.normal(0, 0.05, n), 0.1 * quality * rng.uniform(0, 1, n),
                          np.clip(quality + rng.normal(0, 0.2, n), 0, 1)])
    err = np.exp(rng.normal(8 - 9 * quality, 1.5))  # km
    who = np.array([f"p{i % 400}" for i in range(n)], dtype=object)
    return ev, err, who


def _calibration(ev, err, who) -> MapCalibration:
    return MapCalibration(descriptor="x", n_references=len(ev), k=10, scopes=[fit_models(ev, err, who)], seconds=0.0,
                          created_utc="now")


def test_probabilities_are_calibrated_monotone_and_scale_free():
    ev, err, who = _synthetic_evidence()
    cal = _calibration(ev, err, who)
    p = cal.predict(ev)
    assert np.all(np.diff(p, axis=1) >= 0)  # P(<= 1 km) <= P(<= 25 km) <= ...
    for j, km in enumerate(THRESHOLDS_KM):  # on average, what it says happens
        assert abs(p[:, j].mean() - np.mean(err <= km)) < 0.02
        assert cal.of("map").models[j].ece < 0.05
    # the same evidence on another similarity scale (x 0.3, + 0.5: a component every vector shares)
    scaled = ev.copy()
    scaled[:, 0] = 0.3 * ev[:, 0] + 0.5
    scaled[:, 1] = 0.3 * ev[:, 1]
    assert np.allclose(_calibration(scaled, err, who).predict(scaled), p, atol=1e-6)
    # never extrapolated: evidence beyond what the sample held reads as the sample's edge
    edge = ev.max(axis=0)
    assert np.allclose(cal.predict(np.array([edge * 5])), cal.predict(np.array([edge])))
    assert cal.of("area") is cal.of("map")  # no area models: the whole map's read every search


def test_evidence_of_a_ranked_list():
    ev = evidence_of([0.9, 0.7, 0.6], [48.85, 48.86, 35.68], [2.35, 2.36, 139.69], k=3)
    assert ev[0] == 0.9 and ev[1] == pytest.approx(0.2) and ev[2] == pytest.approx(2 / 3)


def test_build_stores_it_calibrate_refits_it_and_info_shows_it(tmp_path, capsys):
    root = tmp_path / "set"
    labels = make_reference_set(root)
    out = tmp_path / "idx"
    assert main(["index", "build", "--images", str(root / "images"), "--labels", str(labels), "--out", str(out),
                 "--descriptor", "thumbnail", "--submaps", "country"]) == 0
    assert "calibrated on 24 references" in capsys.readouterr().out
    index = ReferenceIndex(out, verify=True)  # listed and checksummed like every other file
    first = index.manifest.calibration
    assert first in index.manifest.files and load_calibration(index).n_sample == 24
    assert main(["index", "info", str(out)]) == 0
    said = capsys.readouterr().out
    assert "held-out expected calibration error" in said and "P(<= 25 km) predicted->observed" in said
    assert main(["index", "info", str(out), "--json"]) == 0
    scopes = json.loads(capsys.readouterr().out)["calibration"]["scopes"]
    assert [(s["scope"], s["n_sample"]) for s in scopes] == [("map", 24), ("area", 24)]  # country submaps: both
    assert main(["index", "calibrate", str(out), "--sample", "20"]) == 0
    second = ReferenceIndex(out, verify=True).manifest.calibration
    assert second != first and not (out / first).exists() and (out / second).exists()
    assert main(["index", "verify", str(out)]) == 0


def test_an_index_without_one_is_calibrated_on_first_use(tmp_path, caplog):
    fixture = tmp_path / "old"
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "release-0.1.0" / "index", fixture)  # written by 0.1.0: no calibration
    index = ReferenceIndex(fixture)
    assert load_calibration(index) is None
    cal = map_calibration(index)
    assert "calibrating on first use" in caplog.text and cal.n_sample == len(index)
    assert map_calibration(index) is cal  # once per opened index


def test_an_update_keeps_the_calibration_unless_the_map_changed_by_a_tenth(tmp_path, capsys):
    """An update is O(change); a refit is two searches per sampled reference (minutes at 1M):
    a map that grew by a few percent keeps its calibration, one that grew by more is refitted."""
    from tests.synthetic import place_image

    root = tmp_path / "set"
    labels = make_reference_set(root)
    out = tmp_path / "idx"
    assert main(["index", "build", "--images", str(root / "images"), "--labels", str(labels), "--out", str(out),
                 "--descriptor", "thumbnail", "--submaps", "country"]) == 0
    first = ReferenceIndex(out).manifest.calibration

    def add(names: list[str]) -> str:
        new = tmp_path / f"new-{len(names)}"
        (new / "images").mkdir(parents=True)
        rows = ["IMG_ID,AUTHOR,LAT,LON"]
        for i, name in enumerate(names):
            place_image(40 + i).save(new / "images" / name)
            rows.append(f"{name},someone,{45 + i * 0.1},{7 + i * 0.1}")
        (new / "labels.csv").write_text("\n".join(rows) + "\n")
        capsys.readouterr()
        assert main(["index", "add", str(out), "--images", str(new / "images"), "--labels", str(new / "labels.csv")]) == 0
        return capsys.readouterr().out

    said = add(["a1.jpg", "a2.jpg"])  # 24 -> 26: within a tenth
    assert "calibration kept: fitted on 24 references, the map has 26" in said
    assert ReferenceIndex(out).manifest.calibration == first
    said = add([f"b{i}.jpg" for i in range(6)])  # 26 -> 32: more than a tenth of 24
    assert "calibrated on" in said and ReferenceIndex(out).manifest.calibration != first
