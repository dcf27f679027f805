"""Dense vectors in FAISS: exact inner product by default, any index-factory string as an option."""
from __future__ import annotations

import logging
import os

import faiss
import numpy as np

from hylex.errors import HylexError

logger = logging.getLogger(__name__)

DEFAULT_FACTORY = "Flat"


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and a GPU is visible (faiss-gpu installed)."""
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get and get() > 0)


def to_gpu(index: "faiss.Index") -> "faiss.Index":
    """The index on every visible GPU when faiss-gpu sees one and supports its type, else the index itself.

    FAISS has GPU versions of Flat, IVF-Flat and IVF-PQ; HNSW (and anything the conversion refuses) stays on
    the CPU. Searching a GPU copy gives the same results as the CPU index (Flat: up to float rounding).
    """
    if not gpu_available() or "HNSW" in type(index).__name__:
        return index
    try:
        gpu = faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as e:  # a type without a GPU version
        logger.info("FAISS %s stays on the CPU: %s", type(index).__name__, str(e).splitlines()[0] if str(e) else e)
        return index
    logger.info("FAISS %s searches on %d GPU(s)", type(index).__name__, faiss.get_num_gpus())
    return gpu


class DenseIndex:
    """A FAISS index with inner-product metric over L2-normalised vectors (so scores are cosines)."""

    def __init__(self, index: "faiss.Index", factory: str = DEFAULT_FACTORY):
        self.index = index
        self.factory = factory

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, factory: str = DEFAULT_FACTORY) -> "DenseIndex":
        """Build from float32 (n, d) vectors with ``faiss.index_factory(d, factory, METRIC_INNER_PRODUCT)``."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2:
            raise HylexError(f"dense vectors must be a 2-D array (n, dim), got shape {x.shape}")
        try:
            index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise HylexError(f"FAISS cannot build index {factory!r}: {str(e).splitlines()[0]}. Use a valid "
                             f"index-factory string such as Flat, HNSW32, IVF256,Flat or IVF256,PQ16") from e
        if not index.is_trained:
            if len(x) == 0:
                raise HylexError(f"FAISS index {factory!r} needs training vectors: index documents first")
            logger.info("training FAISS %s on %d vectors", factory, len(x))
            try:
                index.train(x)
            except RuntimeError as e:
                raise HylexError(f"FAISS cannot train {factory!r} on {len(x)} vectors: {str(e).splitlines()[0]}."
                                 f" Use fewer clusters or Flat") from e
        if len(x):
            index.add(x)
        return cls(index, factory)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (D float32 (nq, k), I int64 (nq, k)) with ``I == -1`` for a missing hit."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0:
            return (np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
        D, I = self.index.search(q, k)
        D[I < 0] = -np.inf
        return D, I

    def reconstruct(self, rows: np.ndarray) -> np.ndarray | None:
        """Stored vectors of local ``rows`` (float32 (n, d)), or None where the index type cannot return them."""
        try:
            return np.stack([self.index.reconstruct(int(r)) for r in rows]) if len(rows) else \
                np.zeros((0, self.dim), np.float32)
        except RuntimeError:
            return None

    def save(self, path: str | os.PathLike) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike, factory: str = DEFAULT_FACTORY, mmap: bool = True) -> "DenseIndex":
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError:  # not every index type supports mmap: read it into memory instead
            index = faiss.read_index(str(path))
        return cls(to_gpu(index), factory)
