"""Submap-scheme registry: ``country``, ``kmeans:K`` (stored), ``global``, ``radius``, ``continent``
(answered at query time) and any you add with ``@register_scheme`` in a module of this package
(found on the first lookup, no import line needed) or anywhere else that is imported."""

from __future__ import annotations

from geoguide.core.registry import Registry
from geoguide.indices.submaps.base import SubmapScheme

SCHEMES: Registry[type[SubmapScheme]] = Registry("submap scheme", key="kind", package="geoguide.indices.submaps",
                                                 unknown="unknown submap scheme {spec!r}; available: {available}")


def register_scheme(cls: type[SubmapScheme]) -> type[SubmapScheme]:
    """``@register_scheme``: adds a ``SubmapScheme`` subclass under its ``kind``."""
    return SCHEMES.add(cls)


def parse_scheme(spec: str) -> SubmapScheme:
    """``"kmeans:100"`` -> a KMeans scheme with K=100; ``"country"`` -> the country scheme."""
    kind, _, param = spec.strip().partition(":")
    return SCHEMES.get(kind, spec=spec)(param or None)


def scheme_of_prefix(prefix: str) -> SubmapScheme | None:
    """The scheme whose submap ids start with ``prefix`` (``"kmeans-100"`` -> K-means with K=100,
    ``"country"`` -> the country scheme; the inverse of ``SubmapScheme.prefix``), or None."""
    kind, _, param = prefix.strip().partition("-")
    cls = next((c for k, c in SCHEMES.items() if k == kind), None)
    return None if cls is None else cls(param or None)


def parse_schemes(specs: str) -> list[SubmapScheme]:
    """The schemes an index stores: a comma-separated list, e.g. ``"country,kmeans:100"``; order
    matters (the first is primary). Query-time schemes (``radius``, ...) need no building: refused."""
    schemes = [parse_scheme(s) for s in specs.split(",") if s.strip()]
    if not schemes:
        raise ValueError("no submap scheme given")
    query_time = [s.kind for s in schemes if not s.stored]
    if query_time:
        stored = sorted(k for k, cls in SCHEMES.items() if cls.stored)
        raise ValueError(f"{', '.join(query_time)} submaps are answered at query time from any index and are not "
                         f"built; build with: {', '.join(stored)}")
    prefixes = [s.prefix for s in schemes]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"submap scheme listed twice: {specs!r}")
    return schemes


def query_time_scheme(kind: str) -> SubmapScheme | None:
    """The scheme of that kind answered from ids alone (``radius``, ``continent``, ``global``), or None."""
    cls = next((c for k, c in SCHEMES.items() if k == kind), None)
    return cls() if cls is not None and not cls.stored else None
