"""geoguide as a user gets it from ``pip install``: the wheel built from this checkout, installed with
its core dependencies only into a fresh virtual environment outside the repository, runs there.

No network: the fresh environment sees the core requirements' distributions (and theirs, found by
walking the wheel's own ``Requires-Dist``) through a folder of links into this checkout's
``.venv``, so pip finds them installed and ``--no-index`` fails loudly if the wheel asks for
anything else. The extras' packages (fastapi, ray, matplotlib, transformers, ...) are not linked, so
a command that needs one must say which extra to install.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from geoguide.indices.photosets import shared_data_root

REPO = Path(__file__).resolve().parents[2]
DATA = shared_data_root()
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions these requirements need, transitively, extras left out."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in seen:
            continue
        dist = metadata.distribution(req.name)  # missing here: make setup did not install a core requirement
        seen[name] = dist
        todo += [Requirement(r) for r in (dist.requires or [])]
    return list(seen.values())


def _link_core(requirements: list[str], into: Path) -> None:
    """One symlink per top-level file or folder of each needed distribution (its .dist-info too)."""
    into.mkdir()
    for dist in _closure(requirements):
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            link = into / top
            if not link.exists() and (site / top).exists():
                link.symlink_to(site / top)


def _wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    if not (DATA / "labels.csv").is_file():
        pytest.skip(f"shared split not found at {DATA} (set GEOGUIDE_DATA)")
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("geoguide-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    _link_core(_wheel_requirements(wheel), root / "core-deps")
    (site / "core-deps.pth").write_text(str(root / "core-deps") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-index", str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    return {"root": root, "wheel": wheel, "venv": venv, "site": site}


def _run(installed: dict[str, Path], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{installed['venv'] / 'bin'}:{env['PATH']}"
    env.pop("GEOGUIDE_DATA", None)  # an installed geoguide must not need it for these commands
    env["XDG_CACHE_HOME"] = str(installed["root"] / "cache")  # a fresh user: no OCR cached by the dev install
    return subprocess.run(list(args), cwd=cwd or installed["root"], env=env, capture_output=True, text=True,
                          timeout=600)


def _few_photos(root: Path, n: int = 8) -> tuple[Path, Path]:
    """``n`` shared-split photos as a small labelled set (links, not copies)."""
    images = root / "photos"
    images.mkdir(exist_ok=True)
    with open(DATA / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    for r in rows:
        if not (images / r["IMG_ID"]).exists():
            shutil.copy(DATA / "images" / r["IMG_ID"], images / r["IMG_ID"])  # copies: a link out of --images is refused
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return images, labels


def test_the_wheel_holds_one_import_name(installed):
    with zipfile.ZipFile(installed["wheel"]) as z:
        tops = {n.split("/")[0] for n in z.namelist() if ".dist-info/" not in n}
        assert tops == {"geoguide"}
        names = z.namelist()
    for data in ("geoguide/prompts/templates/perceive/v1.md", "geoguide/app/web/index.html",
                 "geoguide/eval/plans/results.toml"):
        assert data in names
    r = _run(installed, "python", "-c", "import importlib.metadata as m; f = m.distribution('geoguide').files; "
             "print(sorted({str(p).split('/')[0] for p in f if not str(p).startswith('..') and '.dist-info' not in str(p)}))")
    assert r.stdout.strip() == "['geoguide']", r.stderr
    r = _run(installed, "python", "-c", "import agent")
    assert r.returncode != 0 and "No module named 'agent'" in r.stderr


@pytest.fixture(scope="module")
def workdir(installed) -> Path:
    """Outside the repository: photos/ (8 shared-split photos), labels.csv, photo.jpg and idx/, built
    by the installed ``geoguide index build`` with the default descriptor."""
    root = installed["root"]
    images, labels = _few_photos(root)
    (root / "photo.jpg").symlink_to(sorted(images.iterdir())[0])
    r = _run(installed, "geoguide", "index", "build", "--images", str(images), "--labels", str(labels),
             "--out", "idx", "--submaps", "country")
    assert r.returncode == 0, r.stderr
    return root


def test_installed_commands_run_from_outside_the_repository(installed, workdir):
    assert _run(installed, "geoguide", "--help").returncode == 0
    r = _run(installed, "python", "-m", "geoguide", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"geoguide {metadata.version('geoguide')}", r.stdout + r.stderr
    r = _run(installed, "geoguide", "locate", "photo.jpg", "--index", "idx", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["lat"] is not None
    r = _run(installed, "geoguide", "locate", "photos", "--index", "idx", "--out", "out.geojson", "-q")
    assert r.returncode == 0, r.stderr
    feats = json.loads((workdir / "out.geojson").read_text())["features"]
    assert len(feats) == 8 and all(f["geometry"]["type"] == "Point" for f in feats)
    r = _run(installed, "geoguide", "eval", "--images", "photos", "--labels", "labels.csv", "--index", "idx",
             "--exclude-same-author", "--out", "run")
    assert r.returncode == 0, r.stderr
    prov = json.loads((workdir / "run" / "run.json").read_text())["geoguide"]
    assert prov["source"] == "installed" and prov["commit"] is None and prov["version"] == metadata.version("geoguide")


def test_a_missing_extra_is_one_line_naming_it(installed, workdir):
    r = _run(installed, "geoguide", "serve", "--index", "idx")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "geoguide: error: geoguide serve needs geoguide's [serve] extra: pip install 'geoguide[serve]'"]


def test_the_readme_api_example_runs_installed(installed, workdir):
    """The README's Python API block, run as written, in a folder with idx/, photo.jpg and photos/."""
    block = re.search(r"```python\n(# The Python API.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README lost its Python API example"
    (workdir / "api_example.py").write_text(block.group(1))
    r = _run(installed, "python", "api_example.py")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("located") == 8 and "nearest references" in r.stdout
