"""Submap schemes; importing this package registers the built-in ones."""

from indices.submaps import country, global_, kmeans, radius  # noqa: F401  (registration)
from indices.submaps.base import Submap, SubmapScheme
from indices.submaps.registry import SCHEMES, parse_scheme, parse_schemes, register_scheme

__all__ = ["SCHEMES", "Submap", "SubmapScheme", "parse_scheme", "parse_schemes", "register_scheme"]
