"""Checks every descriptor with user-supplied weights passes: the error without weights, and a run
through every command that uses a descriptor (index build, search, locate, eval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geoguide.app.cli import main
from geoguide.indices.descriptors.base import WeightsNotFoundError
from geoguide.indices.descriptors.registry import DESCRIPTORS, get_descriptor


def assert_no_weights_says_where(name: str, env_var: str, source: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """No option and no ``env_var``: one line naming both and ``source``; a wrong path: "no such file"."""
    monkeypatch.delenv(env_var, raising=False)
    with pytest.raises(WeightsNotFoundError) as err:
        get_descriptor(name)
    msg = str(err.value)
    assert "\n" not in msg
    for needle in ("never downloads", "--descriptor-opt weights=", env_var, source):
        assert needle in msg, needle
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        DESCRIPTORS[name]({"weights": str(tmp_path / "absent.pth")})
    monkeypatch.setenv(env_var, str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=f"{env_var}=.* is a folder"):
        DESCRIPTORS[name]()


def run_descriptor_commands(root: Path, out: Path, descriptor: str, opts: dict[str, object], capsys) -> dict:
    """Build an index of the synthetic set in ``root`` with ``descriptor``, then query it three ways.

    Returns the index info (``index info --json``). Each command must exit 0 and the photo's own
    copy must be its first search hit (the same pixels give the same vector).
    """
    argv = ["index", "build", "--images", str(root / "images"), "--labels", str(root / "labels.csv"),
            "--out", str(out / "idx"), "--descriptor", descriptor, "--submaps", "country", "--chunk-size", "8"]
    for key, value in opts.items():
        argv += ["--descriptor-opt", f"{key}={json.dumps(value)}"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["index", "info", str(out / "idx"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)

    photo = root / "images" / "rome_1.jpg"
    assert main(["search", str(photo), "--index", str(out / "idx"), "-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["candidates"][0]["ref_id"] == "rome_1.jpg"

    assert main(["locate", str(photo), "--index", str(out / "idx"), "--vlm", "none", "--json"]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert prediction["lat"] is not None and prediction["lon"] is not None

    assert main(["eval", "--out", str(out / "run"), "--index", str(out / "idx"), "--labels",
                 str(root / "labels.csv"), "--images", str(root / "images"), "--vlm", "none",
                 "--limit", "3"]) == 0
    lines = (out / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 3
    capsys.readouterr()
    return info
