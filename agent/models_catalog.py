"""``geoguide models``: every descriptor and prior backend, whether it can run on this machine,
where it looks for weights and how to get them. Each class answers for itself through its
``availability()`` classmethod (``core.availability``); nothing here reaches the network."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from geoguide.core.availability import NO_WEIGHTS, Availability


class ModelEntry(Availability):
    kind: Literal["descriptor", "backend"]
    name: str
    summary: str


class Catalog(BaseModel):
    models: list[ModelEntry]


def _first_line(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def catalog() -> Catalog:
    import geoguide.indices.descriptors  # noqa: F401 - registers the built-in descriptors
    from geoguide.agent.backends.registry import BACKENDS, _load_builtins
    from geoguide.indices.descriptors.registry import DESCRIPTORS

    _load_builtins()
    entries = []
    for kind, registry in (("descriptor", DESCRIPTORS), ("backend", BACKENDS)):
        for name, cls in sorted(registry.items()):
            check = getattr(cls, "availability", None)
            try:
                found = check() if check is not None else NO_WEIGHTS
            except Exception as e:  # noqa: BLE001 - one broken entry must not hide the others
                found = Availability(runs_here=False, detail=f"availability check failed: {e}")
            entries.append(ModelEntry(kind=kind, name=name, summary=_first_line(cls), **found.model_dump()))
    return Catalog(models=entries)
