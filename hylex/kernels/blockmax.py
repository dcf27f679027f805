"""Top-k over an impact-quantized, block-partitioned inverted index: exact windowed block-max MaxScore on integer
scores, and an approximate mode with Seismic's ``query_cut`` and a heap factor.

Index layout (built by :class:`hylex.indexing.impact.ImpactIndex`; V terms, nnz postings, nb blocks):

* ``indptr`` int64 (V+1,), ``docs`` int32 (nnz,) doc rows in ``[0, n_docs)`` strictly ascending within a term,
  ``impacts`` uint8 or uint16 (nnz,) quantized weights (> 0);
* ``block_indptr`` int64 (V+1,): term t's blocks are ``block_indptr[t]:block_indptr[t+1]``, one per
  ``block_size`` consecutive postings (so ``ceil(len_t / block_size)`` of them);
* ``block_max`` (impacts' dtype), ``block_first``, ``block_last`` int32 (nb,): each block's largest impact and its
  first / last doc id;
* ``term_scale`` float32 (V,): per-term dequantization factors, a posting's weight is
  ``impact * term_scale[term]``.

The kernels trust the block arrays to describe the postings (the wrappers check shapes and block counts, not
every block's maximum); wrong maxima or unsorted docs give wrong results, never out-of-bounds accesses.

Queries are flattened ragged arrays: ``q_indptr`` int64 (nq+1,), ``q_terms``
int (total,) >= 0 (ids >= V are ignored), ``q_weights`` float32 (total,) finite and >= 0.

**Integer scores.** The term scales are folded into the query: ``v_t = w_t * term_scale[t]``, and each
query's ``v`` are quantized to 16 bits against the query's own largest: ``qi = rint(v / vmax * 65535)`` (see
:func:`quantize_queries`). A document's score is the exact integer ``sum_t qi_t * impact_{t,d}`` (int64, so the
order of summation cannot matter); the returned float32 score is ``score * vmax / 65535``. "Exact" therefore means: the same top-k as brute force over the quantized
document and query weights, ties (equal integers) broken by doc id ascending, bit for bit
(:func:`impact_topk_ref`). Only docs with score > 0 are hits; ``live[d] == 0`` removes doc d. Results follow
:mod:`hylex.kernels.topk`'s conventions (score desc, doc id asc, -1 / -inf padding).

Algorithm (:func:`impact_topk_exact`), per query, **windowed MaxScore with block-max bounds** (the scheme of
Lucene's MaxScoreBulkScorer): the doc id range is walked in windows of ``window`` ids.

1. For each window, each query term's bound is ``qi * (largest block_max among its blocks overlapping the
   window)`` (0 if none). If the heap holds k hits and the bounds sum to at most ``theta`` (the k-th score), no
   doc of the window can enter: it is skipped without touching a posting.
2. Otherwise terms are sorted by bound; the longest prefix whose bounds sum to at most ``theta`` is
   *non-essential* (a doc found only in those lists cannot beat the k-th hit: equal scores lose too, since docs
   come in ascending id order). The *essential* lists' postings in the window are added into a window-sized
   int64 accumulator (term-at-a-time, cache-resident).
3. Each accumulated doc (in id order) whose partial score plus the non-essential bounds exceeds ``theta`` is
   completed by probing the non-essential lists, largest bound first (cursor seeks block by block, then inside
   one block), stopping as soon as ``partial + remaining bounds <= theta``. A completed doc above ``theta``
   enters the heap and ``theta`` rises.

Approximate mode (:func:`impact_topk_approx`), Seismic's family of knobs:

* ``query_cut``: each query keeps only its ``query_cut`` heaviest terms (largest weight, ties by position;
  in-vocabulary terms with postings only), as Seismic visits only the lists of a query's top components. Scores
  are those of the truncated query.
* ``heap_factor`` (>= 1): every pruning test of steps 1-3 compares a bound with ``heap_factor * theta`` instead
  of ``theta``, so windows, lists and candidates whose bound is within that factor of the k-th score are
  skipped. 1 is exact; above 1 is faster and may miss hits, whose scores stay exact. (Seismic's own
  ``heap_factor`` < 1 widens the search instead, because its block summaries *under*-estimate; block maxima
  here never do.)
* static pruning of each term's postings (``keep_top`` / ``keep_fraction``) is a build option of
  :class:`hylex.indexing.impact.ImpactIndex`.

With ``query_cut=None`` and ``heap_factor=1.0`` the approximate kernel is the exact one.
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
    select_topk_hits,
    select_topk_rows,
    use_numba,
)

prange = range  # numba.prange once the kernels are compiled (_compile)

_INT32_MAX = int(np.iinfo(np.int32).max)
_IMPACT_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
_BAD_DOCS = "docs must hold doc ids in [0, n_docs={n_docs})"


# ---------------------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------------------


def _check_uint(name: str, a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1 or a.dtype not in _IMPACT_DTYPES:
        raise ValueError(f"{name} must be a 1-D uint8 or uint16 array, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def _prepare(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first,
             block_last, term_scale, block_size, n_docs, k, live):
    """Validate and convert the inputs of the kernels; raise ValueError on bad input."""
    k = check_k(k)
    n_docs = check_count("n_docs", n_docs, upper=_INT32_MAX)
    q_indptr, q_terms, q_weights = check_queries(q_indptr, q_terms, q_weights)
    if q_weights.size and q_weights.min() < 0:
        raise ValueError("q_weights must be >= 0 (block-max bounds assume non-negative query weights)")

    indptr = as_array("indptr", indptr, "i", 1, np.int64)
    docs = check_post_docs(docs, n_docs, "docs")
    impacts = _check_uint("impacts", impacts)
    if impacts.shape[0] != docs.shape[0]:
        raise ValueError(f"impacts and docs must have the same length, got {impacts.shape[0]} and {docs.shape[0]}")
    check_indptr("indptr", indptr, docs.shape[0])

    block_indptr = as_array("block_indptr", block_indptr, "i", 1, np.int64)
    block_max = _check_uint("block_max", block_max)
    if block_max.dtype != impacts.dtype:
        raise ValueError(f"block_max must have the dtype of impacts ({impacts.dtype}), got {block_max.dtype}")
    block_first = as_array("block_first", block_first, "i", 1, np.int32)
    block_last = as_array("block_last", block_last, "i", 1, np.int32)
    nb = block_max.shape[0]
    if block_first.shape[0] != nb or block_last.shape[0] != nb:
        raise ValueError(f"block_first and block_last must have the length of block_max ({nb}), got "
                         f"{block_first.shape[0]} and {block_last.shape[0]}")
    if block_indptr.shape[0] != indptr.shape[0]:
        raise ValueError(f"block_indptr must have the length of indptr ({indptr.shape[0]}), got "
                         f"{block_indptr.shape[0]}")
    check_indptr("block_indptr", block_indptr, nb)
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    block_size = int(block_size)
    if not np.array_equal(np.diff(block_indptr), -(-np.diff(indptr) // block_size)):
        raise ValueError("block_indptr must give each term ceil(postings / block_size) blocks")
    term_scale = as_array("term_scale", term_scale, "f", 1, np.float32)
    if term_scale.shape[0] != indptr.shape[0] - 1:
        raise ValueError(f"term_scale must hold one factor per term ({indptr.shape[0] - 1}), got "
                         f"{term_scale.shape[0]}")
    if not (np.isfinite(term_scale).all() and (term_scale >= 0).all()):
        raise ValueError("term_scale must be finite and >= 0")

    live = check_live(live, n_docs)
    return (q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first, block_last,
            term_scale, block_size, n_docs, k, live)


def _check_approx(query_cut: Any, heap_factor: Any) -> tuple[int, float]:
    if query_cut is not None and (isinstance(query_cut, (bool, np.bool_)) or
                                  not isinstance(query_cut, (int, np.integer)) or query_cut < 1):
        raise ValueError(f"query_cut must be None or an integer >= 1, got {query_cut!r}")
    if isinstance(heap_factor, (bool, np.bool_)) or not isinstance(heap_factor, (int, float, np.integer, np.floating)):
        raise ValueError(f"heap_factor must be a number >= 1, got {heap_factor!r}")
    heap_factor = float(heap_factor)
    if not (math.isfinite(heap_factor) and heap_factor >= 1):
        raise ValueError(f"heap_factor must be finite and >= 1 (1 is exact, larger prunes more), got {heap_factor}")
    return (-1 if query_cut is None else int(query_cut)), heap_factor


def _cut_queries(q_indptr, q_terms, q_weights, indptr, query_cut):
    """Keep, per query, only its ``query_cut`` heaviest usable terms (in the vocabulary, with postings; largest
    weight first, ties by position), in their original order. Returns the new ragged arrays. The weights are the
    quantized ones, which fold in the term scales: a term's weight times its largest document weight."""
    nq = q_indptr.shape[0] - 1
    total = q_terms.shape[0]
    n_terms = indptr.shape[0] - 1
    qid = np.repeat(np.arange(nq, dtype=np.int64), np.diff(q_indptr))
    usable = q_terms < n_terms
    t = q_terms[usable]
    usable[usable] = indptr[t + 1] > indptr[t]
    order = np.lexsort((np.arange(total), -q_weights, ~usable, qid))  # per query: usable, heaviest, first
    rank = np.arange(total, dtype=np.int64) - q_indptr[qid[order]]
    keep = np.zeros(total, dtype=bool)
    keep[order] = (rank < query_cut) & usable[order]
    new_indptr = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum(np.bincount(qid[keep], minlength=nq), out=new_indptr[1:])
    return new_indptr, q_terms[keep], q_weights[keep]




