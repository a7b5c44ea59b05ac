"""``imported``: vectors computed elsewhere (``geoguide index import``), e.g. MegaLoc run over MP-16
on a GPU cluster. The index keeps them as they came (L2-normalised); there is no model here to
describe a new photo, so queries bring their own vectors (``--query-vectors``) and a photo without
one is a clear error naming that option.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from geoguide.core.errors import GeoguideError
from geoguide.indices.descriptors.base import Descriptor
from geoguide.indices.descriptors.registry import register


class QueryVectorNeeded(GeoguideError, LookupError):
    """A photo must be described, but the index's vectors came from elsewhere."""


@register
class ImportedVectors(Descriptor):
    name = "imported"
    default_conf = {"name": "imported", "dim": 0}  # the descriptor's own name (--descriptor-name) and length

    @property
    def dim(self) -> int:
        return int(self.conf["dim"])

    def extract(self, images: Sequence[Image.Image]) -> np.ndarray:
        raise QueryVectorNeeded(
            f"this index holds vectors computed elsewhere ({self.conf['name']}, {self.dim} dimensions), so geoguide "
            "cannot describe a photo for it: give the photos' vectors with --query-vectors FILE (.npy in the "
            "labels' row order, or Parquet with an IMG_ID column)"
        )
