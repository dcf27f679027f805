"""Term-at-a-time BM25 top-k retrieval over one segment's term-frequency postings.

Segment layout (CSC-like, one posting list per term of the segment's term table; T terms, nnz postings):

* ``post_indptr`` int64 (T+1,): term t's postings are ``post_indptr[t]:post_indptr[t+1]``;
* ``post_docs`` int32 (nnz,): local doc rows in ``[0, n_docs)``;
* ``post_tf`` float32 (nnz,): the term's count in the doc (finite, > 0);
* ``doc_len`` float32 (n_docs,): each doc's length in terms (finite, >= 0).

Queries are flattened ragged arrays: ``q_indptr`` int64 (nq+1,), ``q_terms`` int (total,) rows of the term
table or -1 for a term the segment lacks, ``q_idf`` float32 (total,). ``idf``, ``avgdl`` (and ``k1``, ``b``) come
from the caller, so a search over several segments scores with global statistics.

score(q, d) = sum over q's terms t of ``idf_t * tf / (tf + k1 * (1 - b + b * doc_len[d] / avgdl))`` (the Lucene /
bm25s form, without the constant ``(k1 + 1)`` factor). Each term's contribution is computed in float64 and
rounded to float32, then accumulated in float32 in query term order (the reference does the same, so both
give bit-identical scores). A repeated query term counts once per occurrence. Only docs with score > 0 are
hits, and ``live[d] == 0`` removes doc d. Results follow :mod:`hylex.kernels.topk`'s conventions.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

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
    check_post_docs,
    check_queries,
    compile_kernels,
    num_threads,
    ranges,
    select_topk_ref,
    select_topk_rows,
    use_numba,
)

prange = range  # numba.prange once the kernels are compiled (_compile)

_INT32_MAX = int(np.iinfo(np.int32).max)

# codes the kernel reports for bad postings it walks (the reference checks everything up front)
_BAD_DOC, _BAD_TF, _BAD_LEN = 1, 2, 4
_BAD_MESSAGES = {
    _BAD_DOC: "post_docs must hold doc ids in [0, n_docs={n_docs})",
    _BAD_TF: "post_tf must be finite and > 0",
    _BAD_LEN: "doc_len must be finite and >= 0",
}


def _check_scalar(name: str, v: Any, ok, what: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number {what}, got {v!r}")
    v = float(v)
    if not (math.isfinite(v) and ok(v)):
        raise ValueError(f"{name} must be a finite number {what}, got {v}")
    return v


def _prepare(q_indptr, q_terms, q_idf, post_indptr, post_docs, post_tf, doc_len, k1, b, avgdl, n_docs, k, live):
    """Validate and convert the inputs of :func:`bm25_topk`; raise ValueError on bad input."""
    k = check_k(k)
    n_docs = check_count("n_docs", n_docs, upper=_INT32_MAX)
    k1 = _check_scalar("k1", k1, lambda v: v > 0, "> 0")
    b = _check_scalar("b", b, lambda v: 0 <= v <= 1, "in [0, 1]")
    avgdl = _check_scalar("avgdl", avgdl, lambda v: v > 0, "> 0")
    # term ids here are rows of the segment's term table or -1 (absent): checked against the table below
    q_indptr, q_terms, q_idf = check_queries(q_indptr, q_terms, q_idf, "q_idf", terms_checked=False)

    post_indptr = as_array("post_indptr", post_indptr, "i", 1, np.int64)
    n_terms = post_indptr.shape[0] - 1
    if q_terms.size and (q_terms.min() < -1 or q_terms.max() >= n_terms):
        raise ValueError(f"q_terms must be rows of the term table in [0, {n_terms}) or -1 (absent)")
    post_docs = check_post_docs(post_docs, n_docs)
    post_tf = as_array("post_tf", post_tf, "f", 1, np.float32)
    if post_tf.shape[0] != post_docs.shape[0]:
        raise ValueError(f"post_tf and post_docs must have the same length, got {post_tf.shape[0]} and "
                         f"{post_docs.shape[0]}")
    check_indptr("post_indptr", post_indptr, post_docs.shape[0])
    doc_len = as_array("doc_len", doc_len, "f", 1, np.float32)
    if doc_len.shape != (n_docs,):
        raise ValueError(f"doc_len must have shape (n_docs,) = ({n_docs},), got {doc_len.shape}")

    live = check_live(live, n_docs)
    return (q_indptr, q_terms, q_idf, post_indptr, post_docs, post_tf, doc_len, k1, b, avgdl, n_docs, k, live)


def bm25_topk_ref(q_indptr: Any, q_terms: Any, q_idf: Any, post_indptr: Any, post_docs: Any, post_tf: Any,
                  doc_len: Any, k1: float, b: float, avgdl: float, n_docs: int, k: int,
                  live: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Plain-NumPy reference of :func:`bm25_topk` (one dense accumulator and one sort per query)."""
    (q_indptr, q_terms, q_idf, post_indptr, post_docs, post_tf, doc_len, k1, b, avgdl, n_docs, k,
     live) = _prepare(q_indptr, q_terms, q_idf, post_indptr, post_docs, post_tf, doc_len, k1, b, avgdl, n_docs,
                      k, live)
    if post_docs.size and (post_docs.min() < 0 or post_docs.max() >= n_docs):
        raise ValueError(_BAD_MESSAGES[_BAD_DOC].format(n_docs=n_docs))
    if post_tf.size and not (np.isfinite(post_tf).all() and (post_tf > 0).all()):
        raise ValueError(_BAD_MESSAGES[_BAD_TF])
    if doc_len.size and not (np.isfinite(doc_len).all() and (doc_len >= 0).all()):
        raise ValueError(_BAD_MESSAGES[_BAD_LEN])
    nq = q_indptr.shape[0] - 1
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    for q in range(nq):
        acc = np.zeros(n_docs, dtype=np.float32)
        for j in range(q_indptr[q], q_indptr[q + 1]):
            t = q_terms[j]
            if t < 0:
                continue
            lo, hi = post_indptr[t], post_indptr[t + 1]
            docs = post_docs[lo:hi]
            tf = post_tf[lo:hi].astype(np.float64)
            norm = k1 * ((1.0 - b) + b * doc_len[docs].astype(np.float64) / avgdl)
            contrib = (np.float64(q_idf[j]) * (tf / (norm + tf))).astype(np.float32)
            np.add.at(acc, docs, contrib)  # unbuffered, in posting order, as in the kernel
        hit = acc > 0
        if live is not None:
            hit &= live != 0
        docs = np.flatnonzero(hit)
        D[q], I[q] = select_topk_ref(acc[docs], docs, k)
    return D, I


