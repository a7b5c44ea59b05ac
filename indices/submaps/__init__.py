"""Submap schemes; each module here registers one, found on the first lookup (``parse_scheme``)."""

from geoguide.indices.submaps.base import WHOLE_MAP, MapView, PriorHint, Submap, SubmapError, SubmapScheme
from geoguide.indices.submaps.registry import SCHEMES, parse_scheme, parse_schemes, register_scheme

__all__ = ["SCHEMES", "WHOLE_MAP", "MapView", "PriorHint", "Submap", "SubmapError", "SubmapScheme", "parse_scheme",
           "parse_schemes", "register_scheme"]
