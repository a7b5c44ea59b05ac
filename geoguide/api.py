"""The Python API: one object that holds an index and its models warm and answers photos.

    from geoguide import Geolocator
    with Geolocator(index="idx/", vlm="replay:prior.csv") as g:
        p = g.locate("photo.jpg")                      # Prediction, as ``geoguide locate --json``
        for item in g.locate_many(paths, workers=4):   # LocatedPhoto, as each finishes
            ...
        hits = g.search("photo.jpg", submap="country:FR", k=5)

It is the command line's ``locate`` without the shell: the same ``ContextSpec``, the same
``build_context``, the same compiled graph, so a notebook and ``geoguide locate`` give the same
answer. Failures are geoguide's own exceptions (``GeoguideError`` and its subclasses: a bad option
is a ``ConfigError``, a photo that is not one an ``ImageLoadError``, a model that cannot be used a
``ModelServiceError``), never exit codes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geoguide.agent.backends.errors import ModelServiceError
from geoguide.agent.context import AgentContext, SerialDescriptor
from geoguide.agent.settings import DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT_S, ContextSpec
from geoguide.agent.state import Prediction
from geoguide.core.errors import GeoguideError
from geoguide.core.pool import bounded_map
from geoguide.core.validation import describe_validation
from geoguide.tools.retrieval import SearchArgs, SearchResult

__all__ = ["ConfigError", "Geolocator", "LocatedPhoto", "SearchError", "SearchHit"]


class ConfigError(GeoguideError, ValueError):
    """An option geoguide cannot use: a mistyped setting, an unknown policy, a missing index."""


class SearchError(GeoguideError, ValueError):
    """A search that cannot run (an unknown submap id, an empty selection)."""


SearchHit = SearchResult  # what ``Geolocator.search`` returns: the candidates and a summary


class LocatedPhoto(BaseModel):
    """One photo of ``locate_many``: its prediction, or why there is none."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    photo: str = Field(description="the path as given")
    prediction: Prediction | None = None
    error: str | None = Field(None, description="why the photo has no prediction (the batch went on)")
    error_kind: str | None = Field(None, description="the exception's class name, e.g. ImageLoadError")


class Geolocator:
    """An index and its models, opened once; ``locate`` / ``locate_many`` / ``search`` reuse them.

    ``settings`` takes the ``--set`` keys (``{"k": 50, "rerank.enabled": False}``); every other
    argument is the ``geoguide locate`` option of the same name. Thread-safe: ``locate_many`` runs
    photos on threads, each on its own copy of the config."""

    def __init__(self, index: str | os.PathLike, vlm: str = "none", *, policy: str = "rules",
                 planner: str | None = None, cache: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, attempts: int = DEFAULT_ATTEMPTS,
                 vlm_opts: Iterable[str] = (), planner_opts: Iterable[str] = (),
                 settings: dict[str, Any] | None = None) -> None:
        spec = {"index": Path(index), "vlm": vlm, "policy": policy, "planner": planner, "timeout": timeout,
                "attempts": attempts, "vlm_opts": list(vlm_opts), "planner_opts": list(planner_opts),
                "cache": None if cache is None else Path(cache), **(settings or {})}
        self._open(_checked(lambda: ContextSpec.from_settings(spec)))

    @classmethod
    def from_spec(cls, spec: ContextSpec) -> Geolocator:
        """From the spec the command line builds (``AgentOptions.context_spec()``)."""
        self = cls.__new__(cls)
        self._open(spec)
        return self

    def _open(self, spec: ContextSpec) -> None:
        from geoguide.agent.factory import build_context

        self.spec = spec
        self.ctx: AgentContext = _checked(lambda: build_context(spec))
        ctx = self.ctx
        self._descriptor = SerialDescriptor(lambda: ctx.descriptor or ctx.index.descriptor())

    # ---- photos --------------------------------------------------------------------------------
    def locate(self, photo: str | os.PathLike, *, text: str | None = None, exclude_author: str | None = None,
               image_id: str | None = None) -> Prediction:
        """Where was this photo taken? ``exclude_author`` skips that photographer's references (a
        photo of a benchmark). Raises ``ModelServiceError`` when the model could not be used and
        the spec did not accept a retrieval-only answer (``settings={"fallback": "retrieval"}``)."""
        from geoguide.agent.graph import locate

        path = Path(photo)
        name = image_id or path.name
        pred = locate(self.ctx.for_photo(name, exclude_author, self._descriptor), path, image_id=name, user_text=text)
        failure = pred.model_failure()
        if failure:
            raise ModelServiceError(f"{path}: {failure}")
        return pred

    def locate_many(self, photos: Iterable[str | os.PathLike], *, workers: int = 1,
                    text: str | None = None) -> Iterator[LocatedPhoto]:
        """Each photo's ``LocatedPhoto`` as it finishes (not in input order), ``workers`` at once
        (worth it for remote models, which mostly wait). A photo that fails is reported with its
        reason and the rest go on; only a bug in geoguide stops the iteration."""

        def one(photo: str | os.PathLike) -> LocatedPhoto:
            try:
                return LocatedPhoto(photo=str(photo), prediction=self.locate(photo, text=text))
            except (GeoguideError, OSError, ValueError) as e:
                return LocatedPhoto(photo=str(photo), error=_first_line(e), error_kind=type(e).__name__)

        yield from bounded_map(one, photos, workers, name="locate")

    def search(self, photo: str | os.PathLike, *, submap: str = "global", k: int = 10,
               exclude_authors: Iterable[str] = ()) -> SearchHit:
        """Raw visual place recognition inside one submap (``country:FR``, ``kmeans-100:37``,
        ``radius:45.76,4.84,50``, ``global``): no model, no agent."""
        from geoguide.core.images import load_image
        from geoguide.tools.base import ToolError
        from geoguide.tools.retrieval import search_submap

        args = _checked(lambda: SearchArgs(submap_id=submap, k=k, exclude_authors=list(exclude_authors)))
        res = search_submap(self.ctx.index, load_image(photo), args)
        if isinstance(res, ToolError):
            raise SearchError(res.error)
        return res

    # ---- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        self.ctx.close()

    def __enter__(self) -> Geolocator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _checked(make):
    """``make()``, with pydantic's and plain ValueErrors turned into one-line ``ConfigError``s."""
    try:
        return make()
    except GeoguideError:
        raise
    except ValidationError as e:
        raise ConfigError(describe_validation(e, limit=1)) from None
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(_first_line(e)) from None