def _bm25_topk_kernel(q_indptr, q_terms, q_idf, post_indptr, post_docs, post_tf, norm, n_docs, k, live, use_live,
                      cap, n_chunks, bad, out_D, out_I):
    """numba kernel; ``out_D``/``out_I`` come prefilled with padding, ``bad`` uint8 (n_chunks,) zeroed.

    ``norm`` float64 (n_docs,) is each doc's ``k1 * ((1 - b) + b * doc_len / avgdl)`` (NaN for a bad length).
    Queries are dealt round-robin to ``n_chunks`` chunks (one per thread) so each chunk allocates its
    n_docs-sized buffers once and reuses them, resetting only the entries a query touched.
    """
    nq = q_indptr.shape[0] - 1
    for c in prange(n_chunks):
        acc = np.zeros(n_docs, dtype=np.float32)
        seen = np.zeros(n_docs, dtype=np.uint8)
        touched = np.empty(cap, dtype=np.int32)
        heap_s = np.empty(k, dtype=np.float32)
        heap_d = np.empty(k, dtype=np.int64)
        for q in range(c, nq, n_chunks):
            n_touched = 0
            for j in range(q_indptr[q], q_indptr[q + 1]):
                t = q_terms[j]
                if t < 0:
                    continue
                idf = np.float64(q_idf[j])
                for p in range(post_indptr[t], post_indptr[t + 1]):
                    d = post_docs[p]
                    if d < 0 or d >= n_docs:  # bad index: report instead of writing out of bounds
                        bad[c] |= 1
                        continue
                    tf = np.float64(post_tf[p])
                    nd = norm[d]
                    if not (tf > 0.0 and tf < np.inf):
                        bad[c] |= 2
                        continue
                    if not (nd >= 0.0 and nd < np.inf):
                        bad[c] |= 4
                        continue
                    if seen[d] == 0:
                        seen[d] = 1
                        touched[n_touched] = d
                        n_touched += 1
                    acc[d] += np.float32(idf * (tf / (nd + tf)))
            size = 0
            for i in range(n_touched):
                d = touched[i]
                s = acc[d]
                acc[d] = 0.0
                seen[d] = 0
                if s > 0 and (not use_live or live[d] != 0):
                    size = _heap_push(heap_s, heap_d, size, k, s, d)
            _heap_drain(heap_s, heap_d, size, out_D[q], out_I[q])


