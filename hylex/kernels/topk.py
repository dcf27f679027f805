"""Top-k selection shared by the kernels, input checks, and merging of per-segment top-k lists.

Conventions shared by every kernel in :mod:`hylex.kernels`:

* results are ``D`` float32 ``(nq, k)`` and ``I`` int64 ``(nq, k)``;
* each row is sorted by score descending, ties broken by doc id ascending;
* a slot without a hit holds ``I == -1`` and ``D == -inf`` (the faiss convention); such slots are always
  at the end of the row;
* on input, any negative id marks a missing hit.

Kernels are written as plain NumPy-style Python and compiled with :func:`jit`, the one place that holds the
numba options, in a block at the end of each module (rather than with decorators); a compiled kernel's plain
twin stays reachable as ``.py_func``, and everything runs as Python under ``NUMBA_DISABLE_JIT=1``.
"""
from __future__ import annotations

from typing import Any, Callable

import numba
import numpy as np

MISSING_ID = -1
MISSING_SCORE = -np.inf

_JIT_OPTIONS = {"cache": True, "nogil": True}


def jit(fn: Callable[..., Any], *, parallel: bool = False) -> Any:
    """Compile ``fn`` with numba ``njit`` and the options every hylex kernel uses."""
    return numba.njit(parallel=parallel, **_JIT_OPTIONS)(fn)


# ---------------------------------------------------------------------------------------------------------
# input checks (shared by the public wrappers and the references, so both reject the same inputs)
# ---------------------------------------------------------------------------------------------------------


def check_k(k: Any) -> int:
    """Return ``k`` as an int; raise ValueError unless it is an integer >= 1."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def check_count(name: str, n: Any, *, upper: int | None = None) -> int:
    """Return ``n`` as an int; raise ValueError unless it is an integer in ``[0, upper]``."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if n < 0 or (upper is not None and n > upper):
        raise ValueError(f"{name} must be in [0, {upper if upper is not None else 'inf'}], got {n}")
    return int(n)


