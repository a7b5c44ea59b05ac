"""Paths and ids that must survive: symbolic links out of the image folder refused at build and
at serve, paths stored absolute (an index works from any directory), and hostile reference ids
(a comma, a newline, edge spaces) through ``index filter --out`` -> ``index remove --ids``."""

from __future__ import annotations

import csv
import os
import shutil

from fastapi.testclient import TestClient

from geoguide.agent.backends import make_backend
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext
from geoguide.app.cli import main
from geoguide.app.server import create_app
from geoguide.indices.filtering import read_id_list
from geoguide.indices.store import ReferenceIndex
from tests.synthetic import make_reference_set

HOSTILE = ["a b.jpg", "c,d.jpg", "e\nf.jpg", 'h"i.jpg']  # (edge spaces: labels cells are trimmed on the way in)


def _build(images, labels, out) -> int:
    return main(["index", "build", "--images", str(images), "--labels", str(labels), "--out", str(out),
                 "--descriptor", "thumbnail", "--submaps", "country"])


def test_a_link_out_of_the_image_folder_is_refused_at_build(tmp_path, capsys):
    root = tmp_path / "set"
    labels = make_reference_set(root)
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    shutil.copy(root / "images" / "paris_0.jpg", secret)
    (root / "images" / "paris_0.jpg").unlink()
    (root / "images" / "paris_0.jpg").symlink_to(secret)
    assert _build(root / "images", labels, tmp_path / "idx") == 0
    index = ReferenceIndex(tmp_path / "idx")
    assert index.row_of("paris_0.jpg") is None and len(index) == 23
    assert any("outside the image folder" in p for p in index.manifest.source.problems)


def test_paths_are_stored_absolute_and_the_server_reads_only_inside_the_image_folders(tmp_path, monkeypatch):
    root = tmp_path / "set"
    labels = make_reference_set(root)
    monkeypatch.chdir(root)
    assert _build("images", labels, tmp_path / "idx") == 0  # --images as typed: relative
    monkeypatch.chdir(tmp_path / "set" / "images")  # another directory
    index = ReferenceIndex(tmp_path / "idx")
    row = index.row(index.row_of("rome_0.jpg"))
    assert os.path.isabs(row["path"]) and index.manifest.image_roots == [str((root / "images").resolve())]
    assert main(["index", "filter", str(tmp_path / "idx"), "--dedupe", "--dry-run"]) == 0  # reads every photo
    ctx = AgentContext(index=index, backend=make_backend("none"), config=AgentConfig())
    client = TestClient(create_app(ctx), base_url="http://localhost")
    assert client.get("/api/references/rome_0.jpg/thumbnail").status_code == 200
    # after the build, the photo is swapped for a link to a file outside the folder: not served
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(row["path"], outside)
    os.unlink(row["path"])
    os.symlink(outside, row["path"])
    r = client.get("/api/references/rome_0.jpg/thumbnail")
    assert r.status_code == 404 and "outside the index's image folders" in r.json()["detail"]


def test_hostile_ids_round_trip_from_filter_to_remove(tmp_path, capsys):
    root = tmp_path / "set"
    labels = make_reference_set(root)
    for name in HOSTILE:  # the same photo under hostile names, 0.1 km from a query point
        shutil.copy(root / "images" / "tokyo_0.jpg", root / "images" / name)
    with open(labels, "a", newline="") as f:
        csv.writer(f).writerows([name, "someone", -33.8688, 151.2093] for name in HOSTILE)  # Sydney
    queries = tmp_path / "queries.csv"
    queries.write_text("IMG_ID,LAT,LON\nq_sydney,-33.8690,151.2090\n")
    out = tmp_path / "idx"
    assert _build(root / "images", labels, out) == 0
    assert all(ReferenceIndex(out).row_of(name) is not None for name in HOSTILE)
    ids = tmp_path / "ids.csv"
    assert main(["index", "filter", str(out), "--exclude-near", str(queries), "--km", "1", "--dry-run",
                 "--out", str(ids)]) == 0
    assert sorted(read_id_list(ids.read_text())) == sorted(HOSTILE)
    capsys.readouterr()
    assert main(["index", "remove", str(out), "--ids", str(ids)]) == 0
    assert f"removed {len(HOSTILE)} references (0 ids not in the index)" in capsys.readouterr().out
    index = ReferenceIndex(out)
    assert all(index.row_of(name) is None for name in HOSTILE) and index.row_of("tokyo_0.jpg") is not None


def test_id_lists_keep_every_id_exactly(tmp_path):
    from geoguide.indices.filtering import Removal, write_removed_ids

    hostile = [*HOSTILE, " g .jpg", "id", "", "j\r\nk.jpg"]
    write_removed_ids(tmp_path / "ids.csv", [Removal(id=i, path="", lat=0, lon=0, rule="near-query", detail="") for i in hostile if i])
    with open(tmp_path / "ids.csv", newline="") as f:
        assert read_id_list(f.read()) == [i for i in hostile if i]


def test_id_lists_read_plain_lines_and_other_csvs_too():
    assert read_id_list("a.jpg\nb.jpg\n\n") == ["a.jpg", "b.jpg"]
    assert read_id_list("IMG_ID,AUTHOR\nx.jpg,someone\n") == ["x.jpg"]
