"""Submap-scheme registry: ``country``, ``kmeans:K``, ``global``, ``radius`` and any you add."""

from __future__ import annotations

from indices.submaps.base import SubmapScheme

SCHEMES: dict[str, type[SubmapScheme]] = {}


def register_scheme(cls: type[SubmapScheme]) -> type[SubmapScheme]:
    SCHEMES[cls.kind] = cls
    return cls


def parse_scheme(spec: str) -> SubmapScheme:
    """``"kmeans:100"`` -> a KMeans scheme with K=100; ``"country"`` -> the country scheme."""
    import indices.submaps  # noqa: F401 - registers the built-ins

    kind, _, param = spec.strip().partition(":")
    if kind not in SCHEMES:
        raise ValueError(f"unknown submap scheme {spec!r}; available: {', '.join(sorted(SCHEMES))}")
    return SCHEMES[kind](param or None)


def parse_schemes(specs: str) -> list[SubmapScheme]:
    """Comma-separated list, e.g. ``"country,kmeans:100"``; order matters (the first is primary)."""
    schemes = [parse_scheme(s) for s in specs.split(",") if s.strip()]
    if not schemes:
        raise ValueError("no submap scheme given")
    prefixes = [s.prefix for s in schemes]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"submap scheme listed twice: {specs!r}")
    return schemes
