"""The CLI end to end on real photos of the shared split: index build (effnet-gem), info, search,
and locate with the recorded VLM prior under the leakage rule. Skips when the data is absent."""

from __future__ import annotations

import csv
import json

import pytest

from geoguide.app.cli import main
from geoguide.indices.photosets import shared_data_root

ROOT = shared_data_root()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ROOT / "labels.csv").exists(),
                       reason=f"shared split not found at {ROOT} (set GEOGUIDE_DATA to the im2gps3k folder)"),
]
N_REFS = 120


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shared") / "idx"
    rc = main(["index", "build", "--images", str(ROOT / "images"), "--labels", str(ROOT / "labels.csv"),
               "--out", str(out), "--descriptor", "effnet-gem", "--submaps", "country,kmeans:10",
               "--limit", str(N_REFS)])
    assert rc == 0
    return out


def _first_rows(n: int) -> list[dict]:
    with open(ROOT / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))[:n]


def test_info_and_search_on_real_photos(index_dir, capsys):
    assert main(["index", "info", str(index_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_references"] == N_REFS and info["descriptor"]["name"] == "effnet-gem"
    row = _first_rows(1)[0]
    assert main(["search", str(ROOT / "images" / row["IMG_ID"]), "--index", str(index_dir), "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["candidates"][0]["ref_id"] == row["IMG_ID"]  # a photo finds itself first
    assert main(["search", str(ROOT / "images" / row["IMG_ID"]), "--index", str(index_dir), "-k", "3", "--json",
                 "--exclude-author", row["AUTHOR"]]) == 0
    res = json.loads(capsys.readouterr().out)
    assert all(c["author"] != row["AUTHOR"] for c in res["candidates"])


def test_locate_with_recorded_prior(index_dir, capsys):
    prior_csv = ROOT / "prior_gemini-2.0-flash.csv"
    row = _first_rows(1)[0]
    rc = main(["locate", str(ROOT / "images" / row["IMG_ID"]), "--index", str(index_dir), "--json",
               "--vlm", f"replay:{prior_csv}", "--exclude-author", row["AUTHOR"]])
    assert rc == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["prior"] is not None and pred["lat"] is not None
    assert all(c["author"] != row["AUTHOR"] for c in pred["top_candidates"])
    assert pred["vlm"].startswith("replay:") and "perceive/v1" in pred["prompts"]
