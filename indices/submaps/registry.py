"""Submap-scheme registry: ``country``, ``kmeans:K``, ``global``, ``radius`` and any you add with
``@register_scheme`` in a module of this package (found on the first lookup, no import line needed)."""

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


def parse_schemes(specs: str) -> list[SubmapScheme]:
    """Comma-separated list, e.g. ``"country,kmeans:100"``; order matters (the first is primary)."""
    schemes = [parse_scheme(s) for s in specs.split(",") if s.strip()]
    if not schemes:
        raise ValueError("no submap scheme given")
    prefixes = [s.prefix for s in schemes]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"submap scheme listed twice: {specs!r}")
    return schemes