def as_array(name: str, a: Any, kind: str, ndim: int, dtype: Any) -> np.ndarray:
    """Return ``a`` as a C-contiguous array of ``dtype`` (no copy when it already is one).

    ``kind`` is ``"i"`` (integers accepted) or ``"f"`` (integers and floats accepted). Empty arrays of any
    numeric dtype pass, since ``np.asarray([])`` is float64.
    """
    a = np.asarray(a)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    allowed = "iu" if kind == "i" else "iuf"
    if a.dtype.kind not in allowed and not (a.size == 0 and a.dtype.kind in "iuf"):
        raise ValueError(f"{name} must have {'an integer' if kind == 'i' else 'a numeric'} dtype, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def check_indptr(name: str, indptr: np.ndarray, n: int) -> None:
    """Check a CSR-style pointer array: starts at 0, ends at ``n``, never decreases."""
    if indptr.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one entry (it has length n_rows + 1)")
    if indptr[0] != 0 or indptr[-1] != n:
        raise ValueError(f"{name} must start at 0 and end at {n} (the length of its data), "
                         f"got {indptr[0]} .. {indptr[-1]}")
    if indptr.shape[0] > 1 and np.any(indptr[1:] < indptr[:-1]):
        raise ValueError(f"{name} must be non-decreasing")

def check_post_docs(post_docs: Any, n_docs: int, name: str = "post_docs") -> np.ndarray:
    """Doc ids of postings as int32 (nnz,), checked before a narrowing cast could wrap bad ids into range."""
    raw = np.asarray(post_docs)
    if raw.dtype != np.int32 and raw.ndim == 1 and raw.size and raw.dtype.kind in "iu":
        if raw.min() < 0 or raw.max() >= n_docs:
            raise ValueError(f"{name} must hold doc ids in [0, n_docs={n_docs})")
    return as_array(name, raw, "i", 1, np.int32)


def check_queries(q_indptr: Any, q_terms: Any, q_weights: Any, weights_name: str = "q_weights",
                  terms_checked: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ragged weighted queries: int64 pointers, int64 term ids (>= 0 when ``terms_checked``), finite float32
    weights (named ``weights_name`` in errors)."""
    q_indptr = as_array("q_indptr", q_indptr, "i", 1, np.int64)
    q_terms = as_array("q_terms", q_terms, "i", 1, np.int64)
    q_weights = as_array(weights_name, q_weights, "f", 1, np.float32)
    if q_weights.shape[0] != q_terms.shape[0]:
        raise ValueError(f"{weights_name} and q_terms must have the same length, got {q_weights.shape[0]} "
                         f"and {q_terms.shape[0]}")
    check_indptr("q_indptr", q_indptr, q_terms.shape[0])
    if terms_checked and q_terms.size and q_terms.min() < 0:
        raise ValueError("q_terms must be >= 0")
    if not np.isfinite(q_weights).all():
        raise ValueError(f"{weights_name} must be finite")
    return q_indptr, q_terms, q_weights


def check_live(live: Any, n_docs: int) -> np.ndarray | None:
    """Optional live mask (n_docs,) bool/uint8 -> contiguous uint8, or None."""
    if live is None:
        return None
    live = np.asarray(live)
    if live.shape != (n_docs,):
        raise ValueError(f"live must have shape (n_docs,) = ({n_docs},), got {live.shape}")
    if live.dtype == np.bool_:
        live = live.view(np.uint8)
    elif live.dtype != np.uint8:
        raise ValueError(f"live must have dtype bool or uint8, got {live.dtype}")
    return np.ascontiguousarray(live)



# ---------------------------------------------------------------------------------------------------------
# size-k heap (numba): the root is the *worst* kept hit, so a candidate only has to beat the root
# ---------------------------------------------------------------------------------------------------------


def _worse(s1, d1, s2, d2):
    """Whether hit (s1, d1) ranks below hit (s2, d2): lower score, or same score and larger doc id."""
    return s1 < s2 or (s1 == s2 and d1 > d2)


def _heap_sift_down(hs, hd, i, size):
    s = hs[i]
    d = hd[i]
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and _worse(hs[c + 1], hd[c + 1], hs[c], hd[c]):
            c += 1
        if _worse(hs[c], hd[c], s, d):
            hs[i] = hs[c]
            hd[i] = hd[c]
            i = c
        else:
            break
    hs[i] = s
    hd[i] = d


def _heap_push(hs, hd, size, k, s, d):
    """Offer hit (s, d) to the heap ``hs`` float32 (k,), ``hd`` int64 (k,) holding ``size`` hits.

    Returns the new size. Doc ids offered must be distinct, which makes the order total.
    """
    if size < k:
        i = size
        while i > 0:
            p = (i - 1) // 2
            if _worse(s, d, hs[p], hd[p]):
                hs[i] = hs[p]
                hd[i] = hd[p]
                i = p
            else:
                break
        hs[i] = s
        hd[i] = d
        return size + 1
    if _worse(hs[0], hd[0], s, d):
        hs[0] = s
        hd[0] = d
        _heap_sift_down(hs, hd, 0, size)
    return size


def _heap_drain(hs, hd, size, out_s, out_d):
    """Write the heap's hits best-first into ``out_s[:size]``, ``out_d[:size]`` (destroys the heap)."""
    for end in range(size - 1, -1, -1):
        # the root is the worst hit left, so it goes last among those left
        out_s[end] = hs[0]
        out_d[end] = hd[0]
        hs[0] = hs[end]
        hd[0] = hd[end]
        _heap_sift_down(hs, hd, 0, end)


# ---------------------------------------------------------------------------------------------------------
# reference selection (plain Python sort), used by every *_ref
# ---------------------------------------------------------------------------------------------------------


def select_topk_ref(scores: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of distinct hits ``docs`` int (n,) with ``scores`` float32 (n,), padded to k.

    Returns D float32 (k,), I int64 (k,).
    """
    order = sorted(range(len(docs)), key=lambda i: (-float(scores[i]), int(docs[i])))[:k]
    D = np.full(k, MISSING_SCORE, dtype=np.float32)
    I = np.full(k, MISSING_ID, dtype=np.int64)
    D[: len(order)] = np.asarray(scores, dtype=np.float32)[order]
    I[: len(order)] = np.asarray(docs, dtype=np.int64)[order]
    return D, I


# ---------------------------------------------------------------------------------------------------------
# merge of top-k lists
# ---------------------------------------------------------------------------------------------------------


def _check_merge(D: Any, I: Any, k: Any) -> tuple[np.ndarray, np.ndarray, int]:
    k = check_k(k)
    D = as_array("D", D, "f", 2, np.float32)
    I = as_array("I", I, "i", 2, np.int64)
    if D.shape != I.shape:
        raise ValueError(f"D and I must have the same shape, got {D.shape} and {I.shape}")
    if not np.isfinite(D[I >= 0]).all():
        raise ValueError("D must be finite wherever I holds a hit (I >= 0)")
    return D, I, k


def merge_topk_ref(D: Any, I: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference of :func:`merge_topk`: one Python sort per row."""
    D, I, k = _check_merge(D, I, k)
    out_D = np.empty((D.shape[0], k), dtype=np.float32)
    out_I = np.empty((D.shape[0], k), dtype=np.int64)
    for q in range(D.shape[0]):
        hit = I[q] >= 0
        out_D[q], out_I[q] = select_topk_ref(D[q][hit], I[q][hit], k)
    return out_D, out_I


def merge_topk(D: Any, I: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row of concatenated top-k lists (e.g. one list per index segment).

    Args:
        D: float32 (nq, m) scores; entries where ``I < 0`` are ignored, whatever their score.
        I: int64 (nq, m) global doc ids, distinct within a row; negative means no hit.
        k: number of hits to keep per row, >= 1 (may exceed m: the rest is padding).

    Returns:
        D float32 (nq, k), I int64 (nq, k): score descending, ties by doc id ascending, padded with
        ``I == -1`` / ``D == -inf``.
    """
    D, I, k = _check_merge(D, I, k)
    nq, m = D.shape
    hit = I >= 0
    # missing entries sort after every hit: key +inf on the primary (negated score) key
    neg = np.where(hit, -D, np.float32(np.inf))
    ids = np.where(hit, I, np.iinfo(np.int64).max)
    order = np.lexsort((ids, neg), axis=1)[:, :k] if m else np.empty((nq, 0), dtype=np.intp)
    out_D = np.full((nq, k), MISSING_SCORE, dtype=np.float32)
    out_I = np.full((nq, k), MISSING_ID, dtype=np.int64)
    w = order.shape[1]
    sel_hit = np.take_along_axis(hit, order, axis=1)
    out_D[:, :w] = np.where(sel_hit, np.take_along_axis(D, order, axis=1), np.float32(MISSING_SCORE))
    out_I[:, :w] = np.where(sel_hit, np.take_along_axis(I, order, axis=1), MISSING_ID)
    return out_D, out_I


# ---------------------------------------------------------------------------------------------------------
# compilation
# ---------------------------------------------------------------------------------------------------------

_worse = jit(_worse)
_heap_sift_down = jit(_heap_sift_down)
_heap_push = jit(_heap_push)
_heap_drain = jit(_heap_drain)
