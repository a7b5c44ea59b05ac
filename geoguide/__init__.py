"""geoguide: where was this photo taken?

The Python API in three names, imported on first use so that ``import geoguide`` stays light::

    from geoguide import Geolocator
    g = Geolocator(index="idx/", vlm="replay:prior.csv")
    p = g.locate("photo.jpg")            # a Prediction, the same as ``geoguide locate --json``

The rest of the package is laid out by layer, lowest first: ``core`` (errors, registry, files),
``geo`` (countries, places, distances), ``indices`` (descriptors, submaps, stores, building),
``prompts``, ``tools``, ``agent`` (the LangGraph graph, policies, model backends), ``eval``, then
this API and ``app`` (the command line, chat, web server).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoguide.agent.state import Prediction
    from geoguide.api import Geolocator, SearchHit
    from geoguide.core.errors import GeoguideError
    from geoguide.core.version import __version__

__all__ = ["GeoguideError", "Geolocator", "Prediction", "SearchHit", "__version__"]

# ``__version__`` too: reading the installed distribution's metadata is ~0.1 s that ``--help`` must not pay.
_LAZY = {"Geolocator": "geoguide.api", "SearchHit": "geoguide.api", "Prediction": "geoguide.agent.state",
         "GeoguideError": "geoguide.core.errors", "__version__": "geoguide.core.version"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geoguide' has no attribute {name!r}")