def bm25_topk(q_indptr: Any, q_terms: Any, q_idf: Any, post_indptr: Any, post_docs: Any, post_tf: Any,
              doc_len: Any, k1: float, b: float, avgdl: float, n_docs: int, k: int,
              live: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k docs per query by BM25 over one segment's postings (numba, parallel over queries).

    Args:
        q_indptr: int64 (nq+1,) query pointers into ``q_terms`` / ``q_idf``.
        q_terms: int (total,) rows of the segment's term table in [0, T), or -1 for an absent term.
        q_idf: float32 (total,) finite idf of each query term (global, from the caller).
        post_indptr: int64 (T+1,) posting-list pointers.
        post_docs: int32 (nnz,) doc rows in [0, n_docs).
        post_tf: float32 (nnz,) term counts, finite and > 0.
        doc_len: float32 (n_docs,) doc lengths in terms, finite and >= 0.
        k1: term-frequency saturation, > 0.
        b: length normalisation, in [0, 1].
        avgdl: average doc length (global, from the caller), > 0.
        n_docs: number of docs (rows) in the segment.
        k: hits per query, >= 1.
        live: optional bool/uint8 (n_docs,); docs with ``live[d] == 0`` are never returned.

    Returns:
        D float32 (nq, k), I int64 (nq, k): hits are docs with score > 0, by score descending then doc id
        ascending; missing slots hold ``I == -1``, ``D == -inf``.
    """
    (q_indptr, q_terms, q_idf, post_indptr, post_docs, post_tf, doc_len, k1, b, avgdl, n_docs, k,
     live) = _prepare(q_indptr, q_terms, q_idf, post_indptr, post_docs, post_tf, doc_len, k1, b, avgdl, n_docs,
                      k, live)
    nq = q_indptr.shape[0] - 1
    D = np.full((nq, k), MISSING_SCORE, dtype=np.float32)
    I = np.full((nq, k), MISSING_ID, dtype=np.int64)
    if nq == 0 or n_docs == 0:
        return D, I
    # the touched-docs buffer needs at most min(n_docs, postings walked by one query) slots
    present = q_terms >= 0
    lens = np.zeros(q_terms.shape[0], dtype=np.int64)
    t = q_terms[present]
    lens[present] = post_indptr[t + 1] - post_indptr[t]
    csum = np.concatenate((np.zeros(1, dtype=np.int64), np.cumsum(lens)))
    cap = int(min(n_docs, (csum[q_indptr[1:]] - csum[q_indptr[:-1]]).max()))
    if cap == 0:
        return D, I
    use_live = live is not None
    live_arr = live if use_live else np.ones(1, dtype=np.uint8)
    # the length part of the denominator, once per doc (the same float64 operations as the reference); a
    # negative or non-finite length gives a negative or NaN norm, which the kernel reports if it meets it
    with np.errstate(invalid="ignore", over="ignore"):
        norm = k1 * ((1.0 - b) + b * doc_len.astype(np.float64) / avgdl)
    norm[~(doc_len >= 0)] = np.nan
    if not use_numba(nq * n_docs + int(csum[-1]), __name__):  # small: the NumPy twin, the same floats and order
        codes = _bm25_topk_np(q_indptr, q_terms, q_idf, post_indptr, post_docs, post_tf, norm, n_docs, k, live,
                              D, I)
    else:
        _compile()
        n_chunks = min(nq, num_threads())
        bad = np.zeros(n_chunks, dtype=np.uint8)
        _bm25_topk_nb(q_indptr, q_terms, q_idf, post_indptr, post_docs, post_tf, norm, n_docs, k, live_arr,
                      use_live, cap, n_chunks, bad, D, I)
        codes = int(np.bitwise_or.reduce(bad))
    for code in (_BAD_DOC, _BAD_TF, _BAD_LEN):
        if codes & code:
            raise ValueError(_BAD_MESSAGES[code].format(n_docs=n_docs))
    return D, I


def _bm25_topk_np(q_indptr, q_terms, q_idf, post_indptr, post_docs, post_tf, norm, n_docs, k, live, out_D,
                  out_I) -> int:
    """NumPy twin of :func:`_bm25_topk_kernel` (small workloads): writes the same (D, I) into ``out_D`` /
    ``out_I`` and returns the codes of the bad postings it walked (the kernel's ``bad``, OR-ed), computing each
    contribution with the same float64 operations and adding them into float32 accumulators in the same order
    (``np.add.at`` is unbuffered and follows the postings' order: query term by query term)."""
    nq = q_indptr.shape[0] - 1
    qid = np.repeat(np.arange(nq, dtype=np.int64), np.diff(q_indptr))
    present = q_terms >= 0
    t = q_terms[present]
    pos, owner = ranges(post_indptr[t], post_indptr[t + 1])
    d = post_docs[pos].astype(np.int64)
    tf = post_tf[pos].astype(np.float64)
    ok_doc = (d >= 0) & (d < n_docs)
    nd = norm[np.where(ok_doc, d, 0)]
    ok_tf = (tf > 0.0) & (tf < np.inf)
    ok_len = (nd >= 0.0) & (nd < np.inf)
    # as the kernel: a bad doc id is reported (tf and length unchecked), else a bad tf, else a bad length
    codes = (_BAD_DOC if not ok_doc.all() else 0) | (_BAD_TF if not (ok_tf | ~ok_doc).all() else 0) | \
        (_BAD_LEN if not (ok_len | ~(ok_doc & ok_tf)).all() else 0)
    good = ok_doc & ok_tf & ok_len
    idf = q_idf[present][owner].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        contrib = (idf * (tf / (nd + tf))).astype(np.float32)
    acc = np.zeros(nq * n_docs, dtype=np.float32)
    np.add.at(acc, (qid[present][owner] * n_docs + d)[good], contrib[good])
    acc = acc.reshape(nq, n_docs)
    valid = acc > 0
    if live is not None:
        valid &= (live != 0)[None, :]
    out_D[:], out_I[:] = select_topk_rows(acc, valid, out_D.shape[1])
    return codes


# ---------------------------------------------------------------------------------------------------------
# compilation (on first use: see hylex.kernels.topk)
# ---------------------------------------------------------------------------------------------------------

_KERNELS = (("_bm25_topk_nb", "_bm25_topk_kernel", True),)
_bm25_topk_nb: Any = None


def _compile() -> None:
    """Import numba and compile this module's kernel (once; its machine code comes from numba's cache)."""
    compile_kernels(globals(), _KERNELS)
