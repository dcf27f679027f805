"""Impact-quantized, block-partitioned inverted index for pruned sparse top-k (:mod:`hylex.kernels.blockmax`).

Layout (CSC by term; V terms, nnz postings, nb blocks):

* ``indptr`` int64 (V+1,): term t's postings are ``indptr[t]:indptr[t+1]``;
* ``docs`` int32 (nnz,): local doc rows, strictly ascending within a term;
* ``impacts`` uint8 or uint16 (nnz,): quantized weights, ``weight ~= impact * scale``, never 0 (a posting whose
  weight rounds to 0 adds nothing to any score and is dropped);
* ``block_indptr`` int64 (V+1,): term t's blocks are ``block_indptr[t]:block_indptr[t+1]``; block ``b`` of term t
  holds the ``block_size`` consecutive postings from ``indptr[t] + (b - block_indptr[t]) * block_size`` (the last
  block of a term may be shorter), so term t has ``ceil(len_t / block_size)`` blocks;
* ``block_max`` (impacts' dtype) (nb,): the largest impact in the block;
* ``block_first`` / ``block_last`` int32 (nb,): the block's first and last doc id.

Quantization uses ONE global scale for the whole index: ``scale = float32(max_weight / (2**bits - 1))`` and
``impact = clip(rint(weight / scale), 0, 2**bits - 1)``, so ``|weight - impact * scale| <= scale / 2`` (up to
float32 rounding of the product). The dequantized weight every kernel scores with is the float32 product
``float32(impact) * float32(scale)``.

Static pruning (Seismic's idea, approximate): with ``keep_top`` and/or ``keep_fraction`` only the largest
postings of each term are indexed (``keep_top`` postings, or ``ceil(keep_fraction * len)``; with both, the
smaller count), chosen on the unquantized weights, ties by doc id ascending. Both are recorded.

Saved as ``.npy`` files (memory-mapped on load, no pickle) plus ``impact_meta.json`` with bits, scale,
block_size, n_docs, vocab_size and the pruning options.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from hylex.kernels.blockmax import impact_topk_approx, impact_topk_exact

FORMAT_VERSION = 1
META_FILE = "impact_meta.json"
ARRAYS = ("indptr", "docs", "impacts", "block_indptr", "block_max", "block_first", "block_last")
FILES = tuple(f"impact_{name}.npy" for name in ARRAYS)
_DTYPES = {8: np.uint8, 16: np.uint16}


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


class ImpactIndex:
    """Quantized postings of one segment, partitioned in fixed-size blocks with per-block maxima."""

    def __init__(self, indptr: np.ndarray, docs: np.ndarray, impacts: np.ndarray, block_indptr: np.ndarray,
                 block_max: np.ndarray, block_first: np.ndarray, block_last: np.ndarray, *, bits: int,
                 scale: float, block_size: int, n_docs: int, keep_fraction: float | None = None,
                 keep_top: int | None = None):
        self.indptr, self.docs, self.impacts = indptr, docs, impacts
        self.block_indptr, self.block_max = block_indptr, block_max
        self.block_first, self.block_last = block_first, block_last
        self.bits = int(bits)
        self.scale = float(np.float32(scale))
        self.block_size = int(block_size)
        self.n_docs = int(n_docs)
        self.keep_fraction = None if keep_fraction is None else float(keep_fraction)
        self.keep_top = None if keep_top is None else int(keep_top)
        self.vocab_size = len(indptr) - 1

    # -----------------------------------------------------------------------------------------------------
    # building
    # -----------------------------------------------------------------------------------------------------

    @classmethod
    def from_csr(cls, matrix: Any, bits: int = 8, block_size: int = 64, *, keep_fraction: float | None = None,
                 keep_top: int | None = None) -> "ImpactIndex":
        """Build from doc x vocab weights, csr (n_docs, V) with finite weights >= 0.

        Args:
            matrix: scipy sparse (or dense) (n_docs, V) non-negative weights (explicit zeros are dropped).
            bits: 8 (uint8 impacts) or 16 (uint16 impacts).
            block_size: postings per block, >= 1.
            keep_fraction: optional in (0, 1]: keep the ``ceil(keep_fraction * len)`` largest postings per term.
            keep_top: optional >= 1: keep at most the ``keep_top`` largest postings per term.
        """
        if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) or bits not in _DTYPES:
            raise ValueError(f"bits must be 8 or 16, got {bits!r}")
        block_size = _check_int("block_size", block_size, 1)
        if keep_top is not None:
            keep_top = _check_int("keep_top", keep_top, 1)
        if keep_fraction is not None:
            if isinstance(keep_fraction, (bool, np.bool_)) or not isinstance(
                    keep_fraction, (int, float, np.integer, np.floating)) or not 0 < keep_fraction <= 1:
                raise ValueError(f"keep_fraction must be a number in (0, 1], got {keep_fraction!r}")
            keep_fraction = float(keep_fraction)
        X = sp.csr_matrix(matrix)
        if X.ndim != 2 or X.dtype.kind not in "iuf":
            raise ValueError(f"matrix must be a 2-D numeric matrix, got {X.dtype} {X.shape}")
        n_docs, V = X.shape
        if n_docs > np.iinfo(np.int32).max:
            raise ValueError("too many docs for int32 doc ids")
        csc = sp.csc_matrix(X, dtype=np.float32)
        csc.sum_duplicates()
        csc.sort_indices()
        csc.eliminate_zeros()
        w = csc.data
        if w.size and not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("matrix weights must be finite and >= 0")
        indptr = csc.indptr.astype(np.int64)
        docs = csc.indices.astype(np.int32)
        term = np.repeat(np.arange(V, dtype=np.int64), np.diff(indptr))

        if (keep_top is not None or keep_fraction is not None) and w.size:
            lens = np.diff(indptr)
            keep_n = lens.copy()
            if keep_top is not None:
                keep_n = np.minimum(keep_n, keep_top)
            if keep_fraction is not None:
                # the 1e-9 slack keeps e.g. 0.3 * 10 from becoming 4 through float rounding
                keep_n = np.minimum(keep_n, np.maximum(1, np.ceil(keep_fraction * lens - 1e-9)).astype(np.int64))
            order = np.lexsort((docs, -w, term))  # by term, weight descending, doc ascending
            rank = np.arange(w.size, dtype=np.int64) - indptr[term[order]]
            mask = np.zeros(w.size, dtype=bool)
            mask[order] = rank < keep_n[term[order]]
            docs, w, term = docs[mask], w[mask], term[mask]

        maxq = 2 ** bits - 1
        max_w = float(w.max()) if w.size else 0.0
        scale = float(np.float32(max_w / maxq))
        if scale > 0:
            q = np.clip(np.rint(w.astype(np.float64) / scale), 0, maxq).astype(_DTYPES[bits])
        else:
            q = np.zeros(w.size, dtype=_DTYPES[bits])
        nz = q > 0
        docs, q, term = docs[nz], q[nz], term[nz]
        indptr = np.concatenate(([0], np.cumsum(np.bincount(term, minlength=V)))).astype(np.int64)
        return cls._with_blocks(indptr, docs, q, term, bits=bits, scale=scale, block_size=block_size,
                                n_docs=n_docs, keep_fraction=keep_fraction, keep_top=keep_top)

    @classmethod
    def _with_blocks(cls, indptr, docs, impacts, term, **meta) -> "ImpactIndex":
        B = meta["block_size"]
        lens = np.diff(indptr)
        nb = -(-lens // B)
        block_indptr = np.concatenate(([0], np.cumsum(nb))).astype(np.int64)
        r = np.arange(docs.size, dtype=np.int64) - indptr[term]  # position within the term's list
        starts = np.flatnonzero(r % B == 0)
        if starts.size:
            block_max = np.maximum.reduceat(impacts, starts).astype(impacts.dtype)
            ends = np.append(starts[1:], docs.size)
            block_first = docs[starts].astype(np.int32)
            block_last = docs[ends - 1].astype(np.int32)
        else:
            block_max = np.zeros(0, impacts.dtype)
            block_first = np.zeros(0, np.int32)
            block_last = np.zeros(0, np.int32)
        return cls(indptr, np.ascontiguousarray(docs, dtype=np.int32), np.ascontiguousarray(impacts),
                   block_indptr, block_max, block_first, block_last, **meta)

    # -----------------------------------------------------------------------------------------------------
    # properties and conversions
    # -----------------------------------------------------------------------------------------------------

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def n_blocks(self) -> int:
        return int(self.block_indptr[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the index arrays (what :meth:`save` writes, less the .npy headers and the JSON)."""
        return int(sum(np.asarray(getattr(self, name)).nbytes for name in ARRAYS))

    def meta(self) -> dict:
        return {"format": FORMAT_VERSION, "bits": self.bits, "scale": self.scale, "block_size": self.block_size,
                "n_docs": self.n_docs, "vocab_size": self.vocab_size, "nnz": self.nnz,
                "keep_fraction": self.keep_fraction, "keep_top": self.keep_top}

    def kernel_args(self) -> tuple:
        """The index arguments of the :mod:`hylex.kernels.blockmax` kernels, in their order:
        ``indptr, docs, impacts, block_indptr, block_max, block_first, block_last, scale, block_size, n_docs``."""
        return (self.indptr, self.docs, self.impacts, self.block_indptr, self.block_max, self.block_first,
                self.block_last, self.scale, self.block_size, self.n_docs)

    def dequantized(self) -> np.ndarray:
        """float32 (nnz,) weights the kernels score with: ``float32(impact) * float32(scale)``."""
        return np.asarray(self.impacts).astype(np.float32) * np.float32(self.scale)

    def to_csr(self) -> sp.csr_matrix:
        """Dequantized doc x vocab float32 csr (n_docs, V)."""
        csc = sp.csc_matrix((self.dequantized(), np.asarray(self.docs), np.asarray(self.indptr)),
                            shape=(self.n_docs, self.vocab_size))
        return csc.tocsr()

    # -----------------------------------------------------------------------------------------------------
    # search
    # -----------------------------------------------------------------------------------------------------

    def search(self, queries: Any, k: int, live: np.ndarray | None = None, *, query_cut: int | None = None,
               heap_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by dot product with the dequantized weights. ``queries`` csr (nq, V') -> (D, I local rows).

        Exact (:func:`~hylex.kernels.blockmax.impact_topk_exact`) with the defaults; otherwise approximate
        (:func:`~hylex.kernels.blockmax.impact_topk_approx`). Query terms beyond the vocabulary are ignored.
        """
        q = sp.csr_matrix(queries, dtype=np.float32)
        q.sort_indices()
        args = (q.indptr.astype(np.int64), q.indices.astype(np.int64), q.data) + self.kernel_args()
        if query_cut is None and heap_factor == 1.0:
            return impact_topk_exact(*args, k, live)
        return impact_topk_approx(*args, k, live, query_cut=query_cut, heap_factor=heap_factor)

    # -----------------------------------------------------------------------------------------------------
    # persistence
    # -----------------------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> list[str]:
        """Write the arrays as ``.npy`` (no pickle) and ``impact_meta.json``; returns the file names."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name, fname in zip(ARRAYS, FILES):
            np.save(d / fname, np.ascontiguousarray(getattr(self, name)), allow_pickle=False)
        (d / META_FILE).write_text(json.dumps(self.meta(), indent=1, sort_keys=True))
        return list(FILES) + [META_FILE]

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "ImpactIndex":
        """Open a saved index (arrays memory-mapped read-only unless ``mmap=False``)."""
        d = Path(directory)
        meta = json.loads((d / META_FILE).read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported impact index format {meta.get('format')!r} in {d}")
        mode = "r" if mmap else None
        arrays = {name: np.load(d / fname, mmap_mode=mode, allow_pickle=False) for name, fname in zip(ARRAYS, FILES)}
        bits = int(meta["bits"])
        if bits not in _DTYPES or arrays["impacts"].dtype != _DTYPES[bits] or arrays["block_max"].dtype != _DTYPES[bits]:
            raise ValueError(f"impact arrays in {d} do not match bits={bits}")
        V = len(arrays["indptr"]) - 1
        if V != meta["vocab_size"] or len(arrays["block_indptr"]) != V + 1 or int(arrays["indptr"][-1]) != meta["nnz"]:
            raise ValueError(f"impact index arrays in {d} do not match its metadata")
        kf, kt = meta.get("keep_fraction"), meta.get("keep_top")
        return cls(**arrays, bits=bits, scale=float(meta["scale"]), block_size=int(meta["block_size"]),
                   n_docs=int(meta["n_docs"]), keep_fraction=kf, keep_top=kt)

    def __repr__(self) -> str:
        return (f"ImpactIndex(n_docs={self.n_docs}, vocab_size={self.vocab_size}, nnz={self.nnz}, bits={self.bits}, "
                f"block_size={self.block_size}, n_blocks={self.n_blocks}, scale={self.scale:.6g})")


__all__ = ["FILES", "META_FILE", "ImpactIndex"]
