"""What the graph's nodes need besides the state: the index, the model backend, the config.

Not part of the checkpointed state (none of it serialises); a resumed chat session rebuilds it
from the same command-line options. The one way every shell (CLI, chat,
server, eval runner, demo) makes it is ``agent.factory.build_context`` over an
``agent.settings.ContextSpec``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from geoguide.agent.backends import ChatBackend, PriorProvider
from geoguide.agent.config import AgentConfig
from geoguide.core.images import load_image
from geoguide.indices.store import ReferenceIndex


@dataclass
class AgentContext:
    index: ReferenceIndex
    backend: PriorProvider
    config: AgentConfig
    # The model that plans (``--planner``); None = the VLM plans too. A text-only planner never sees the photo.
    planner: ChatBackend | None = None
    # Stand-in for the index's own descriptor (e.g. the runner's thread-safe wrapper); None = the index's.
    descriptor: Any = None
    # Photos described elsewhere (``--query-vectors``, ``indices.importing.QueryVectors``): used before any descriptor.
    query_vectors: Any = None
    # A calibration profile (``--calibration``, ``agent.profile.CalibrationProfile``): answers get its radius.
    profile: Any = None
    _vectors: dict[str, np.ndarray] = field(default_factory=dict)
    _images: dict[str, Image.Image] = field(default_factory=dict)
    # ToolNode runs a turn's tool calls on threads (the rules policy's hypothesis search and probe):
    # the photo's image and descriptor are computed once, under this lock, and shared.
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def planner_backend(self) -> ChatBackend | None:
        """The model that plans and answers follow-ups: ``--planner``, else the VLM when it can chat."""
        return self.planner if self.planner is not None else self.backend.chat_backend()

    def planner_model(self):
        """``planner_backend`` as a LangChain chat model (``agent.backends.chat_model``); None
        when no model can chat (``replay``, ``none``, a local prior)."""
        from geoguide.agent.backends.chat_model import planner_model

        return planner_model(self.planner_backend)

    def for_photo(self, image_id: str, author: str | None = None, descriptor: Any = None,
                  backend: PriorProvider | None = None) -> AgentContext:
        """A fresh context for one photo on a copy of the config: concurrent photos (the eval
        runner's threads, the server's requests) never share mutable state.

        The photo's own id is always excluded (the self-match guard: a query that is also a
        reference would otherwise find itself at similarity 1); ``author`` also excludes every
        photo by that photographer (the leakage-free rule).
        """
        cfg = self.config
        update: dict[str, Any] = {"exclude_ids": [*cfg.exclude_ids, image_id]}
        if author:
            update["exclude_authors"] = [*cfg.exclude_authors, author]
        return AgentContext(index=self.index, backend=backend or self.backend, config=cfg.model_copy(update=update),
                            planner=self.planner, descriptor=descriptor or self.descriptor,
                            query_vectors=self.query_vectors, profile=self.profile)

    def close(self) -> None:
        """Release the backends (caches, models)."""
        self.backend.close()
        if self.planner is not None and self.planner is not self.backend:
            self.planner.close()

    def calibration(self):
        """The map's calibration (``indices.calibration``), or None for a map too small to have one."""
        from geoguide.indices.calibration import calibration_or_none

        return calibration_or_none(self.index)

    def image(self, path: str, sha: str) -> Image.Image:
        with self._lock:
            return self._image(path, sha)

    def _image(self, path: str, sha: str) -> Image.Image:
        if sha not in self._images:
            self._images.clear()  # one photo at a time is enough; keeps a long eval's memory flat
            self._images[sha] = load_image(path)
        return self._images[sha]

    def query_vector(self, path: str, sha: str, image_id: str | None = None) -> np.ndarray:
        """The photo's descriptor, computed once per photo however many searches use it."""
        with self._lock:
            return self._query_vector(path, sha, image_id)

    def _query_vector(self, path: str, sha: str, image_id: str | None = None) -> np.ndarray:
        if sha not in self._vectors and self.query_vectors is not None and image_id in self.query_vectors:
            self._vectors.clear()
            self._vectors[sha] = self.query_vectors.get(image_id)
        if sha not in self._vectors and self.config.reuse_index_descriptors and image_id:
            row = self.index.row_of(image_id)
            stored = self.index.row(row)["path"] if row is not None else None
            # An imported reference has no file: its id is the only key there is.
            if stored is not None and (not stored or Path(stored).resolve() == Path(path).resolve()):
                self._vectors.clear()
                self._vectors[sha] = np.asarray(self.index.descriptors[row], dtype=np.float32)
        if sha not in self._vectors:
            self._vectors.clear()
            desc = self.descriptor or self.index.descriptor()
            self._vectors[sha] = desc.extract([self._image(path, sha)])[0]
        return self._vectors[sha]


class SerialDescriptor:
    """One descriptor shared by every photo's context, loaded on first use (a prior-only run never
    needs it) and extracting one batch at a time: loading it once matters (a CNN), and OpenCV/torch
    objects are not promised to be thread-safe."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load
        self._inner: Any = None
        self._lock = threading.Lock()

    def extract(self, images: list[Any]) -> np.ndarray:
        with self._lock:
            if self._inner is None:
                self._inner = self._load()
            return self._inner.extract(images)
