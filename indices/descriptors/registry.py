"""Descriptor registry: name -> class. ``@register`` on a ``Descriptor`` subclass in any module of
this package adds it; the package is listed on the first lookup, so a new file needs no import line."""

from __future__ import annotations

from typing import Any

from geoguide.core.registry import Registry
from geoguide.indices.descriptors.base import Descriptor

DESCRIPTORS: Registry[type[Descriptor]] = Registry("descriptor", key="name", package="geoguide.indices.descriptors")


def register(cls: type[Descriptor]) -> type[Descriptor]:
    """``@register``: adds a ``Descriptor`` subclass under its ``name``."""
    return DESCRIPTORS.add(cls)


def get_descriptor(name: str, conf: dict[str, Any] | None = None) -> Descriptor:
    return DESCRIPTORS.get(name)(conf)
