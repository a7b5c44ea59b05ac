"""Optional parts of geoguide and the one line that names the extra a missing one comes from.

The core install runs ``index build``, ``search``, ``locate``, ``chat`` and ``eval`` with the
default descriptor; the web server, Ray builds, OCR, the transformers models, GeoCLIP and plots
come with extras (``pip install 'geoguide[serve]'``, ..., ``[all]``), so most users do not pull
ray, fastapi and matplotlib they never touch. ``require`` imports an optional module or raises a
``MissingExtra`` saying which extra to install (and, for the two packages that must go in without
their declared dependencies, the extra command).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from geoguide.core.errors import GeoguideError

# Packages whose declared requirements cannot be installed here: they go in with --no-deps.
NO_DEPS = {
    "ocr": "pip install --no-deps rapidocr-onnxruntime (it declares opencv-python, a second OpenCV)",
    "geoclip": "pip install --no-deps geoclip (it declares torchvision, which has no CPU wheel)",
}


class MissingExtra(GeoguideError, ImportError):
    """An optional part of geoguide that is not installed; the message is the command to fix it."""


def missing(extra: str, what: str) -> MissingExtra:
    then = f", then {NO_DEPS[extra]}" if extra in NO_DEPS else ""
    return MissingExtra(f"{what} needs geoguide's [{extra}] extra: pip install 'geoguide[{extra}]'{then}")


def require(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or a ``MissingExtra`` naming ``extra`` (``what`` says what needed it)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name and module.split(".")[0] != e.name.split(".")[0] and not module.startswith(e.name):
            raise  # the module is there but one of its own imports failed: not a missing extra
        raise missing(extra, what) from None
