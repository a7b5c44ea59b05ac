"""Global descriptors. Each module here registers one; see ``base.Descriptor`` for the contract."""

from indices.descriptors import clip, densevlad, effnet_gem, megaloc, netvlad, thumbnail  # noqa: F401  (registration)
from indices.descriptors.base import Descriptor, l2_normalize
from indices.descriptors.registry import DESCRIPTORS, get_descriptor, register

__all__ = ["DESCRIPTORS", "Descriptor", "get_descriptor", "l2_normalize", "register"]
