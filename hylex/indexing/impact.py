"""Impact-quantized, block-partitioned inverted index for pruned sparse top-k (:mod:`hylex.kernels.blockmax`).

Layout (CSC by term; V terms, nnz postings, nb blocks):

* ``indptr`` int64 (V+1,): term t's postings are ``indptr[t]:indptr[t+1]``;
* ``docs`` int32 (nnz,): local doc rows, strictly ascending within a term;
* ``impacts`` uint8 or uint16 (nnz,): quantized weights, ``weight ~= impact * term_scale[t]``, never 0 (a posting whose
  weight rounds to 0 adds nothing to any score and is dropped);
* ``block_indptr`` int64 (V+1,): term t's blocks are ``block_indptr[t]:block_indptr[t+1]``; block ``b`` of term t
  holds the ``block_size`` consecutive postings from ``indptr[t] + (b - block_indptr[t]) * block_size`` (the last
  block of a term may be shorter), so term t has ``ceil(len_t / block_size)`` blocks;
* ``block_max`` (impacts' dtype) (nb,): the largest impact in the block;
* ``block_first`` / ``block_last`` int32 (nb,): the block's first and last doc id.

Quantization is per term by default: ``term_scale[t] = float32(max weight of t / (2**bits - 1))`` and
``impact = clip(rint(weight / term_scale[t]), 0, 2**bits - 1)``, so ``|weight - impact * term_scale[t]| <=
term_scale[t] / 2``: every term keeps ``bits`` of precision relative to its own largest weight (one global scale
loses rare heavy terms' neighbours in the rounding). The kernels fold ``term_scale`` into the query weights, so
it costs nothing per posting. With ``max_weight`` every term shares one fixed scale instead, so that separately built
indexes (the segments of one hylex index) give a weight the same impact and their scores are comparable exactly.

Static pruning (Seismic's idea, approximate): with ``keep_top`` and/or ``keep_fraction`` only the largest
postings of each term are indexed (``keep_top`` postings, or ``ceil(keep_fraction * len)``; with both, the
smaller count), chosen on the unquantized weights, ties by doc id ascending. Both are recorded.

* ``term_scale`` float32 (V,): each term's dequantization factor;
* optional forward index ``fwd_indptr`` int64 (n_docs+1,), ``fwd_terms`` uint16/uint32, ``fwd_impacts``: every
  quantized posting doc by doc (static pruning does not touch it), for rescoring and for reading weights back.

Saved as ``.npy`` files (memory-mapped on load, no pickle) plus ``impact_meta.json`` with the format, bits,
block_size, n_docs, vocab_size, nnz, the pruning options and whether a forward index is present.

On disk (format 3) the per-term arrays hold only the T terms present, so that a small segment is small whatever
the vocabulary (V = 49,152 made every segment ~0.9 MiB; a 3-document segment is now a few KB):
``impact_terms.npy`` uint32 (T,) the present term ids ascending, ``impact_indptr.npy`` / ``impact_block_indptr.npy``
int64 (T+1,) and ``impact_term_scale.npy`` float32 (T,) over those terms, and ``term_scale_fill`` in the JSON: the
scale of every other term (0 with per-term scales, the fixed scale with ``max_weight``; the query quantization
reads absent terms' scales too, so they are kept exactly). A term is "present" when it has postings or a scale
other than the fill. :meth:`ImpactIndex.load` expands them to the V-sized arrays above, in memory (20 bytes per
vocabulary term, ~1 MB per loaded segment for V = 49,152; a cumulative sum, well under a millisecond), so the
kernels are unchanged and results identical. Format 2 (the V-sized arrays as they are in memory, memory-mapped)
is still read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from hylex.kernels.blockmax import DEFAULT_WINDOW, impact_topk_approx, impact_topk_exact, impact_topk_subset

FORMAT_VERSION = 3  # 2: per-term arrays sized to the vocabulary; 3: sized to the terms present
READABLE_FORMATS = (2, 3)
META_FILE = "impact_meta.json"
ARRAYS = ("indptr", "docs", "impacts", "block_indptr", "block_max", "block_first", "block_last", "term_scale")
PER_TERM = ("indptr", "block_indptr", "term_scale")  # stored for the present terms only (format 3)
SAVED = ("terms",) + ARRAYS  # the arrays format 3 writes (``terms``: the present term ids)
FILES = tuple(f"impact_{name}.npy" for name in SAVED)
FWD_ARRAYS = ("fwd_indptr", "fwd_terms", "fwd_impacts")
FWD_FILES = tuple(f"impact_{name}.npy" for name in FWD_ARRAYS)
_DTYPES = {8: np.uint8, 16: np.uint16}


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


class ImpactIndex:
    """Quantized postings of one segment, partitioned in fixed-size blocks with per-block maxima."""

    def __init__(self, indptr: np.ndarray, docs: np.ndarray, impacts: np.ndarray, block_indptr: np.ndarray,
                 block_max: np.ndarray, block_first: np.ndarray, block_last: np.ndarray, term_scale: np.ndarray,
                 *, bits: int, block_size: int, n_docs: int, keep_fraction: float | None = None,
                 keep_top: int | None = None):
        self.indptr, self.docs, self.impacts = indptr, docs, impacts
        self.block_indptr, self.block_max = block_indptr, block_max
        self.block_first, self.block_last = block_first, block_last
        self.term_scale = term_scale
        self.bits = int(bits)
        self.block_size = int(block_size)
        self.n_docs = int(n_docs)
        self.keep_fraction = None if keep_fraction is None else float(keep_fraction)
        self.keep_top = None if keep_top is None else int(keep_top)
        self.vocab_size = len(indptr) - 1
        self.fwd_indptr = self.fwd_terms = self.fwd_impacts = None  # the optional forward index

    # -----------------------------------------------------------------------------------------------------
    # building
    # -----------------------------------------------------------------------------------------------------

    @classmethod
    def from_csr(cls, matrix: Any, bits: int = 8, block_size: int = 64, *, keep_fraction: float | None = None,
                 keep_top: int | None = None, forward: bool = True, max_weight: float | None = None) -> "ImpactIndex":
        """Build from doc x vocab weights, csr (n_docs, V) with finite weights >= 0.

        Args:
            matrix: scipy sparse (or dense) (n_docs, V) non-negative weights (explicit zeros are dropped).
            bits: 8 (uint8 impacts) or 16 (uint16 impacts).
            block_size: postings per block, >= 1.
            keep_fraction: optional in (0, 1]: keep the ``ceil(keep_fraction * len)`` largest postings per term.
            keep_top: optional >= 1: keep at most the ``keep_top`` largest postings per term.
            max_weight: None for per-term scales from the data; a number for ONE fixed scale
                ``max_weight / (2**bits - 1)`` for every term, so that indexes built from different document sets
                (segments) quantize a weight identically. Weights above it are rejected.
            forward: also keep a forward index (every posting, doc by doc: ``fwd_indptr`` int64 (n_docs+1,),
                ``fwd_terms`` uint16/uint32, ``fwd_impacts``) so approximate searches rescore with whole queries.
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

        # quantize every posting with its term's scale (a term's largest weight survives any static pruning,
        # so pruning does not change the scales)
        maxq = 2 ** bits - 1
        term_max = np.zeros(V, dtype=np.float64)
        if w.size:
            starts = np.flatnonzero(np.diff(indptr) > 0)
            term_max[starts] = np.maximum.reduceat(w.astype(np.float64), indptr[starts])
        if max_weight is None:
            term_scale = (term_max / maxq).astype(np.float32)
        else:
            if isinstance(max_weight, bool) or not isinstance(max_weight, (int, float, np.integer, np.floating)) \
                    or not (np.isfinite(max_weight) and max_weight > 0):
                raise ValueError(f"max_weight must be None or a finite number > 0, got {max_weight!r}")
            if w.size and float(w.max()) > float(max_weight):
                raise ValueError(f"a sparse weight ({float(w.max()):.6g}) exceeds max_weight={max_weight}: the fixed "
                                 f"quantization scale cannot represent it")
            term_scale = np.full(V, np.float32(float(max_weight) / maxq), dtype=np.float32)
        ts = term_scale[term].astype(np.float64)
        qf = np.zeros(w.size, dtype=np.float64)
        np.divide(w.astype(np.float64), ts, out=qf, where=ts > 0)
        q = np.clip(np.rint(qf), 0, maxq).astype(_DTYPES[bits])
        nz = q > 0
        docs, q, term, w = docs[nz], q[nz], term[nz], w[nz]
        fwd = None
        if forward:
            order = np.lexsort((term, docs))
            fwd_indptr = np.concatenate(([0], np.cumsum(np.bincount(docs, minlength=n_docs)))).astype(np.int64)
            fwd = (fwd_indptr, term[order].astype(np.uint16 if V <= 65536 else np.uint32), q[order])

        if (keep_top is not None or keep_fraction is not None) and w.size:
            lens = np.bincount(term, minlength=V)
            keep_n = lens.copy()
            if keep_top is not None:
                keep_n = np.minimum(keep_n, keep_top)
            if keep_fraction is not None:
                # the 1e-9 slack keeps e.g. 0.3 * 10 from becoming 4 through float rounding
                keep_n = np.minimum(keep_n, np.maximum(1, np.ceil(keep_fraction * lens - 1e-9)).astype(np.int64))
            starts = np.concatenate(([0], np.cumsum(lens)))
            order = np.lexsort((docs, -w, term))  # by term, weight descending, doc ascending
            rank = np.arange(w.size, dtype=np.int64) - starts[term[order]]
            mask = np.zeros(w.size, dtype=bool)
            mask[order] = rank < keep_n[term[order]]
            docs, q, term = docs[mask], q[mask], term[mask]
        indptr = np.concatenate(([0], np.cumsum(np.bincount(term, minlength=V)))).astype(np.int64)
        out = cls._with_blocks(indptr, docs, q, term, term_scale, bits=bits, block_size=block_size,
                               n_docs=n_docs, keep_fraction=keep_fraction, keep_top=keep_top)
        if fwd is not None:
            out.fwd_indptr, out.fwd_terms, out.fwd_impacts = fwd
        return out

    @classmethod
    def _with_blocks(cls, indptr, docs, impacts, term, term_scale, **meta) -> "ImpactIndex":
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
                   block_indptr, block_max, block_first, block_last, term_scale, **meta)

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
        """Bytes of the index arrays as saved, forward index included (what :meth:`save` writes, less the .npy
        headers and the JSON; in memory the per-term arrays are vocabulary-sized)."""
        arrays, _ = self._stored()
        return int(sum(a.nbytes for a in arrays.values()))

    @property
    def has_forward(self) -> bool:
        return self.fwd_indptr is not None

    @property
    def forward(self) -> tuple | None:
        """``(fwd_indptr, fwd_terms, fwd_impacts)`` or None."""
        return (self.fwd_indptr, self.fwd_terms, self.fwd_impacts) if self.has_forward else None

    def meta(self) -> dict:
        return {"format": FORMAT_VERSION, "bits": self.bits, "block_size": self.block_size,
                "n_docs": self.n_docs, "vocab_size": self.vocab_size, "nnz": self.nnz,
                "keep_fraction": self.keep_fraction, "keep_top": self.keep_top, "forward": self.has_forward}

    def _stored(self) -> tuple[dict, float]:
        """The arrays :meth:`save` writes ({name: array}, per-term ones for the present terms only) and the scale
        of the terms left out."""
        indptr, block_indptr = np.asarray(self.indptr), np.asarray(self.block_indptr)
        scale = np.asarray(self.term_scale, dtype=np.float32)
        lens = np.diff(indptr)
        absent = lens == 0
        fill = scale[np.argmax(absent)] if absent.any() else np.float32(0)
        # compared as bits: a term is kept when its scale is not exactly the fill
        present = ~absent | (scale.view(np.uint32) != np.float32(fill).view(np.uint32))
        terms = np.flatnonzero(present)
        out = {"terms": terms.astype(np.uint32),
               "indptr": np.concatenate(([0], np.cumsum(lens[terms]))).astype(np.int64),
               "block_indptr": np.concatenate(([0], np.cumsum(np.diff(block_indptr)[terms]))).astype(np.int64),
               "term_scale": np.ascontiguousarray(scale[terms])}
        for name in ARRAYS:
            if name not in out:
                out[name] = np.ascontiguousarray(getattr(self, name))
        if self.has_forward:
            out.update((name, np.ascontiguousarray(getattr(self, name))) for name in FWD_ARRAYS)
        return out, float(fill)

    def kernel_args(self) -> tuple:
        """The index arguments of the :mod:`hylex.kernels.blockmax` kernels, in their order:
        ``indptr, docs, impacts, block_indptr, block_max, block_first, block_last, term_scale, block_size,
        n_docs``."""
        return (self.indptr, self.docs, self.impacts, self.block_indptr, self.block_max, self.block_first,
                self.block_last, self.term_scale, self.block_size, self.n_docs)

    def dequantized(self) -> np.ndarray:
        """float32 (nnz,) dequantized weights ``impact * term_scale[term]`` (in posting order)."""
        term = np.repeat(np.arange(self.vocab_size), np.diff(np.asarray(self.indptr)))
        return np.asarray(self.impacts).astype(np.float32) * np.asarray(self.term_scale)[term]

    def to_csr(self) -> sp.csr_matrix:
        """Dequantized doc x vocab float32 csr (n_docs, V): every posting when there is a forward index, else the
        (possibly statically pruned) inverted postings."""
        if self.has_forward:
            terms = np.asarray(self.fwd_terms).astype(np.int64)
            data = np.asarray(self.fwd_impacts).astype(np.float32) * np.asarray(self.term_scale)[terms]
            return sp.csr_matrix((data, terms, np.asarray(self.fwd_indptr)), shape=(self.n_docs, self.vocab_size))
        csc = sp.csc_matrix((self.dequantized(), np.asarray(self.docs), np.asarray(self.indptr)),
                            shape=(self.n_docs, self.vocab_size))
        return csc.tocsr()

    # -----------------------------------------------------------------------------------------------------
    # search
    # -----------------------------------------------------------------------------------------------------

    def search(self, queries: Any, k: int, live: np.ndarray | None = None, *, query_cut: int | None = None,
               heap_factor: float = 1.0, candidates: int | None = None,
               window: int = DEFAULT_WINDOW) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by dot product with the quantized weights. ``queries`` csr (nq, V') float >= 0 -> (D float32,
        I int64 local rows), each (nq, k).

        Exact (:func:`~hylex.kernels.blockmax.impact_topk_exact`) with the defaults; otherwise approximate
        (:func:`~hylex.kernels.blockmax.impact_topk_approx`: ``query_cut``, ``heap_factor``, and with a forward
        index ``candidates`` docs rescored with the whole query). Query terms beyond the vocabulary are ignored.
        """
        q = sp.csr_matrix(queries, dtype=np.float32, copy=True)
        q.sum_duplicates()  # a term given twice counts once with the summed weight (also sorts the terms)
        args = (q.indptr.astype(np.int64), q.indices.astype(np.int64), q.data) + self.kernel_args()
        rows = self._selective(live, q)
        if rows is not None:  # few documents allowed: score them directly (exact, cheaper than the lists)
            return impact_topk_subset(args[0], args[1], args[2], self.term_scale, self.forward, rows, k)
        if query_cut is None and heap_factor == 1.0 and candidates is None:
            return impact_topk_exact(*args, k, live, window=window)
        return impact_topk_approx(*args, k, live, query_cut=query_cut, heap_factor=heap_factor, window=window,
                                  forward=self.forward, candidates=candidates)

    def _selective(self, live: np.ndarray | None, q: sp.csr_matrix) -> np.ndarray | None:
        """The allowed rows, when scoring them through the forward index reads fewer postings than the query's
        lists hold (per query, on average); None otherwise. Only without static pruning, where the forward index
        holds exactly the inverted postings (so the scores, hence the hits, are the exact search's)."""
        if live is None or not self.has_forward or self.keep_top is not None or self.keep_fraction is not None:
            return None
        rows = np.flatnonzero(np.asarray(live))
        if len(rows) * 4 > self.n_docs:
            return None
        fwd = np.asarray(self.fwd_indptr)
        subset_postings = int((fwd[rows + 1] - fwd[rows]).sum())
        terms = q.indices[q.indices < self.vocab_size]
        indptr = np.asarray(self.indptr)
        list_postings = int((indptr[terms + 1] - indptr[terms]).sum()) / max(1, q.shape[0])
        return rows if subset_postings <= list_postings else None

    # -----------------------------------------------------------------------------------------------------
    # persistence
    # -----------------------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> list[str]:
        """Write the arrays as ``.npy`` (no pickle; per-term arrays for the present terms only, format 3) and
        ``impact_meta.json``; returns the file names."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays, fill = self._stored()
        names = SAVED + (FWD_ARRAYS if self.has_forward else ())
        for name in names:
            np.save(d / f"impact_{name}.npy", arrays[name], allow_pickle=False)
        meta = {**self.meta(), "n_terms": int(len(arrays["terms"])), "term_scale_fill": fill}
        (d / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        return [f"impact_{name}.npy" for name in names] + [META_FILE]

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "ImpactIndex":
        """Open a saved index (arrays memory-mapped read-only unless ``mmap=False``)."""
        d = Path(directory)
        meta = json.loads((d / META_FILE).read_text())
        fmt = meta.get("format")
        if fmt not in READABLE_FORMATS or isinstance(fmt, bool):
            raise ValueError(f"unsupported impact index format {fmt!r} in {d}")
        mode = "r" if mmap else None
        arrays = {name: np.load(d / f"impact_{name}.npy", mmap_mode=mode, allow_pickle=False) for name in ARRAYS}
        if fmt == 3:
            arrays.update(_expand(d, meta, arrays))
        bits = int(meta["bits"])
        if bits not in _DTYPES or arrays["impacts"].dtype != _DTYPES[bits] or arrays["block_max"].dtype != _DTYPES[bits]:
            raise ValueError(f"impact arrays in {d} do not match bits={bits}")
        V = len(arrays["indptr"]) - 1
        if V != meta["vocab_size"] or len(arrays["block_indptr"]) != V + 1 or int(arrays["indptr"][-1]) != meta["nnz"]:
            raise ValueError(f"impact index arrays in {d} do not match its metadata")
        kf, kt = meta.get("keep_fraction"), meta.get("keep_top")
        if arrays["term_scale"].dtype != np.float32 or len(arrays["term_scale"]) != V:
            raise ValueError(f"impact term scales in {d} do not match its metadata")
        out = cls(**arrays, bits=bits, block_size=int(meta["block_size"]),
                  n_docs=int(meta["n_docs"]), keep_fraction=kf, keep_top=kt)
        if meta.get("forward"):
            fwd = [np.load(d / fname, mmap_mode=mode, allow_pickle=False) for fname in FWD_FILES]
            if (len(fwd[0]) != out.n_docs + 1 or fwd[0].dtype != np.int64 or len(fwd[1]) != len(fwd[2])
                    or fwd[2].dtype != _DTYPES[bits] or int(fwd[0][-1]) != len(fwd[1])):
                raise ValueError(f"forward index arrays in {d} do not match its metadata")
            out.fwd_indptr, out.fwd_terms, out.fwd_impacts = fwd
        return out

    def __repr__(self) -> str:
        return (f"ImpactIndex(n_docs={self.n_docs}, vocab_size={self.vocab_size}, nnz={self.nnz}, bits={self.bits}, "
                f"block_size={self.block_size}, n_blocks={self.n_blocks})")


def _expand(d: Path, meta: dict, arrays: dict) -> dict:
    """Format 3's per-term arrays (present terms only) as the vocabulary-sized arrays the kernels take."""
    terms = np.load(d / "impact_terms.npy", allow_pickle=False)
    V, T = meta["vocab_size"], meta["n_terms"]
    if not (isinstance(V, int) and isinstance(T, int) and 0 <= T <= V):
        raise ValueError(f"impact index metadata in {d} do not match its arrays (vocab_size, n_terms)")
    parts = {name: np.asarray(arrays[name]) for name in PER_TERM}
    if (terms.dtype != np.uint32 or terms.shape != (T,) or parts["indptr"].shape != (T + 1,)
            or parts["block_indptr"].shape != (T + 1,) or parts["term_scale"].shape != (T,)
            or parts["indptr"].dtype != np.int64 or parts["block_indptr"].dtype != np.int64
            or (T and (int(terms[-1]) >= V or (np.diff(terms.astype(np.int64)) <= 0).any()))
            or (np.diff(parts["indptr"]) < 0).any() or (np.diff(parts["block_indptr"]) < 0).any()
            or parts["indptr"][0] != 0 or parts["block_indptr"][0] != 0):
        raise ValueError(f"impact index per-term arrays in {d} do not match its metadata")
    fill = meta.get("term_scale_fill")
    if isinstance(fill, bool) or not isinstance(fill, (int, float)):
        raise ValueError(f"impact index metadata in {d} do not match its format (no term_scale_fill)")
    lens = np.zeros(V, dtype=np.int64)
    blens = np.zeros(V, dtype=np.int64)
    lens[terms] = np.diff(parts["indptr"])
    blens[terms] = np.diff(parts["block_indptr"])
    scale = np.full(V, np.float32(fill), dtype=parts["term_scale"].dtype)
    scale[terms] = parts["term_scale"]
    return {"indptr": np.concatenate(([0], np.cumsum(lens))).astype(np.int64),
            "block_indptr": np.concatenate(([0], np.cumsum(blens))).astype(np.int64), "term_scale": scale}


__all__ = ["FILES", "META_FILE", "ImpactIndex"]
