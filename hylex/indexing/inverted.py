"""hylex's own inverted index over LLM sparse weights: per vocabulary id, doc rows and weights in NumPy arrays.

Layout (CSC by term): ``indptr`` int64 (V+1,), ``docs`` int32 (nnz,) local rows ascending within a term,
``weights`` float32 (nnz,). Saved as three ``.npy`` files and memory-mapped on load, so opening an index costs
no reading and several processes share the pages.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from hylex.kernels import sparse_topk

FILES = ("sparse_indptr.npy", "sparse_docs.npy", "sparse_weights.npy")


class InvertedIndex:
    """Postings of one segment. Rows are local to the segment (0 .. n_docs-1)."""

    def __init__(self, indptr: np.ndarray, docs: np.ndarray, weights: np.ndarray, n_docs: int):
        self.indptr, self.docs, self.weights = indptr, docs, weights
        self.n_docs = int(n_docs)
        self.vocab_size = len(indptr) - 1

    @classmethod
    def from_csr(cls, matrix: sp.csr_matrix) -> "InvertedIndex":
        """Build from doc x vocab weights, float32 csr (n_docs, V)."""
        csc = sp.csc_matrix(matrix, dtype=np.float32)
        csc.sort_indices()  # rows ascending within each term: block-max pruning later relies on it
        csc.eliminate_zeros()
        return cls(csc.indptr.astype(np.int64), csc.indices.astype(np.int32), csc.data.astype(np.float32),
                   matrix.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def to_csr(self) -> sp.csr_matrix:
        """Doc x vocab float32 csr (n_docs, V): the inverse of :meth:`from_csr`."""
        csc = sp.csc_matrix((np.asarray(self.weights), np.asarray(self.docs), np.asarray(self.indptr)),
                            shape=(self.n_docs, self.vocab_size))
        return csc.tocsr()

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Weights float32 (len(rows), len(terms)) of the given local rows on the given terms (for explain)."""
        out = np.zeros((len(rows), len(terms)), dtype=np.float32)
        pos = {int(r): i for i, r in enumerate(rows)}
        for j, t in enumerate(terms):
            if 0 <= t < self.vocab_size:
                lo, hi = self.indptr[t], self.indptr[t + 1]
                d = self.docs[lo:hi]
                hit = np.searchsorted(d, rows)
                for i, (r, h) in enumerate(zip(rows, hit)):
                    if h < len(d) and d[h] == r:
                        out[pos[int(r)], j] = self.weights[lo + h]
        return out

    def search(self, queries: sp.csr_matrix, k: int, live: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by dot product. ``queries`` float32 csr (nq, V') -> (D float32 (nq, k), I int64 local rows).

        Query terms beyond this index's vocabulary are ignored; missing hits are ``I == -1``, ``D == -inf``.
        """
        q = sp.csr_matrix(queries, dtype=np.float32)
        return sparse_topk(q.indptr.astype(np.int64), q.indices.astype(np.int32), q.data, self.indptr,
                           self.docs, self.weights, self.n_docs, k, live)

    def save(self, directory: str | os.PathLike) -> list[str]:
        d = Path(directory)
        for name, arr in zip(FILES, (self.indptr, self.docs, self.weights)):
            np.save(d / name, np.ascontiguousarray(arr), allow_pickle=False)
        return list(FILES)

    @classmethod
    def load(cls, directory: str | os.PathLike, n_docs: int, mmap: bool = True) -> "InvertedIndex":
        d = Path(directory)
        mode = "r" if mmap else None
        indptr, docs, weights = (np.load(d / name, mmap_mode=mode, allow_pickle=False) for name in FILES)
        return cls(indptr, docs, weights, n_docs)
