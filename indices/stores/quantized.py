"""Compressed stores: 8-bit scalar quantization and (optimised) product quantization.

``pq:M`` keeps M bytes per vector (M sub-quantizers of 256 centroids): 20M references x 768-d
take 1.28 GB at M=64 instead of 30.7 GB as fp16. ``opq:M`` first learns a rotation (OPQ) that
balances the variance across sub-spaces; ``sq8`` keeps one byte per dimension. All three return a
shortlist ``rerank`` x k long that the index re-scores exactly from the memory-mapped fp16
descriptors (see ``indices.stores.base``); ``rerank`` and the FAISS factory string are recorded
in the manifest.
"""

from __future__ import annotations

from geoguide.indices.stores.base import Store
from geoguide.indices.stores.registry import register_store


def _positive_int(param: str | None, default: int, what: str) -> int:
    try:
        value = int(param) if param is not None else default
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {param!r}") from None
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


@register_store
class SQ8Store(Store):
    kind = "sq8"
    usage = "sq8 (1 byte/dim)"
    rerank = 4
    shortlist_fraction = 0.0001

    def factory(self, dim: int) -> str:
        return "IVF1,SQ8"


@register_store
class PQStore(Store):
    kind = "pq"
    usage = "pq:M[xBITS] (M bytes/vector at 8 bits, M divides the dimension)"
    # Recall@10 on the mixture data falls as the map grows denser (more near-ties inside the PQ
    # error), so the shortlist grows with the slice: 1M x 256-d pq:64 0.946 at 100 candidates,
    # 1.0 at 200; 5M x 256-d pq:64 0.882 at 200, 0.974 at 400, 1.0 at 800; 5M x 768-d pq:96
    # 0.834 at 400, 0.96 at 800, 1.0 at 1600. 20 x k, or 0.03% of the slice when more.
    rerank = 20
    shortlist_fraction = 0.0003
    default_m = 64
    takes_param = True

    def __init__(self, param: str | None = None):
        m, bits = (param.split("x", 1) + [None])[:2] if param else (None, None)
        self.m = _positive_int(m, self.default_m, "the number of sub-quantizers M")
        self.bits = _positive_int(bits, 8, "BITS")
        if self.bits > 16:
            raise ValueError(f"BITS must be <= 16, got {self.bits}")
        super().__init__(f"{self.m}" if self.bits == 8 else f"{self.m}x{self.bits}")

    @property
    def min_train_points(self) -> int:
        return 2**self.bits  # the centroids of one sub-quantizer

    def _pq(self, dim: int) -> str:
        if dim % self.m:
            raise ValueError(f"{self.spec}: M={self.m} must divide the descriptor dimension {dim}")
        return f"PQ{self.m}" if self.bits == 8 else f"PQ{self.m}x{self.bits}"

    def factory(self, dim: int) -> str:
        return f"IVF1,{self._pq(dim)}"


@register_store
class OPQStore(PQStore):
    kind = "opq"
    usage = "opq:M[xBITS] (a learned rotation, then PQ)"

    @property
    def min_train_points(self) -> int:
        return max(256, super().min_train_points)  # FAISS's OPQMatrix trains an 8-bit PQ of its own

    def factory(self, dim: int) -> str:
        return f"OPQ{self.m},IVF1,{self._pq(dim)}"