QUERY_LEVELS = 65535  # query weights are quantized to 16 bits (see the module docstring)


def quantize_queries(q_indptr: np.ndarray, q_terms: np.ndarray, q_weights: np.ndarray,
                     term_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold the term scales into the queries and quantize each query against its largest folded weight.

    Args:
        q_indptr: int64 (nq+1,); q_terms: int64 (total,) >= 0; q_weights: float32 (total,) >= 0;
        term_scale: float32 (V,). Terms >= V get 0.
    Returns:
        qi int64 (total,) in [0, 65535], and q_scale float64 (nq,) = ``vmax / 65535`` (0 for a query without a
        positive folded weight), so that ``w * term_scale[t] ~= qi * q_scale``.
    """
    nq = q_indptr.shape[0] - 1
    V = term_scale.shape[0]
    inside = q_terms < V
    v = np.zeros(q_terms.shape[0], dtype=np.float64)
    v[inside] = q_weights[inside].astype(np.float64) * term_scale[q_terms[inside]].astype(np.float64)
    counts = np.diff(q_indptr)
    vmax = np.zeros(nq, dtype=np.float64)
    nonempty = counts > 0
    if v.size:
        vmax[nonempty] = np.maximum.reduceat(v, q_indptr[:-1][nonempty])
    q_scale = vmax / QUERY_LEVELS
    per = np.repeat(q_scale, counts)
    qi = np.zeros(v.shape[0], dtype=np.float64)
    pos = per > 0
    qi[pos] = np.rint(v[pos] / per[pos])
    return np.clip(qi, 0, QUERY_LEVELS).astype(np.int64), q_scale


def _to_float(S: np.ndarray, I: np.ndarray, q_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer scores int64 (nq, k) -> (D float32 (nq, k), I), ``-inf`` where ``I == -1``. Integers above 2**24
    can round to one float32: rows are re-sorted by (D desc, I asc) so the shared tie convention holds."""
    D = (S.astype(np.float64) * q_scale[:, None]).astype(np.float32)
    D[I < 0] = MISSING_SCORE
    order = np.lexsort((I, -D))
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)


