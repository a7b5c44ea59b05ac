"""The ``geoguide`` CLI: index build / info / search, and one-line errors with non-zero exits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from geoguide.app.cli import main
from tests.synthetic import make_reference_set


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    labels = make_reference_set(root)
    with open(labels, "a") as f:
        f.write("broken_row.jpg,someone,not-a-number,2.0\n")
        f.write("far.jpg,someone,95.0,2.0\n")
    out = root / "idx"
    rc = main(["index", "build", "--images", str(root / "images"), "--labels", str(labels), "--out", str(out),
               "--descriptor", "thumbnail", "--submaps", "country,kmeans:3", "--descriptor-opt", "size=8"])
    assert rc == 0
    return root, out


def test_build_reports_bad_rows(built, capsys):
    root, out = built
    assert main(["index", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_references"] == 24
    assert info["source"]["n_bad_rows"] == 2
    assert info["descriptor"]["conf"] == {"size": 8}
    assert set(info["schemes"]) == {"country", "kmeans-3"}


def test_info_human(built, capsys):
    _, out = built
    assert main(["index", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "24 references" in text and "country:FR" in text


def test_search_json_and_text(built, capsys):
    root, out = built
    img = root / "images" / "rome_1.jpg"
    assert main(["search", str(img), "--index", str(out), "-k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["candidates"][0]["ref_id"] == "rome_1.jpg"
    assert main(["search", str(img), "--index", str(out), "-k", "2", "--exclude-author", "author_rome_1",
                 "--submap", "country:IT"]) == 0
    text = capsys.readouterr().out
    assert "IT — Italy" in text and "rome_1.jpg" not in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "{root}/labels.csv", "--index", "{out}"], "not a recognised image"),
        (["search", "{root}/images/rome_1.jpg", "--index", "{root}"], "not a geoguide index"),
        (["search", "{root}/images/rome_1.jpg", "--index", "{out}", "--submap", "country:ZZ"], "do not exist"),
        (["index", "build", "--out", "{root}/x", "--images", "{root}/images", "--descriptor", "sift9000",
          "--labels", "{root}/labels.csv"], "unknown descriptor"),
        (["index", "build", "--out", "{root}/x"], "give --images"),
    ],
)
def test_errors_are_one_line(built, capsys, argv, message):
    root, out = built
    rc = main([a.format(root=root, out=out) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_runs(built):
    root, out = built
    r = subprocess.run([sys.executable, "-m", "geoguide", "index", "info", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "references" in r.stdout
    r = subprocess.run([sys.executable, "-m", "geoguide", "search", "/nonexistent.jpg", "--index", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("geoguide: error:") and "Traceback" not in r.stderr
