"""Term-at-a-time top-k retrieval over an inverted index (dot-product scoring).

Index layout (CSC-like, one posting list per vocabulary term; V terms, nnz postings):

* ``post_indptr`` int64 (V+1,): term t's postings are ``post_indptr[t]:post_indptr[t+1]``;
* ``post_docs`` int32 (nnz,): local doc rows in ``[0, n_docs)``, ascending within a term;
* ``post_weights`` float32 (nnz,): the doc's weight for the term (finite).

Queries are flattened ragged arrays: ``q_indptr`` int64 (nq+1,), ``q_terms`` int (total,),
``q_weights`` float32 (total,). Term ids >= V are outside the index's vocabulary and ignored.

score(q, d) = sum over q's terms t of ``q_weight[t] * doc_weight[t, d]``, accumulated in float32 in query
term order (the reference does the same, so both give bit-identical scores). Only docs with score > 0 are
hits, and ``live[d] == 0`` removes doc d. Results follow :mod:`hylex.kernels.topk`'s conventions.
"""
from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import prange

from hylex.kernels.topk import (
    MISSING_ID,
    MISSING_SCORE,
    _heap_drain,
    _heap_push,
    as_array,
    check_count,
    check_indptr,
    check_k,
    check_live,
    check_queries,
    check_post_docs,
    jit,
    select_topk_ref,
)

_INT32_MAX = int(np.iinfo(np.int32).max)


def _prepare(q_indptr, q_terms, q_weights, post_indptr, post_docs, post_weights, n_docs, k, live):
    """Validate and convert the inputs of :func:`sparse_topk`; raise ValueError on bad input."""
    k = check_k(k)
    n_docs = check_count("n_docs", n_docs, upper=_INT32_MAX)
    q_indptr, q_terms, q_weights = check_queries(q_indptr, q_terms, q_weights)

    post_indptr = as_array("post_indptr", post_indptr, "i", 1, np.int64)
    post_docs = check_post_docs(post_docs, n_docs)
    post_weights = as_array("post_weights", post_weights, "f", 1, np.float32)
    if post_weights.shape[0] != post_docs.shape[0]:
        raise ValueError(f"post_weights and post_docs must have the same length, got {post_weights.shape[0]} "
                         f"and {post_docs.shape[0]}")
    check_indptr("post_indptr", post_indptr, post_docs.shape[0])

    live = check_live(live, n_docs)
    return q_indptr, q_terms, q_weights, post_indptr, post_docs, post_weights, n_docs, k, live


