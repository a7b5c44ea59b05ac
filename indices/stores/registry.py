"""Store registry: ``fp16``, ``sq8``, ``pq:M``, ``opq:M`` and any you add with ``@register_store``."""

from __future__ import annotations

from indices.errors import GeoguideError
from indices.stores.base import Store

STORES: dict[str, type[Store]] = {}
DEPRECATED_FAISS_INDEX = {"fp16": "fp16", "flat": "fp16"}  # --faiss-index values -> their --store


class StoreSpecError(GeoguideError, ValueError):
    """An unknown store kind or a bad parameter; the message lists the valid forms."""


def register_store(cls: type[Store]) -> type[Store]:
    if cls.kind in STORES and STORES[cls.kind] is not cls:
        raise ValueError(f"store kind {cls.kind!r} registered twice")
    STORES[cls.kind] = cls
    return cls


def parse_store(spec: str) -> Store:
    """``"pq:64"`` -> a PQ store with 64 sub-quantizers; ``"fp16"`` -> the exact store."""
    import indices.stores  # noqa: F401 - registers the built-ins

    kind, _, param = spec.strip().partition(":")
    if kind not in STORES:
        forms = ", ".join(STORES[k].usage for k in sorted(STORES))
        raise StoreSpecError(f"unknown store {spec!r}; available: {forms}")
    try:
        return STORES[kind](param or None)
    except ValueError as e:
        raise StoreSpecError(f"store {spec!r}: {e}; usage: {STORES[kind].usage}") from None
