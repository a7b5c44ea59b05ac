"""What geoguide is running: the installed distribution's version, and the git commit only when
this code is a checkout's (said as such).

Why not ``git rev-parse`` in the package folder: installed from a wheel, that folder sits in
``site-packages``, and git walks up to whatever repository holds the virtual environment, so a
run would be stamped with another project's commit. The commit is read only when the folder
above the package is a geoguide checkout (its ``pyproject.toml`` names geoguide).
"""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import BaseModel, Field

try:
    __version__ = version("geoguide")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"


class Provenance(BaseModel):
    """Which geoguide produced a result (eval runs and batch outputs record it)."""

    version: str = Field(description="the installed distribution's version")
    source: str = Field(description="'installed' (a wheel) or 'checkout' (a git working tree)")
    commit: str | None = Field(None, description="git commit of the checkout; None when installed")
    dirty: bool | None = Field(None, description="the checkout had uncommitted changes")


def checkout_root() -> Path | None:
    """The geoguide checkout this code runs from, or None (an installed wheel)."""
    root = Path(__file__).resolve().parents[1]
    project = root / "pyproject.toml"
    try:
        named = 'name = "geoguide"' in project.read_text(encoding="utf-8")
    except OSError:
        return None
    return root if named and (root / ".git").exists() else None


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def provenance() -> Provenance:
    root = checkout_root()
    if root is None:
        return Provenance(version=__version__, source="installed")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return Provenance(version=__version__, source="checkout", commit=_git(root, "rev-parse", "HEAD"),
                      dirty=None if status is None else bool(status))
