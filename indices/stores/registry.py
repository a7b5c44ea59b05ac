"""Store registry: ``fp16``, ``sq8``, ``pq:M``, ``opq:M`` and any you add with ``@register_store``
in a module of this package (found on the first lookup, no import line needed)."""

from __future__ import annotations

from geoguide.core.errors import GeoguideError
from geoguide.core.registry import Registry
from geoguide.indices.stores.base import Store

DEPRECATED_FAISS_INDEX = {"fp16": "fp16", "flat": "fp16"}  # --faiss-index values -> their --store


class StoreSpecError(GeoguideError, ValueError):
    """An unknown store kind or a bad parameter; the message lists the valid forms."""


# Listed by usage (``pq:M``), not bare kind, so the error shows how to write each one.
STORES: Registry[type[Store]] = Registry("store", key="kind", package="geoguide.indices.stores", error=StoreSpecError,
                                         homes={"fp16": "flat", "sq8": "quantized", "pq": "quantized", "opq": "quantized"},
                                         unknown="unknown store {spec!r}; available: {available}",
                                         label=lambda cls: cls.usage)


def register_store(cls: type[Store]) -> type[Store]:
    """``@register_store``: adds a ``Store`` subclass under its ``kind``."""
    return STORES.add(cls)


def parse_store(spec: str) -> Store:
    """``"pq:64"`` -> a PQ store with 64 sub-quantizers; ``"fp16"`` -> the exact store."""
    kind, _, param = spec.strip().partition(":")
    cls = STORES.get(kind, spec=spec)
    try:
        return cls(param or None)
    except ValueError as e:
        raise StoreSpecError(f"store {spec!r}: {e}; usage: {cls.usage}") from None
