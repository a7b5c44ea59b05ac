"""``geoguide index import``: an index from vectors computed elsewhere (.npy in the labels' row
order, or Parquet keyed by IMG_ID), with the same submaps and calibration as a built one; and
``--query-vectors`` for photos described elsewhere."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoguide.app.cli import main
from geoguide.eval.synthetic import SyntheticRetriever, synthetic_vectors
from geoguide.indices.store import ReferenceIndex
from tests.synthetic import place_image

STRONG = SyntheticRetriever(name="strong", quality_a=2, quality_b=1, dim=64)


def _photo_set(tmp_path, n: int = 240, bad_line: int | None = None):
    """Labels of ``n`` photos around eight European cities (three photographers each), their
    synthetic vectors in the labels' order, and (when ``bad_line``) one unreadable label row there."""
    rng = np.random.default_rng(0)
    centres = np.array([[48.85, 2.35], [41.39, 2.17], [52.52, 13.40], [41.90, 12.50], [38.72, -9.14],
                        [45.76, 4.84], [40.42, -3.70], [50.85, 4.35]])
    which = rng.integers(0, len(centres), n)
    lat = centres[which, 0] + rng.normal(0, 0.02, n)
    lon = centres[which, 1] + rng.normal(0, 0.02, n)
    vecs = synthetic_vectors(lat, lon, STRONG)
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "AUTHOR", "LAT", "LON"])
        for i in range(n):
            bad = i == bad_line
            w.writerow([f"p{i}.jpg", f"a{which[i]}_{i % 3}", "north" if bad else f"{lat[i]:.6f}", f"{lon[i]:.6f}"])
    return labels, vecs


def _import(vectors, labels, out, *extra) -> int:
    return main(["index", "import", str(vectors), "--labels", str(labels), "--out", str(out),
                 "--descriptor-name", "synthetic", "--submaps", "country,kmeans:4", *extra])


def test_an_npy_in_label_order_becomes_a_calibrated_index(tmp_path, capsys):
    labels, vecs = _photo_set(tmp_path, bad_line=7)
    np.save(tmp_path / "v.npy", vecs.astype(np.float16))
    assert _import(tmp_path / "v.npy", labels, tmp_path / "idx") == 0
    out = capsys.readouterr()
    assert "imported 239 references (64 dimensions" in out.out and "calibrated on" in out.out
    index = ReferenceIndex(tmp_path / "idx")
    m = index.manifest
    assert (m.descriptor.name, m.descriptor.conf["name"], len(index)) == ("imported", "synthetic", 239)
    assert m.calibration is not None and m.calibration in m.files
    assert index.row_of("p7.jpg") is None  # the unreadable label row, counted and skipped
    # the row after the bad one keeps its own vector (rows follow the file, bad rows counted)
    for pid in (6, 8, 239):
        row = index.row_of(f"p{pid}.jpg")
        assert np.allclose(np.asarray(index.descriptors[row], np.float32), vecs[pid], atol=2e-3)
    found, sims = index.search(vecs[8], index.everything(), 3)
    assert index.refs["id"][found[0]].decode() == "p8.jpg" and sims[0] > 0.99
    assert main(["index", "info", str(tmp_path / "idx")]) == 0
    assert "calibration:" in capsys.readouterr().out


def test_parquet_matches_by_id_in_any_order_and_names_what_it_lacks(tmp_path, capsys):
    labels, vecs = _photo_set(tmp_path)
    order = np.random.default_rng(1).permutation(len(vecs))[:-1]  # shuffled, one photo missing
    table = pa.table({"IMG_ID": [f"p{i}.jpg" for i in order], "note": ["x"] * len(order),
                      "emb": pa.array([list(map(float, vecs[i] * 3.0)) for i in order])})  # not unit length
    pq.write_table(table, tmp_path / "v.parquet")
    assert _import(tmp_path / "v.parquet", labels, tmp_path / "idx") == 0
    out = capsys.readouterr()
    assert "imported 239 references" in out.out and "no vector in v.parquet" in out.err
    index = ReferenceIndex(tmp_path / "idx")
    row = index.row_of(f"p{order[5]}.jpg")
    assert np.allclose(np.asarray(index.descriptors[row], np.float32), vecs[order[5]], atol=2e-3)  # normalised


@pytest.mark.parametrize("make, message", [
    (lambda v: v[:100], "100 vectors for a labels file of at least 240 rows"),
    (lambda v: (v * 100).astype(np.int32), "must be float16, float32 or float64"),
    (lambda v: v[:, 0], "expected an (N, D) array"),
])
def test_vectors_that_cannot_be_used_are_one_clear_error(tmp_path, capsys, make, message):
    labels, vecs = _photo_set(tmp_path)
    np.save(tmp_path / "v.npy", make(vecs))
    assert _import(tmp_path / "v.npy", labels, tmp_path / "idx") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_a_broken_vector_is_skipped_and_named_and_another_import_needs_overwrite(tmp_path, capsys):
    labels, vecs = _photo_set(tmp_path)
    vecs[3] = np.nan
    vecs[4] = 0
    np.save(tmp_path / "v.npy", vecs)
    assert _import(tmp_path / "v.npy", labels, tmp_path / "idx") == 0
    out = capsys.readouterr()
    assert "imported 238 references" in out.out and "p3.jpg: its vector is all zeros or not finite" in out.err
    assert _import(tmp_path / "v.npy", labels, tmp_path / "idx") == 0  # the same import again: in place
    np.save(tmp_path / "w.npy", vecs[:, ::-1].copy())
    assert _import(tmp_path / "w.npy", labels, tmp_path / "idx") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _import(tmp_path / "w.npy", labels, tmp_path / "idx", "--overwrite") == 0
    assert not (tmp_path / "idx" / "work").exists()


def test_queries_bring_their_own_vectors(tmp_path, capsys):
    labels, vecs = _photo_set(tmp_path)
    np.save(tmp_path / "v.npy", vecs)
    assert _import(tmp_path / "v.npy", labels, tmp_path / "idx") == 0
    photo = tmp_path / "query.jpg"
    place_image(3).save(photo)
    capsys.readouterr()
    # without vectors: one clear line naming the option, not a crash
    assert main(["locate", str(photo), "--index", str(tmp_path / "idx"), "--quiet"]) == 2
    assert "--query-vectors" in capsys.readouterr().err
    pq.write_table(pa.table({"IMG_ID": ["query.jpg"], "v": pa.array([list(map(float, vecs[17]))])}),
                   tmp_path / "q.parquet")
    assert main(["locate", str(photo), "--index", str(tmp_path / "idx"), "--query-vectors",
                 str(tmp_path / "q.parquet"), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["lat"] is not None
    best = max(pred["top_candidates"], key=lambda c: c["similarity"])
    assert best["ref_id"] == "p17.jpg" and best["similarity"] > 0.99
    pq.write_table(pa.table({"IMG_ID": ["query.jpg"], "v": pa.array([[1.0, 2.0, 3.0]])}), tmp_path / "bad.parquet")
    assert main(["locate", str(photo), "--index", str(tmp_path / "idx"), "--query-vectors",
                 str(tmp_path / "bad.parquet")]) == 2
    assert "3 dimensions, but the index's vectors have 64" in capsys.readouterr().err
