"""``geoguide calibrate`` fits a profile on labelled photos; ``--calibration`` gives every answer
recalibrated probabilities and a radius; eval reports how both fare on its own labels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from geoguide.app.cli import main
from tests.synthetic import place_image

CITIES = [(48.8566, 2.3522), (45.7640, 4.8357), (40.4168, -3.7038), (41.3874, 2.1686), (52.52, 13.405),
          (41.9028, 12.4964), (38.7223, -9.1393), (50.85, 4.35)]


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory):
    """160 photos around eight cities by 40 photographers, a thumbnail index of them, and a replayed
    VLM that is right to ~2 km for half the photos and ~300 km off for the rest."""
    root = tmp_path_factory.mktemp("labelled")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    labels, prior = [], []
    for i in range(160):
        c = i % len(CITIES)
        lat, lon = CITIES[c][0] + rng.normal(0, 0.01), CITIES[c][1] + rng.normal(0, 0.01)
        place_image(c, variant=1 + i % 5).save(images / f"p{i}.jpg", quality=90)
        labels.append([f"p{i}.jpg", f"u{i % 40}", f"{lat:.6f}", f"{lon:.6f}"])
        off = 0.02 if i % 2 else 3.0
        prior.append([f"p{i}.jpg", f"{lat + rng.normal(0, off):.5f}", f"{lon + rng.normal(0, off):.5f}", "x", "True", "t"])
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["IMG_ID", "AUTHOR", "LAT", "LON"], *labels])
    with open(root / "prior.csv", "w", newline="") as f:
        csv.writer(f).writerows([["IMG_ID", "LAT_pred", "LON_pred", "location", "success", "model_name"], *prior])
    assert main(["index", "build", "--images", str(images), "--labels", str(root / "labels.csv"), "--out",
                 str(root / "idx"), "--descriptor", "thumbnail", "--submaps", "country"]) == 0
    return root


def _agent(root, *extra):
    return ["--images", str(root / "images"), "--labels", str(root / "labels.csv"), "--index", str(root / "idx"),
            "--vlm", f"replay:{root / 'prior.csv'}", "--exclude-same-author", "--cache", "none", *extra]


def test_calibrate_writes_a_profile_that_locate_applies(labelled_set, tmp_path, capsys):
    root = labelled_set
    profile = tmp_path / "profile.json"
    assert main(["calibrate", "--out", str(profile), *_agent(root)]) == 0
    out = capsys.readouterr().out
    assert "calibration profile ->" in out and "160 answers" in out and "radius covers" in out
    prof = json.loads(profile.read_text())
    assert prof["coverage"] == 0.9 and prof["groups"][0]["group"] == "all"
    photo = root / "images" / "p3.jpg"
    args = ["locate", str(photo), "--index", str(root / "idx"), "--vlm", f"replay:{root / 'prior.csv'}",
            "--cache", "none"]
    assert main([*args, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["radius_km"] is None and plain["probability_source"] in ("map", "default")
    assert main([*args, "--calibration", str(profile), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["probability_source"] == "profile" and pred["radius_coverage"] == 0.9 and pred["radius_km"] > 0
    assert pred["confidence"] == pred["p_within_km"]["25"]
    assert main([*args, "--calibration", str(profile)]) == 0
    assert "90% radius" in capsys.readouterr().out
    assert main(args) == 0
    assert "radius uncalibrated" in capsys.readouterr().out


def test_a_bad_profile_is_one_clear_error(labelled_set, tmp_path, capsys):
    root = labelled_set
    bad = tmp_path / "bad.json"
    bad.write_text('{"coverage": 2}')
    args = ["locate", str(root / "images" / "p3.jpg"), "--index", str(root / "idx"), "--cache", "none"]
    assert main([*args, "--calibration", str(bad)]) == 2
    assert "not a calibration profile" in capsys.readouterr().err
    assert main([*args, "--calibration", str(tmp_path / "missing.json")]) == 2
    assert "no such file (make one with geoguide calibrate)" in capsys.readouterr().err


def test_eval_reports_calibration_from_its_own_labels(labelled_set, tmp_path, capsys):
    root = labelled_set
    assert main(["eval", "--out", str(tmp_path / "run"), *_agent(root)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    cal = summary["calibration"]
    assert cal["n"] == 160 and cal["folds"] == 40 and set(cal["ece"]) == {"1", "25", "200", "750", "2500"}
    assert 0.75 <= cal["coverage"] <= 1.0 and cal["median_radius_km"] > 0
    assert "radius covers" in (tmp_path / "run" / "summary.md").read_text()


def test_ablate_compares_calibration_and_draws_its_reliability(labelled_set, tmp_path):
    root = labelled_set
    plan = tmp_path / "plan.toml"
    plan.write_text(f"""[base]
images = "{root / 'images'}"
labels = "{root / 'labels.csv'}"
index = "{root / 'idx'}"
vlm = "replay:{root / 'prior.csv'}"
exclude_same_author = true
cache = "none"

[[variant]]
name = "rules"

[[variant]]
name = "prior"
policy = "prior"
""")
    assert main(["ablate", str(plan), "--out", str(tmp_path / "ab")]) == 0
    md = (tmp_path / "ab" / "comparison.md").read_text()
    assert "## Calibration" in md and "radius90_coverage" in md
    assert (tmp_path / "ab" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_sample_draws_the_same_random_photos_for_a_seed(labelled_set, tmp_path):
    """--limit takes the first N rows (one city's photos, here); --sample N draws N at random,
    the same N for the same --seed, so a quick run is a fair miniature of the whole."""
    root = labelled_set

    def ids(out, *extra):
        assert main(["eval", "--out", str(tmp_path / out), *_agent(root), *extra]) == 0
        summary = json.loads((tmp_path / out / "summary.json").read_text())
        rows = [json.loads(line)["image_id"] for line in (tmp_path / out / "predictions.jsonl").read_text().splitlines()]
        return summary, sorted(rows, key=lambda i: int(i[1:-4]))

    s, a = ids("a", "--sample", "30", "--seed", "3")
    assert s["n"] == 30 and s["labels_read"] == 160 and len(set(a)) == 30
    assert ids("b", "--sample", "30", "--seed", "3")[1] == a  # the same draw
    assert ids("c", "--sample", "30", "--seed", "4")[1] != a
    assert a != [f"p{i}.jpg" for i in range(30)]  # not the first 30
