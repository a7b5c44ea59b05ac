"""Global descriptors. Each module here registers one with ``@register`` (found on the first lookup,
no import line needed); see ``base.Descriptor`` for the contract."""

from geoguide.indices.descriptors.base import Descriptor, l2_normalize
from geoguide.indices.descriptors.registry import DESCRIPTORS, get_descriptor, register

__all__ = ["DESCRIPTORS", "Descriptor", "get_descriptor", "l2_normalize", "register"]
