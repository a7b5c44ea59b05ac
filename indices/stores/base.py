"""A store: the codes of every reference vector, kept in storage order, and the scan of a slice.

Every store is one FAISS family built with ``faiss.index_factory`` as a one-list IVF without
residuals (``IVF1,SQfp16``, ``IVF1,SQ8``, ``IVF1,PQ64``, ``OPQ64,IVF1,PQ64``): FAISS trains the
quantizer and encodes, and its inverted-list scanner (``InvertedListScanner.scan_codes``, the
SIMD loop FAISS runs inside an IVF list) scores *any* contiguous block of codes we hand it. The
codes live in a plain ``(N, code_size)`` uint8 ``.npy`` file in storage order, memory-mapped, so a
submap that is a row range is scanned from a slice of that file with no copy and no walk over
the rest of the map. Measured at 1M x 256-d fp16, one thread: a 7.6k-row slice scans in 0.2-0.3
ms, the whole map in 58 ms (FAISS ``IndexScalarQuantizer`` over the same codes: 72 ms; the same
index with ``IDSelectorRange`` over the 7.6k rows: 2.7 ms, because the selector visits all 1M).

A store that is not exact (``exact = False``) returns a shortlist ``rerank`` times longer than
asked, or ``shortlist_fraction`` of the slice when that is longer (denser maps need more); the index re-scores it exactly from the fp16 descriptors (memory-mapped: only the
shortlisted rows are read), so scores are always exact inner products and recall depends only on
whether the true neighbours reach the shortlist.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from geoguide.indices.manifest import IndexFormatError

STORE_FILE = "store.faiss"  # the trained, empty quantizer (absent for stores that learn nothing)


class Store(ABC):
    kind: ClassVar[str]
    usage: ClassVar[str]
    exact: ClassVar[bool] = False
    trainable: ClassVar[bool] = True
    codes_are_descriptors: ClassVar[bool] = False  # fp16: the codes file is descriptors.f16.npy
    rerank: ClassVar[int] = 1  # inexact stores: the shortlist is at least rerank * k long ...
    shortlist_fraction: ClassVar[float] = 0.0  # ... and at least this fraction of the slice scanned
    train_sample: ClassVar[int] = 32_768  # 128 points per centroid of an 8-bit PQ (FAISS caps at 256)

    takes_param: ClassVar[bool] = False

    def __init__(self, param: str | None = None):
        if param is not None and not self.takes_param:
            raise ValueError(f"{self.kind} takes no parameter")
        self.param = param
        self._index: faiss.Index | None = None

    @property
    def spec(self) -> str:
        return self.kind if self.param is None else f"{self.kind}:{self.param}"

    @abstractmethod
    def factory(self, dim: int) -> str:
        """The ``index_factory`` string, e.g. ``"OPQ64,IVF1,PQ64"``; raises ``ValueError`` for a bad dim."""

    @property
    def min_train_points(self) -> int:
        """Vectors the quantizer needs to train at all (FAISS's k-means wants a point per centroid)."""
        return 0

    def params(self, dim: int) -> dict[str, Any]:
        """What the manifest records about this store."""
        return {"factory": self.factory(dim), "exact": self.exact, "rerank": self.rerank,
                "shortlist_fraction": self.shortlist_fraction, "code_size": self.code_size}

    def shortlist(self, k: int, n: int) -> int:
        """How many candidates to re-score for the top ``k`` of ``n`` codes (``k`` when exact)."""
        if self.exact:
            return k
        return min(n, max(k * self.rerank, int(np.ceil(self.shortlist_fraction * n))))

    # ---- the FAISS object --------------------------------------------------------------------
    def create(self, dim: int) -> None:
        index = faiss.index_factory(dim, self.factory(dim), faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.by_residual = False  # codes encode the vector itself: any block of codes scans alone
        # index_factory turns on polysemous training for 8-bit PQ: it reorders the centroids for
        # Hamming filtering, which the scanner never uses, and made training 20x slower
        # (benchmarks/store_training.py, 5,000 x 768-d PQ96, one thread: 208 s against 10.3 s).
        if isinstance(ivf, faiss.IndexIVFPQ):
            ivf.do_polysemous_training = False
        ivf.quantizer.add(np.zeros((1, dim), dtype=np.float32))  # the one list; nothing to learn
        for pq in (getattr(ivf, "pq", None), *(getattr(t, "pq", None) for t in self._transforms(index))):
            if pq is not None:
                pq.cp.min_points_per_centroid = 1  # small maps train fine; keep FAISS quiet
        if not self.trainable:
            ivf.is_trained = True
            if isinstance(index, faiss.IndexPreTransform):
                index.is_trained = True
        self._index = index

    def train(self, sample: np.ndarray) -> None:
        """Learn the quantizer from a sample of float32 vectors (a no-op for untrained stores)."""
        self.create(sample.shape[1])
        if self.trainable:
            self._require().train(np.ascontiguousarray(sample, dtype=np.float32))

    def save(self, path: Path) -> None:
        faiss.write_index(self._require(), str(path))

    def load(self, path: Path | None, dim: int) -> None:
        if path is None:
            self.create(dim)
        else:
            self._index = faiss.read_index(str(path))

    def _require(self) -> faiss.Index:
        if self._index is None:
            raise RuntimeError(f"store {self.spec} used before train/load")
        return self._index

    @staticmethod
    def _transforms(index: faiss.Index) -> list:
        if not isinstance(index, faiss.IndexPreTransform):
            return []
        return [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]

    @property
    def _ivf(self) -> faiss.IndexIVF:
        index = self._require()
        cached = self.__dict__.get("_ivf_cache")
        if cached is None or cached[0] is not index:  # two SWIG calls saved per scan (a few us each)
            cached = self.__dict__["_ivf_cache"] = (index, faiss.downcast_index(faiss.extract_index_ivf(index)))
        return cached[1]

    @property
    def code_size(self) -> int:
        return int(self._ivf.code_size)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        for t in self._transforms(self._require()):
            x = np.ascontiguousarray(t.apply(x), dtype=np.float32)
        return x

    # ---- encode and scan ---------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, D) float vectors -> (n, code_size) uint8 codes."""
        xt = self._transform(x)
        codes = np.empty((len(xt), self.code_size), dtype=np.uint8)
        if len(xt):
            lists = np.zeros(len(xt), dtype=np.int64)
            self._ivf.encode_vectors(len(xt), faiss.swig_ptr(xt), faiss.swig_ptr(lists), faiss.swig_ptr(codes), False)
        return codes

    def scanner(self, query: np.ndarray) -> tuple[Any, np.ndarray]:
        """A scanner set to ``query`` (and the transformed query it points into, kept alive with
        it), for ``scan`` to reuse over several blocks of one search."""
        q = self._transform(query.reshape(1, -1))
        scanner = self._ivf.get_InvertedListScanner(True, None, None)  # store_pairs: label = position
        scanner.set_query(faiss.swig_ptr(q[0]))
        scanner.set_list(0, 0.0)
        return scanner, q

    def scan(self, query: np.ndarray, codes: np.ndarray, k: int,
             scanner: tuple[Any, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of a C-contiguous block of codes by (approximate) inner product with ``query``.

        Returns (scores, positions in the block), best first. Thread-safe: a scanner per call, or
        per search when the caller passes one from ``scanner(query)`` (never shared by threads).
        """
        n = len(codes)
        k = min(k, n)
        if k <= 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        codes = np.ascontiguousarray(codes)  # a row slice of a memory-mapped file already is: no copy
        scanner = (scanner or self.scanner(query))[0]
        scores = np.full(k, -np.inf, dtype=np.float32)  # a min-heap of the k best, as FAISS keeps it
        pos = np.full(k, -1, dtype=np.int64)
        scanner.scan_codes(n, faiss.swig_ptr(codes), None, faiss.swig_ptr(scores), faiss.swig_ptr(pos), k)
        order = np.argsort(-scores, kind="stable")
        scores, pos = scores[order], pos[order]
        if pos[-1] >= 0:  # every slot filled (the usual case): nothing to drop
            return scores, pos
        valid = pos >= 0
        return scores[valid], pos[valid]


class RowReader:
    """Rows of a memory-mapped .npy read with ``pread``, for scattered reads such as a re-ranking.

    Through the memory map, the kernel maps ~64 KB around every touched row into the process
    (fault-around): 50 whole-map queries on a 1M x 256-d PQ index grew its RSS by 0.55 GB, the
    whole fp16 file. ``pread`` copies just the rows (1 us a row, as fast as the map) and maps
    nothing. The descriptor stays open, so a reader keeps its generation's file after an update.
    """

    def __init__(self, arr: np.memmap):
        self._path = arr.filename
        self._fd = os.open(arr.filename, os.O_RDONLY)
        self._offset, self._dtype, self._shape = arr.offset, arr.dtype, arr.shape[1:]
        self._row_bytes = arr.dtype.itemsize * int(np.prod(arr.shape[1:]))

    def read(self, rows: np.ndarray) -> np.ndarray:
        rb, off = self._row_bytes, self._offset
        buf = b"".join(os.pread(self._fd, rb, off + int(r) * rb) for r in rows)
        if len(buf) != rb * len(rows):
            raise IndexFormatError(f"{self._path}: shorter than its header says; run geoguide index verify")
        return np.frombuffer(buf, dtype=self._dtype).reshape(len(rows), *self._shape).astype(np.float32)

    def __del__(self):
        with contextlib.suppress(OSError, AttributeError):
            os.close(self._fd)
