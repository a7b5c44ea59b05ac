"""The exact store: fp16 vectors, whose codes are the bytes of ``descriptors.f16.npy`` itself.

FAISS's ``SQfp16`` code of a vector is its IEEE half-precision bytes, exactly what numpy writes
for float16, so this store keeps no second copy of the primary order and opens indices written
before stores existed (their ``faiss.index`` is simply not read). Scores are exact inner
products of the fp16 values, the same as today's ``IndexScalarQuantizer`` (and as a float32
``IndexFlatIP`` over them, which is why ``--faiss-index flat`` now maps here).
"""

from __future__ import annotations

from geoguide.indices.stores.base import Store
from geoguide.indices.stores.registry import register_store


@register_store
class Fp16Store(Store):
    kind = "fp16"
    usage = "fp16 (exact, 2 bytes/dim)"
    exact = True
    trainable = False
    codes_are_descriptors = True

    def factory(self, dim: int) -> str:
        return "IVF1,SQfp16"