def sparse_topk_ref(q_indptr: Any, q_terms: Any, q_weights: Any, post_indptr: Any, post_docs: Any,
                    post_weights: Any, n_docs: int, k: int, live: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Plain-NumPy reference of :func:`sparse_topk` (one dense accumulator and one sort per query)."""
    (q_indptr, q_terms, q_weights, post_indptr, post_docs, post_weights, n_docs, k,
     live) = _prepare(q_indptr, q_terms, q_weights, post_indptr, post_docs, post_weights, n_docs, k, live)
    nq = q_indptr.shape[0] - 1
    n_terms = post_indptr.shape[0] - 1
    if post_docs.size and (post_docs.min() < 0 or post_docs.max() >= n_docs):
        raise ValueError(f"post_docs must hold doc ids in [0, n_docs={n_docs})")
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    for q in range(nq):
        acc = np.zeros(n_docs, dtype=np.float32)
        for j in range(q_indptr[q], q_indptr[q + 1]):
            t = q_terms[j]
            if t >= n_terms:
                continue
            lo, hi = post_indptr[t], post_indptr[t + 1]
            # add.at: unbuffered, in posting order, float32 products as in the kernel
            np.add.at(acc, post_docs[lo:hi], q_weights[j] * post_weights[lo:hi])
        hit = acc > 0
        if live is not None:
            hit &= live != 0
        docs = np.flatnonzero(hit)
        D[q], I[q] = select_topk_ref(acc[docs], docs, k)
    return D, I


def _sparse_topk_kernel(q_indptr, q_terms, q_weights, post_indptr, post_docs, post_weights, n_docs, k,
                        live, use_live, cap, n_chunks, bad, out_D, out_I):
    """numba kernel; ``out_D``/``out_I`` come prefilled with padding, ``bad`` uint8 (n_chunks,) zeroed.

    Queries are dealt round-robin to ``n_chunks`` chunks (one per thread) so each chunk allocates its
    n_docs-sized buffers once and reuses them, resetting only the entries a query touched.
    """
    nq = q_indptr.shape[0] - 1
    n_terms = post_indptr.shape[0] - 1
    for c in prange(n_chunks):
        acc = np.zeros(n_docs, dtype=np.float32)
        seen = np.zeros(n_docs, dtype=np.uint8)  # a doc's acc may sum back to 0, so track touches apart
        touched = np.empty(cap, dtype=np.int32)  # cap = min(n_docs, most postings of one query)
        heap_s = np.empty(k, dtype=np.float32)
        heap_d = np.empty(k, dtype=np.int64)
        for q in range(c, nq, n_chunks):
            n_touched = 0
            for j in range(q_indptr[q], q_indptr[q + 1]):
                t = q_terms[j]
                if t >= n_terms:
                    continue
                qw = q_weights[j]
                for p in range(post_indptr[t], post_indptr[t + 1]):
                    d = post_docs[p]
                    if d < 0 or d >= n_docs:  # bad index: report instead of writing out of bounds
                        bad[c] = 1
                        continue
                    if seen[d] == 0:
                        seen[d] = 1
                        touched[n_touched] = d
                        n_touched += 1
                    acc[d] += qw * post_weights[p]
            size = 0
            for i in range(n_touched):
                d = touched[i]
                s = acc[d]
                acc[d] = 0.0
                seen[d] = 0
                if s > 0 and (not use_live or live[d] != 0):
                    size = _heap_push(heap_s, heap_d, size, k, s, d)
            _heap_drain(heap_s, heap_d, size, out_D[q], out_I[q])


def sparse_topk(q_indptr: Any, q_terms: Any, q_weights: Any, post_indptr: Any, post_docs: Any,
                post_weights: Any, n_docs: int, k: int, live: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k docs per query by dot product over an inverted index (numba, parallel over queries).

    Args:
        q_indptr: int64 (nq+1,) query pointers into ``q_terms`` / ``q_weights``.
        q_terms: int (total,) term ids >= 0; ids >= V (= len(post_indptr) - 1) are ignored.
        q_weights: float32 (total,) finite query term weights.
        post_indptr: int64 (V+1,) posting-list pointers.
        post_docs: int32 (nnz,) doc rows in [0, n_docs).
        post_weights: float32 (nnz,) finite doc term weights.
        n_docs: number of docs (rows) in the index.
        k: hits per query, >= 1.
        live: optional bool/uint8 (n_docs,); docs with ``live[d] == 0`` are never returned.

    Returns:
        D float32 (nq, k), I int64 (nq, k): hits are docs with score > 0, by score descending then doc id
        ascending; missing slots hold ``I == -1``, ``D == -inf``.

    Cost per query: the postings of its terms plus O(h log k) for its h touched docs; each thread
    allocates O(n_docs) once per call.
    """
    (q_indptr, q_terms, q_weights, post_indptr, post_docs, post_weights, n_docs, k,
     live) = _prepare(q_indptr, q_terms, q_weights, post_indptr, post_docs, post_weights, n_docs, k, live)
    nq = q_indptr.shape[0] - 1
    D = np.full((nq, k), MISSING_SCORE, dtype=np.float32)
    I = np.full((nq, k), MISSING_ID, dtype=np.int64)
    if nq == 0 or n_docs == 0:
        return D, I
    # the touched-docs buffer needs at most min(n_docs, postings walked by one query) slots
    n_terms = post_indptr.shape[0] - 1
    in_vocab = q_terms < n_terms
    lens = np.zeros(q_terms.shape[0], dtype=np.int64)
    t = q_terms[in_vocab]
    lens[in_vocab] = post_indptr[t + 1] - post_indptr[t]
    csum = np.concatenate((np.zeros(1, dtype=np.int64), np.cumsum(lens)))
    cap = int(min(n_docs, (csum[q_indptr[1:]] - csum[q_indptr[:-1]]).max()))
    if cap == 0:
        return D, I
    use_live = live is not None
    live_arr = live if use_live else np.ones(1, dtype=np.uint8)
    n_chunks = min(nq, numba.get_num_threads())
    bad = np.zeros(n_chunks, dtype=np.uint8)
    _sparse_topk_nb(q_indptr, q_terms, q_weights, post_indptr, post_docs, post_weights, n_docs, k,
                    live_arr, use_live, cap, n_chunks, bad, D, I)
    if bad.any():
        raise ValueError(f"post_docs must hold doc ids in [0, n_docs={n_docs})")
    return D, I


# ---------------------------------------------------------------------------------------------------------
# compilation
# ---------------------------------------------------------------------------------------------------------

_sparse_topk_nb = jit(_sparse_topk_kernel, parallel=True)
