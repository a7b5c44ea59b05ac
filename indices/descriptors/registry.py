"""Descriptor registry: name -> class. ``@register`` on a ``Descriptor`` subclass adds it."""

from __future__ import annotations

from typing import Any

from indices.descriptors.base import Descriptor

DESCRIPTORS: dict[str, type[Descriptor]] = {}


def register(cls: type[Descriptor]) -> type[Descriptor]:
    if cls.name in DESCRIPTORS and DESCRIPTORS[cls.name] is not cls:
        raise ValueError(f"descriptor name {cls.name!r} registered twice")
    DESCRIPTORS[cls.name] = cls
    return cls


def get_descriptor(name: str, conf: dict[str, Any] | None = None) -> Descriptor:
    import indices.descriptors  # noqa: F401 - importing the package registers the built-ins

    if name not in DESCRIPTORS:
        raise ValueError(f"unknown descriptor {name!r}; available: {', '.join(sorted(DESCRIPTORS))}")
    return DESCRIPTORS[name](conf)