# ---------------------------------------------------------------------------------------------------------
# reference
# ---------------------------------------------------------------------------------------------------------


def impact_topk_ref(q_indptr: Any, q_terms: Any, q_weights: Any, indptr: Any, docs: Any, impacts: Any,
                    block_indptr: Any, block_max: Any, block_first: Any, block_last: Any, term_scale: Any,
                    block_size: int, n_docs: int, k: int, live: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Plain-NumPy reference of :func:`impact_topk_exact`: brute force over the quantized postings and queries
    (one int64 accumulator and one sort per query; the block arrays are validated but not used)."""
    (q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first, block_last, term_scale,
     block_size, n_docs, k, live) = _prepare(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr,
                                             block_max, block_first, block_last, term_scale, block_size, n_docs, k, live)
    if docs.size and (docs.min() < 0 or docs.max() >= n_docs):
        raise ValueError(_BAD_DOCS.format(n_docs=n_docs))
    qi, q_scale = quantize_queries(q_indptr, q_terms, q_weights, term_scale)
    nq = q_indptr.shape[0] - 1
    n_terms = indptr.shape[0] - 1
    S = np.zeros((nq, k), dtype=np.int64)
    I = np.full((nq, k), MISSING_ID, dtype=np.int64)
    for q in range(nq):
        acc = np.zeros(n_docs, dtype=np.int64)
        for j in range(q_indptr[q], q_indptr[q + 1]):
            t = q_terms[j]
            if t >= n_terms:
                continue
            lo, hi = indptr[t], indptr[t + 1]
            acc[docs[lo:hi]] += qi[j] * impacts[lo:hi].astype(np.int64)  # doc ids are distinct within a list
        hit = acc > 0
        if live is not None:
            hit &= live != 0
        rows = np.flatnonzero(hit)
        order = np.lexsort((rows, -acc[rows]))[:k]
        S[q, :len(order)] = acc[rows[order]]
        I[q, :len(order)] = rows[order]
    return _to_float(S, I, q_scale)


# ---------------------------------------------------------------------------------------------------------
# numba kernel
# ---------------------------------------------------------------------------------------------------------


def _seek(docs, block_last, pos, bp, p_lo, p_end, b_lo, b_end, block_size, i, target):
    """Move cursor ``i`` to its first posting with doc >= ``target``: block by block, then inside one block
    (binary search)."""
    p = pos[i]
    pe = p_end[i]
    # candidates come in doc order, so the target is often a few postings ahead: try a short linear walk first
    stop = p + 8
    if stop > pe:
        stop = pe
    while p < stop:
        if docs[p] >= target:
            pos[i] = p
            return
        p += 1
    if p >= pe:
        pos[i] = pe
        return
    b = bp[i]
    be = b_end[i]
    while b < be and block_last[b] < target:
        b += 1
    bp[i] = b
    if b == be:
        pos[i] = pe
        return
    lo = p_lo[i] + (b - b_lo[i]) * block_size
    if lo < p:
        lo = p
    hi = lo + block_size
    if hi > pe:
        hi = pe
    # docs[hi - 1] = block_last[b] >= target: the answer lies in [lo, hi)
    while lo < hi:
        mid = (lo + hi) >> 1
        if docs[mid] < target:
            lo = mid + 1
        else:
            hi = mid
    pos[i] = lo


def _impact_topk_kernel(q_indptr, q_terms, qi, indptr, docs, impacts, block_indptr, block_max, block_first,
                        block_last, block_size, n_docs, k, live, use_live, heap_factor, window, max_m, n_chunks,
                        bad, out_S, out_I):
    """numba kernel (windowed block-max MaxScore, see the module docstring) on int64 query weights ``qi``;
    ``out_S`` int64 / ``out_I`` int64 (nq, k) come prefilled (0 / -1), ``bad`` uint8 (n_chunks,) zeroed. Queries
    are dealt round-robin to ``n_chunks`` chunks (one per thread), each allocating its buffers once."""
    nq = q_indptr.shape[0] - 1
    n_terms = indptr.shape[0] - 1
    for c in prange(n_chunks):
        acc = np.zeros(window, dtype=np.int64)
        bits = np.zeros((window + 63) >> 6, dtype=np.uint64)  # which acc entries a window touched
        slot = np.full(window, -1, dtype=np.int64)  # window offset -> candidate index, -1 if none
        cand = np.empty(window, dtype=np.int64)
        cs = np.empty(window, dtype=np.int64)
        nblk = np.zeros(max_m, dtype=np.int64)
        w = np.empty(max_m, dtype=np.int64)
        ub = np.empty(max_m, dtype=np.int64)
        pos = np.empty(max_m, dtype=np.int64)
        p_lo = np.empty(max_m, dtype=np.int64)
        p_end = np.empty(max_m, dtype=np.int64)
        bp = np.empty(max_m, dtype=np.int64)
        b_lo = np.empty(max_m, dtype=np.int64)
        b_end = np.empty(max_m, dtype=np.int64)
        order = np.empty(max_m, dtype=np.int64)
        cum = np.empty(max_m + 1, dtype=np.int64)
        heap_s = np.empty(k, dtype=np.int64)
        heap_d = np.empty(k, dtype=np.int64)
        for q in range(c, nq, n_chunks):
            m = 0
            first = np.int64(n_docs)
            last = np.int64(0)
            for j in range(q_indptr[q], q_indptr[q + 1]):
                t = q_terms[j]
                if t >= n_terms or qi[j] <= 0:
                    continue
                lo = indptr[t]
                hi = indptr[t + 1]
                if hi <= lo:
                    continue
                if docs[lo] < 0 or docs[hi - 1] >= n_docs:  # bad ids: report instead of indexing out of bounds
                    bad[c] = 1
                    continue
                w[m] = qi[j]
                pos[m] = lo
                p_lo[m] = lo
                p_end[m] = hi
                bp[m] = block_indptr[t]
                b_lo[m] = block_indptr[t]
                b_end[m] = block_indptr[t + 1]
                if docs[lo] < first:
                    first = docs[lo]
                if docs[hi - 1] + 1 > last:
                    last = docs[hi - 1] + 1
                m += 1
            size = 0
            theta = np.int64(0)  # the k-th score once the heap is full
            thr = np.int64(0)  # the pruning threshold: theta, or floor(heap_factor * theta)
            base = first
            # windows start small and double up to ``window``: the first ones run before the heap is full (no
            # pruning), so a small first window sets theta early
            cur = 1024 if window > 1024 else window
            while base < last:
                end = base + cur
                if cur < window:
                    cur = cur * 2 if cur * 2 < window else window
                if end > last:
                    end = last
                full = size == k
                # 1. each term's bound over this window, from the maxima of its blocks overlapping it
                total = np.int64(0)
                for i in range(m):
                    b = bp[i]
                    be = b_end[i]
                    while b < be and block_last[b] < base:
                        b += 1
                    bp[i] = b
                    mx = np.int64(0)
                    nb = 0
                    while b < be and block_first[b] < end:
                        nb += 1
                        if block_max[b] > mx:
                            mx = np.int64(block_max[b])
                        if block_last[b] >= end:
                            break
                        b += 1
                    nblk[i] = nb
                    ub[i] = w[i] * mx
                    total += ub[i]
                if full and total <= thr:
                    base = end
                    continue
                # 2. terms by bound ascending; the non-essential prefix sums to <= thr
                for i in range(m):
                    order[i] = i
                for a in range(1, m):
                    x = order[a]
                    b = a - 1
                    while b >= 0 and ub[order[b]] > ub[x]:
                        order[b + 1] = order[b]
                        b -= 1
                    order[b + 1] = x
                ne = 0
                cum[0] = 0
                if full:
                    while ne < m and cum[ne] + ub[order[ne]] <= thr:
                        cum[ne + 1] = cum[ne] + ub[order[ne]]
                        ne += 1
                # MaxScore pays per candidate (bitmap, bounds, completion); when the essential lists hold a large
                # share of the window's postings, plain term-at-a-time over every list is cheaper (est_*: blocks)
                est_all = 0
                est_ess = 0
                for r in range(m):
                    est_all += nblk[order[r]]
                    if r >= ne:
                        est_ess += nblk[order[r]]
                # (a window with few postings is cheaper through the bitmap than through a scan of every slot)
                dense_mode = (ne == 0 or est_ess * DENSE_RATIO >= est_all) and \
                    est_all * block_size * 4 >= end - base
                if dense_mode:
                    ne = 0
                    cum[0] = 0
                for r in range(ne, m):
                    i = order[r]
                    if ub[i] == 0:
                        continue
                    _seek(docs, block_last, pos, bp, p_lo, p_end, b_lo, b_end, block_size, i, base)
                    p = pos[i]
                    pe = p_end[i]
                    wi = w[i]
                    if dense_mode:
                        while p < pe:
                            d = docs[p]
                            if d >= end:
                                break
                            acc[d - base] += wi * np.int64(impacts[p])
                            p += 1
                    else:
                        while p < pe:
                            d = docs[p]
                            if d >= end:
                                break
                            o = np.uint64(d - base)
                            acc[o] += wi * np.int64(impacts[p])
                            bits[o >> _SIX] |= _ONE << (o & _SIXTY_THREE)
                            p += 1
                    pos[i] = p
                if dense_mode:
                    # every list was accumulated: scores are complete; one pass over the window in id order
                    for j in range(end - base):
                        s = acc[j]
                        if s == 0:
                            continue
                        acc[j] = 0
                        if size == k and s <= theta:
                            continue
                        if use_live and live[base + j] == 0:
                            continue
                        size = _heap_push(heap_s, heap_d, size, k, s, np.int64(base + j))
                        if size == k:
                            theta = heap_s[0]
                            thr = _prune_threshold(theta, heap_factor)
                    base = end
                    continue
                # 3. accumulated docs in id order: complete when every list is essential, else candidates
                rest = cum[ne]
                nc = 0
                # touched offsets, in order, from the bitmap (a window's scan costs its touched docs, not its size)
                for wd in range((end - base + 63) >> 6):
                    word = bits[wd]
                    if word == 0:
                        continue
                    bits[wd] = 0
                    while word != 0:
                        low = word & (~word + _ONE)
                        j = (wd << 6) + _DEBRUIJN_POS[(low * _DEBRUIJN) >> np.uint64(58)]
                        word ^= low
                        s = acc[j]
                        acc[j] = 0
                        if use_live and live[base + j] == 0:
                            continue
                        if ne == 0:
                            if size < k or s > theta:
                                size = _heap_push(heap_s, heap_d, size, k, s, np.int64(base + j))
                                if size == k:
                                    theta = heap_s[0]
                                    thr = _prune_threshold(theta, heap_factor)
                        elif s + rest > thr:
                            slot[j] = nc
                            cand[nc] = j
                            cs[nc] = s
                            nc += 1
                # 4. candidates completed with the non-essential lists, largest bound first; after each list,
                # those that cannot beat thr even with every remaining list are dropped. A list is probed per
                # candidate (cursor seeks) when candidates are few, else its window postings are scanned once
                # (sequential reads beat one cache miss per probe).
                r = ne - 1
                while r >= 0 and nc > 0:
                    i = order[r]
                    if ub[i] > 0:
                        wi = w[i]
                        if nc * PROBE_RATIO < nblk[i] * block_size:
                            for c2 in range(nc):
                                _seek(docs, block_last, pos, bp, p_lo, p_end, b_lo, b_end, block_size, i,
                                      base + cand[c2])
                                p = pos[i]
                                if p < p_end[i] and docs[p] == base + cand[c2]:
                                    cs[c2] += wi * np.int64(impacts[p])
                        else:
                            _seek(docs, block_last, pos, bp, p_lo, p_end, b_lo, b_end, block_size, i, base)
                            p = pos[i]
                            pe = p_end[i]
                            while p < pe:
                                d = docs[p]
                                if d >= end:
                                    break
                                sl = slot[d - base]
                                if sl >= 0:
                                    cs[sl] += wi * np.int64(impacts[p])
                                p += 1
                            pos[i] = p
                    keep = 0
                    for c2 in range(nc):
                        if cs[c2] + cum[r] > thr:
                            slot[cand[c2]] = keep
                            cand[keep] = cand[c2]
                            cs[keep] = cs[c2]
                            keep += 1
                        else:
                            slot[cand[c2]] = -1
                    nc = keep
                    r -= 1
                for c2 in range(nc):
                    slot[cand[c2]] = -1
                    if cs[c2] > theta:
                        size = _heap_push(heap_s, heap_d, size, k, cs[c2], np.int64(base + cand[c2]))
                        theta = heap_s[0]
                        thr = _prune_threshold(theta, heap_factor)
                base = end
            _heap_drain(heap_s, heap_d, size, out_S[q], out_I[q])


def _search(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first, block_last,
            term_scale, block_size, n_docs, k, live, query_cut, heap_factor, window, forward=None, candidates=None):
    (q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first, block_last, term_scale,
     block_size, n_docs, k, live) = _prepare(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr,
                                             block_max, block_first, block_last, term_scale, block_size, n_docs, k, live)
    window = _check_window(window)
    nq = q_indptr.shape[0] - 1
    D = np.full((nq, k), MISSING_SCORE, dtype=np.float32)
    I = np.full((nq, k), MISSING_ID, dtype=np.int64)
    if nq == 0 or n_docs == 0 or q_terms.shape[0] == 0:
        return D, I
    # quantize the whole query first, so a truncated query and the rescoring share the exact search's integers
    qi, q_scale = quantize_queries(q_indptr, q_terms, q_weights, term_scale)
    full = (q_indptr, q_terms, qi)
    if query_cut > 0:
        q_indptr, q_terms, qi = _cut_queries(q_indptr, q_terms, qi, indptr, query_cut)
    max_m = int(np.diff(q_indptr).max())
    if max_m == 0:
        return D, I
    rescore = forward is not None and (query_cut > 0 or heap_factor != 1.0)
    k1 = max(k, candidates) if rescore and candidates is not None else k
    # a small workload runs on the NumPy twin (the same integers and order); heap_factor > 1 prunes by the
    # kernel's own traversal, so only the kernel gives its results
    if heap_factor == 1.0 and not use_numba(_work(q_indptr, q_terms, indptr, n_docs), __name__):
        S, I = _impact_topk_np(q_indptr, q_terms, qi, indptr, docs, impacts, n_docs, k1, live)
        if rescore:
            S, I = _rescore_np(full[0], full[1], full[2], forward[0], forward[1], forward[2], indptr.shape[0] - 1,
                               I, k)
        return _to_float(S, I, q_scale)
    _compile()
    use_live = live is not None
    live_arr = live if use_live else np.ones(1, dtype=np.uint8)
    n_chunks = min(nq, num_threads())
    bad = np.zeros(n_chunks, dtype=np.uint8)
    S = np.zeros((nq, k1), dtype=np.int64)
    I1 = np.full((nq, k1), MISSING_ID, dtype=np.int64)
    _impact_topk_nb(q_indptr, q_terms, qi, indptr, docs, impacts, block_indptr, block_max, block_first, block_last,
                    block_size, n_docs, k1, live_arr, use_live, heap_factor, window, max_m, n_chunks, bad, S, I1)
    if bad.any():
        raise ValueError(_BAD_DOCS.format(n_docs=n_docs))
    if rescore:
        fwd_indptr, fwd_terms, fwd_impacts = forward
        S = np.zeros((nq, k), dtype=np.int64)
        _rescore_nb(full[0], full[1], full[2], fwd_indptr, fwd_terms, fwd_impacts, indptr.shape[0] - 1, I1, k,
                    n_chunks, S, I)
    else:
        I = I1
    return _to_float(S, I, q_scale)


def _check_forward(forward: Any, n_docs: int, n_terms: int, impacts_dtype: np.dtype) -> tuple:
    """The forward index (doc-major copy of the postings) as contiguous arrays, checked."""
    if not isinstance(forward, tuple) or len(forward) != 3:
        raise ValueError("forward must be a tuple (fwd_indptr, fwd_terms, fwd_impacts)")
    fwd_indptr = as_array("fwd_indptr", forward[0], "i", 1, np.int64)
    fwd_terms = np.asarray(forward[1])
    if fwd_terms.ndim != 1 or fwd_terms.dtype.kind not in "iu":
        raise ValueError(f"fwd_terms must be a 1-D integer array, got {fwd_terms.dtype} {fwd_terms.shape}")
    fwd_terms = np.ascontiguousarray(fwd_terms)
    fwd_impacts = _check_uint("fwd_impacts", forward[2])
    if fwd_impacts.dtype != impacts_dtype or fwd_impacts.shape[0] != fwd_terms.shape[0]:
        raise ValueError("fwd_impacts must match fwd_terms in length and impacts in dtype")
    if fwd_indptr.shape[0] != n_docs + 1:
        raise ValueError(f"fwd_indptr must have n_docs + 1 = {n_docs + 1} entries, got {fwd_indptr.shape[0]}")
    check_indptr("fwd_indptr", fwd_indptr, fwd_terms.shape[0])
    if fwd_terms.size and (int(fwd_terms.min()) < 0 or int(fwd_terms.max()) >= n_terms):
        raise ValueError(f"fwd_terms must hold term ids in [0, {n_terms})")
    return fwd_indptr, fwd_terms, fwd_impacts


def _prune_threshold(theta, heap_factor):
    """The bound a window, list or candidate must exceed: theta itself (exact), or floor(heap_factor * theta)."""
    if heap_factor == 1.0:
        return theta
    return np.int64(math.floor(heap_factor * np.float64(theta)))


def _rescore_kernel(q_indptr, q_terms, qi, fwd_indptr, fwd_terms, fwd_impacts, n_terms, cand, k, n_chunks, out_S,
                    out_I):
    """Score each query's candidate docs ``cand`` int64 (nq, k1) (-1 = none) with the full query through the
    forward index, keep the top k in ``out_S`` / ``out_I`` (prefilled 0 / -1)."""
    nq = q_indptr.shape[0] - 1
    for c in prange(n_chunks):
        qd = np.zeros(n_terms, dtype=np.int64)
        heap_s = np.empty(k, dtype=np.int64)
        heap_d = np.empty(k, dtype=np.int64)
        for q in range(c, nq, n_chunks):
            for j in range(q_indptr[q], q_indptr[q + 1]):
                if q_terms[j] < n_terms:
                    qd[q_terms[j]] += qi[j]  # a repeated term counts twice, as in the exact search
            size = 0
            for r in range(cand.shape[1]):
                d = cand[q, r]
                if d < 0:
                    break
                s = np.int64(0)
                for p in range(fwd_indptr[d], fwd_indptr[d + 1]):
                    s += qd[fwd_terms[p]] * np.int64(fwd_impacts[p])
                if s > 0:
                    size = _heap_push(heap_s, heap_d, size, k, s, d)
            for j in range(q_indptr[q], q_indptr[q + 1]):
                if q_terms[j] < n_terms:
                    qd[q_terms[j]] = 0
            _heap_drain(heap_s, heap_d, size, out_S[q], out_I[q])


DEFAULT_WINDOW = 16384
_ONE = np.uint64(1)
_SIX = np.uint64(6)
_SIXTY_THREE = np.uint64(63)
DENSE_RATIO = 4  # plain term-at-a-time in a window when essential postings * DENSE_RATIO >= all its postings
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)  # lowest set bit -> its index, by a de Bruijn multiply
_DEBRUIJN_POS = np.zeros(64, dtype=np.int64)
for _i in range(64):
    _DEBRUIJN_POS[int(((1 << _i) * 0x03F79D71B4CB0A89) % (1 << 64)) >> 58] = _i
PROBE_RATIO = 16  # probe a list per candidate when candidates * PROBE_RATIO < its postings in the window


def _check_window(window: Any) -> int:
    if isinstance(window, (bool, np.bool_)) or not isinstance(window, (int, np.integer)) or not \
            1 <= window <= 1 << 24:
        raise ValueError(f"window must be an integer in [1, 16777216] (doc ids per accumulator window), got "
                         f"{window!r}")
    return int(window)


def impact_topk_exact(q_indptr: Any, q_terms: Any, q_weights: Any, indptr: Any, docs: Any, impacts: Any,
                      block_indptr: Any, block_max: Any, block_first: Any, block_last: Any, term_scale: Any,
                      block_size: int, n_docs: int, k: int, live: Any = None, *,
                      window: int = DEFAULT_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k docs per query by dot product over an impact index (windowed block-max MaxScore on integer
    scores; numba, parallel over queries). See the module docstring for the layout and the algorithm.

    Args:
        q_indptr, q_terms, q_weights: ragged queries (int64 (nq+1,), int (total,) >= 0, float32 finite >= 0).
        indptr, docs, impacts, block_indptr, block_max, block_first, block_last, term_scale, block_size, n_docs: the
            index (``ImpactIndex.kernel_args()``).
        k: hits per query, >= 1.
        live: optional bool/uint8 (n_docs,); docs with ``live[d] == 0`` are never returned.
        window: doc ids per accumulator window (speed only; results do not depend on it).

    Returns:
        D float32 (nq, k), I int64 (nq, k): the same as :func:`impact_topk_ref`, bit for bit.
    """
    return _search(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first,
                   block_last, term_scale, block_size, n_docs, k, live, -1, 1.0, window)


def impact_topk_approx(q_indptr: Any, q_terms: Any, q_weights: Any, indptr: Any, docs: Any, impacts: Any,
                       block_indptr: Any, block_max: Any, block_first: Any, block_last: Any, term_scale: Any,
                       block_size: int, n_docs: int, k: int, live: Any = None, *, query_cut: int | None = None,
                       heap_factor: float = 1.0, window: int = DEFAULT_WINDOW, forward: tuple | None = None,
                       candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k (Seismic's knobs) over an impact index; arguments as :func:`impact_topk_exact`.

    Args:
        query_cut: None (all terms) or >= 1: search only the lists of each query's ``query_cut`` heaviest terms
            (by quantized weight, which folds in the term's largest document weight).
        heap_factor: >= 1: windows, lists and candidates are skipped unless their upper bound exceeds
            ``heap_factor * theta`` (theta = the current k-th score, once k hits are held). 1 is exact.
        forward: optional forward index ``(fwd_indptr int64 (n_docs+1,), fwd_terms int (nnz,), fwd_impacts
            (nnz,))`` holding the same postings doc by doc. With it, the pruned search collects ``candidates``
            docs, which are then scored with the *whole* query (as Seismic rescores with its forward index), so
            every returned score is the exact one.
        candidates: docs collected per query before rescoring (>= k; default k). Only with ``forward``.

    Returns:
        D float32 (nq, k), I int64 (nq, k) as :func:`impact_topk_exact`. Without ``forward`` scores are those of
        the truncated query; with it, of the whole query. Hits may be missing, never mis-scored. Equal to
        :func:`impact_topk_exact` with ``query_cut=None, heap_factor=1.0``.
    """
    query_cut, heap_factor = _check_approx(query_cut, heap_factor)
    if candidates is not None:
        if forward is None:
            raise ValueError("candidates needs a forward index to rescore them (pass forward=...)")
        if isinstance(candidates, (bool, np.bool_)) or not isinstance(candidates, (int, np.integer)) or \
                candidates < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {candidates!r}")
        candidates = int(candidates)
    if forward is not None:
        forward = _check_forward(forward, check_count("n_docs", n_docs, upper=_INT32_MAX),
                                 np.asarray(indptr).shape[0] - 1, np.asarray(impacts).dtype)
    return _search(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first,
                   block_last, term_scale, block_size, n_docs, k, live, query_cut, heap_factor, window, forward,
                   candidates)


def impact_topk_subset(q_indptr: Any, q_terms: Any, q_weights: Any, term_scale: Any, forward: tuple, rows: Any,
                       k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among the docs ``rows`` (int (m,), distinct) by scoring each through the forward index.

    For a mask that leaves few documents (a selective filter), scoring them directly reads their own postings
    instead of every posting of the query's terms. The scores are the exact search's integers: with a forward
    index holding the same postings as the inverted lists (no static pruning), the result equals
    :func:`impact_topk_exact` with ``live`` set on ``rows`` only, bit for bit.
    """
    q_indptr, q_terms, q_weights = check_queries(q_indptr, q_terms, q_weights)
    k = check_k(k)
    term_scale = np.ascontiguousarray(term_scale, dtype=np.float32)
    n_terms = term_scale.shape[0]
    fwd_indptr = as_array("fwd_indptr", forward[0], "i", 1, np.int64)
    forward = _check_forward(forward, fwd_indptr.shape[0] - 1, n_terms, np.asarray(forward[2]).dtype)
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= forward[0].shape[0] - 1):
        raise ValueError("rows must be doc ids in [0, n_docs)")
    nq = q_indptr.shape[0] - 1
    S = np.zeros((nq, k), dtype=np.int64)
    I = np.full((nq, k), MISSING_ID, dtype=np.int64)
    qi, q_scale = quantize_queries(q_indptr, q_terms, q_weights, term_scale)
    if nq == 0 or rows.size == 0:
        return _to_float(S, I, q_scale)
    cand = np.broadcast_to(rows, (nq, rows.size))
    fwd_indptr = forward[0]
    if not use_numba(nq * (rows.size + int((fwd_indptr[rows + 1] - fwd_indptr[rows]).sum())), __name__):
        S, I = _rescore_np(q_indptr, q_terms, qi, forward[0], forward[1], forward[2], n_terms, cand, k)
        return _to_float(S, I, q_scale)
    _compile()
    _rescore_nb(q_indptr, q_terms, qi, forward[0], forward[1], forward[2], n_terms, cand, k,
                min(nq, num_threads()), S, I)
    return _to_float(S, I, q_scale)


def forward_rescore_ref(q_indptr: Any, q_terms: Any, q_weights: Any, term_scale: Any, forward: tuple,
                        cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain-NumPy reference of the rescoring step: the top-k of the candidate docs ``cand`` int64 (nq, c)
    (-1 = none) by their integer score with the whole quantized query, through the forward index."""
    q_indptr, q_terms, q_weights = check_queries(q_indptr, q_terms, q_weights)
    term_scale = np.asarray(term_scale, dtype=np.float32)
    fwd_indptr, fwd_terms, fwd_impacts = (np.asarray(a) for a in forward)
    qi, q_scale = quantize_queries(q_indptr, q_terms, q_weights, term_scale)
    nq = q_indptr.shape[0] - 1
    S = np.zeros((nq, k), dtype=np.int64)
    I = np.full((nq, k), MISSING_ID, dtype=np.int64)
    for q in range(nq):
        qd = np.zeros(term_scale.shape[0], dtype=np.int64)
        sl = slice(q_indptr[q], q_indptr[q + 1])
        inside = q_terms[sl] < term_scale.shape[0]
        np.add.at(qd, q_terms[sl][inside], qi[sl][inside])
        rows = cand[q][cand[q] >= 0]
        sc = np.array([int((qd[fwd_terms[fwd_indptr[d]:fwd_indptr[d + 1]]] *
                            fwd_impacts[fwd_indptr[d]:fwd_indptr[d + 1]].astype(np.int64)).sum()) for d in rows],
                      dtype=np.int64)
        keep = sc > 0
        rows, sc = rows[keep], sc[keep]
        order = np.lexsort((rows, -sc))[:k]
        S[q, :len(order)] = sc[order]
        I[q, :len(order)] = rows[order]
    return _to_float(S, I, q_scale)


# ---------------------------------------------------------------------------------------------------------
# NumPy twins (small workloads, :func:`hylex.kernels.topk.use_numba`): the kernels' integers and order
# ---------------------------------------------------------------------------------------------------------


def _work(q_indptr: np.ndarray, q_terms: np.ndarray, indptr: np.ndarray, n_docs: int) -> int:
    """Elements a search touches: an accumulator per query, plus the postings of the queries' lists."""
    t = q_terms[q_terms < indptr.shape[0] - 1]
    return (q_indptr.shape[0] - 1) * n_docs + int((indptr[t + 1] - indptr[t]).sum())


def _impact_topk_np(q_indptr, q_terms, qi, indptr, docs, impacts, n_docs, k, live):
    """The exact kernel's (int64 S, I) (nq, k) (prefilled 0 / -1) by brute force: every posting of the queries'
    lists added into one int64 accumulator per query (exact in any order), the hits selected by one sort. A doc id
    out of range in a walked list raises the kernel's error (the kernel checks each list's first and last id, the
    same test for the ascending lists an index holds)."""
    nq = q_indptr.shape[0] - 1
    n_terms = indptr.shape[0] - 1
    qid = np.repeat(np.arange(nq, dtype=np.int64), np.diff(q_indptr))
    use = (q_terms < n_terms) & (qi > 0)  # the lists the kernel walks
    t = q_terms[use]
    lo, hi = indptr[t], indptr[t + 1]
    pos, owner = ranges(lo, hi)
    d = docs[pos].astype(np.int64)
    if d.size and (d.min() < 0 or d.max() >= n_docs):
        raise ValueError(_BAD_DOCS.format(n_docs=n_docs))
    acc = np.zeros(nq * n_docs, dtype=np.int64)
    np.add.at(acc, qid[use][owner] * n_docs + d, qi[use][owner] * impacts[pos].astype(np.int64))
    acc = acc.reshape(nq, n_docs)
    valid = acc > 0
    if live is not None:
        valid &= (live != 0)[None, :]
    return select_topk_rows(acc, valid, k, fill=0)


def _rescore_np(q_indptr, q_terms, qi, fwd_indptr, fwd_terms, fwd_impacts, n_terms, cand, k):
    """:func:`_rescore_kernel`'s (S, I) (nq, k): each query's candidates ``cand`` (nq, c) (up to the first -1)
    scored with the whole query through the forward index, the top k of those scoring > 0."""
    nq = q_indptr.shape[0] - 1
    qid = np.repeat(np.arange(nq, dtype=np.int64), np.diff(q_indptr))
    inside = q_terms < n_terms
    keys, inv = np.unique(qid[inside] * n_terms + q_terms[inside], return_inverse=True)
    qd = np.zeros(keys.shape[0], dtype=np.int64)
    np.add.at(qd, inv.reshape(-1), qi[inside])  # a repeated term counts twice, as in the kernel
    cq, cr = np.nonzero(np.logical_and.accumulate(cand >= 0, axis=1))
    cd = cand[cq, cr].astype(np.int64)
    pos, owner = ranges(fwd_indptr[cd], fwd_indptr[cd + 1])
    key = cq[owner] * n_terms + np.asarray(fwd_terms)[pos].astype(np.int64)
    s = np.zeros(cd.shape[0], dtype=np.int64)
    if keys.size and key.size:
        at = np.minimum(np.searchsorted(keys, key), keys.shape[0] - 1)
        w = np.where(keys[at] == key, qd[at], 0)
        np.add.at(s, owner, w * np.asarray(fwd_impacts)[pos].astype(np.int64))
    hit = s > 0
    return select_topk_hits(cq[hit], s[hit], cd[hit], nq, k, fill=0)


# ---------------------------------------------------------------------------------------------------------
# compilation (on first use: see hylex.kernels.topk)
# ---------------------------------------------------------------------------------------------------------

_KERNELS = (("_seek", "_seek", False), ("_prune_threshold", "_prune_threshold", False),
            ("_impact_topk_nb", "_impact_topk_kernel", True), ("_rescore_nb", "_rescore_kernel", True))
_impact_topk_nb: Any = None
_rescore_nb: Any = None


def _compile() -> None:
    """Import numba and compile this module's kernels (once; their machine code comes from numba's cache)."""
    compile_kernels(globals(), _KERNELS)
