"""Vector stores: how an index keeps its descriptors and scans a submap of them (see base.py)."""

from geoguide.indices.stores.base import Store
from geoguide.indices.stores.registry import (
    DEPRECATED_FAISS_INDEX,
    STORES,
    StoreSpecError,
    parse_store,
    register_store,
)

__all__ = ["DEPRECATED_FAISS_INDEX", "STORES", "Store", "StoreSpecError", "parse_store", "register_store"]
