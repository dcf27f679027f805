"""Tests of the impact index (hylex.indexing.impact) and its block-max kernels (hylex.kernels.blockmax).

Scores are integers (per-term quantized impacts times 16-bit quantized query weights), so the exact kernel is
checked bit for bit against the NumPy reference *and* against an independent integer oracle (a scipy int64
sparse product over the postings); the float brute force over the dequantized weights is checked with an error
bound derived from the query quantization. Also: quantization, static pruning, the forward index, the
approximate modes (query_cut, heap_factor, forward rescoring), block arrays, persistence, threads and input
validation.
"""
from __future__ import annotations

import json
import math
from fractions import Fraction

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from hylex.indexing.impact import ImpactIndex
from hylex.kernels.blockmax import (
    QUERY_LEVELS,
    _cut_queries,
    forward_rescore_ref,
    impact_topk_approx,
    impact_topk_exact,
    impact_topk_ref,
    quantize_queries,
)
from hylex.kernels.topk import kernel_backend

N_DOCS, VOCAB, N_USED, NQ, K = 3000, 3000, 2900, 48, 10
WINDOWS = (1, 7, 64, 1 << 14)  # 1 << 14 > N_DOCS: a single window
INV_ARRAYS = ("indptr", "docs", "impacts", "block_indptr", "block_max", "block_first", "block_last", "term_scale")
FWD_ARRAYS = ("fwd_indptr", "fwd_terms", "fwd_impacts")
KERNEL_ARG_NAMES = ("indptr", "docs", "impacts", "block_indptr", "block_max", "block_first", "block_last",
                    "term_scale", "block_size", "n_docs")

# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------


def zipf_docs(rng, n_docs, V, n_used, mean_nnz=25, a=1.0, binary=False):
    """csr (n_docs, V) float32 with ~mean_nnz terms per doc drawn by Zipf popularity among ``n_used`` scattered
    term ids (the other ``V - n_used`` ids have no postings). Returns X and the used ids, most popular first."""
    used = rng.permutation(V)[:n_used]
    p = 1.0 / np.arange(1, n_used + 1) ** a
    p /= p.sum()
    lens = np.maximum(rng.poisson(mean_nnz, n_docs), 1)
    rows = np.repeat(np.arange(n_docs), lens)
    cols = used[rng.choice(n_used, rows.size, p=p)]
    vals = rng.lognormal(0.0, 0.7, rows.size)
    X = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(n_docs, V))  # duplicates are summed
    X.sum_duplicates()
    X.sort_indices()
    if binary:
        X.data[:] = 1.0
    return X, used


def ragged(qs):
    """[(terms, weights), ...] -> (q_indptr int64, q_terms int64, q_weights float32), terms sorted per query."""
    indptr, terms, weights = [0], [], []
    for t, w in qs:
        t, w = np.asarray(t, np.int64), np.asarray(w, np.float64)
        assert len(np.unique(t)) == len(t)
        o = np.argsort(t, kind="stable")
        terms.append(t[o])
        weights.append(w[o])
        indptr.append(indptr[-1] + len(t))
    return (np.asarray(indptr, np.int64), np.concatenate(terms).astype(np.int64),
            np.concatenate(weights).astype(np.float32))


def make_queries(rng, X, used, nq):
    """Ragged queries, the edge cases first: 0 empty; 1 out-of-vocabulary terms only; 2 terms without postings
    only; 3 one popular term; 4 zero weights only; 5 a mix (popular, zero weight, no postings, OOV); 6 many
    terms; 7 equal weights; 8 a heavy and a negligible weight (quantizes to 0); then random queries (terms of a
    random doc plus Zipf-random ones, sometimes an OOV term; every 4th with equal weights)."""
    n_docs, V = X.shape
    unused = np.setdiff1d(np.arange(V), used)
    qs = [
        ([], []),
        ([V, V + 5], [1.0, 2.0]),
        (unused[:3], [1.0, 0.5, 2.0]),
        ([used[0]], [0.7]),
        (used[:4], [0.0] * 4),
        ([used[0], used[1], used[50], unused[0], V + 1], [1.0, 0.0, 0.6, 3.0, 5.0]),
        (rng.choice(used[:1500], 120, replace=False), rng.uniform(0.1, 2.0, 120)),
        (rng.choice(used[:200], 12, replace=False), [1.0] * 12),
        ([used[5], used[6]], [1.0, 1e-7]),
    ]
    p = 1.0 / np.arange(1, len(used) + 1)
    p /= p.sum()
    while len(qs) < nq:
        d = rng.integers(n_docs)
        doc = X.indices[X.indptr[d]:X.indptr[d + 1]]
        n = 1 + rng.poisson(9)
        t = np.concatenate((rng.choice(doc, min(len(doc), n // 2 + 1), replace=False),
                            used[rng.choice(len(used), n - n // 2 - 1, p=p)]))
        if rng.random() < 0.3:
            t = np.append(t, V + rng.integers(0, 10))
        t = np.unique(t)
        w = np.ones(len(t)) if len(qs) % 4 == 0 else rng.uniform(0.1, 2.0, len(t))
        qs.append((t, w))
    return ragged(qs)


@pytest.fixture(scope="module", autouse=True, params=["numba", "numpy"])
def backend(request):
    """Every test runs on the compiled kernels and on their NumPy twins (the path of small workloads, chosen by
    hylex.kernels.topk.SMALL_WORK): both must match the references and oracles bit for bit. (heap_factor > 1
    always runs on numba: its results are those of the kernel's own pruning.)"""
    with kernel_backend(request.param):
        yield request.param


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run the kernels on one numba thread, except in test_parallel_equals_single_thread: with the omp threading
    layer on this 2-core machine every parallel launch costs ~7 ms, which would dominate this file's runtime."""
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(old)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(20240611)
    X, used = zipf_docs(rng, N_DOCS, VOCAB, N_USED)
    queries = make_queries(rng, X, used, NQ)
    live = rng.random(N_DOCS) < 0.7
    return X, used, queries, live


@pytest.fixture(scope="module")
def indexes(data):
    X = data[0]
    return {(bits, bs): ImpactIndex.from_csr(X, bits=bits, block_size=bs) for bits in (8, 16) for bs in (1, 3, 64)}


@pytest.fixture(scope="module")
def tie_data():
    """Binary doc weights and equal query weights: a score is (matching terms) x constant, so ties abound."""
    rng = np.random.default_rng(77)
    X, used = zipf_docs(rng, 2000, 300, 300, mean_nnz=8, binary=True)
    qs = []
    for _ in range(40):
        n = int(rng.integers(1, 7))
        qs.append((rng.choice(used[:60], n, replace=False), [1.0] * n))
    return X, ragged(qs)


# ---------------------------------------------------------------------------------------------------------
# oracles and helpers
# ---------------------------------------------------------------------------------------------------------


def run(fn, idx, queries, k, live=None, **kw):
    return fn(*queries, *idx.kernel_args(), k, live, **kw)


def assert_same(got, want):
    """Bit-identical results (ids and float32 scores)."""
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64
    assert got[0].shape == want[0].shape and got[1].shape == want[1].shape
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0].view(np.int32), np.asarray(want[0], np.float32).view(np.int32))


def check_rows(D, I):
    """hylex.kernels.topk conventions: score desc, distinct ids, positive scores, -1 / -inf padding at the end,
    equal float32 scores in doc-id order (integers that round to one float included)."""
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape
    for d, i in zip(D, I):
        n = int((i >= 0).sum())
        assert (i[:n] >= 0).all() and (i[n:] == -1).all() and np.isneginf(d[n:]).all()
        assert len(set(i[:n].tolist())) == n and np.isfinite(d[:n]).all() and (d[:n] > 0).all()
        assert (np.diff(d[:n]) <= 0).all()
        assert all(d[a] > d[a + 1] or i[a] < i[a + 1] for a in range(n - 1))


def inverted_matrix(idx):
    """int64 csr (V, n_docs) of the inverted postings' impacts."""
    return sp.csr_matrix((np.asarray(idx.impacts).astype(np.int64), np.asarray(idx.docs).astype(np.int64),
                          np.asarray(idx.indptr)), shape=(idx.vocab_size, idx.n_docs))


def forward_matrix(idx):
    """int64 csr (V, n_docs) of the forward index's impacts (every quantized posting)."""
    F = sp.csr_matrix((np.asarray(idx.fwd_impacts).astype(np.int64), np.asarray(idx.fwd_terms).astype(np.int64),
                       np.asarray(idx.fwd_indptr)), shape=(idx.n_docs, idx.vocab_size))
    return F.T.tocsr()


def query_int(queries, term_scale, keep=None):
    """int64 csr (nq, V) of the 16-bit quantized query weights (optionally only the terms where ``keep``), and the
    per-query float scales. Quantized on the whole query, as the kernels do."""
    qp, qt, qw = queries
    V = len(term_scale)
    qi, q_scale = quantize_queries(qp, qt, qw, np.asarray(term_scale))
    rows = np.repeat(np.arange(len(qp) - 1), np.diff(qp))
    ok = qt < V
    if keep is not None:
        ok &= keep
    return sp.csr_matrix((qi[ok], (rows[ok], qt[ok])), shape=(len(qp) - 1, V), dtype=np.int64), q_scale


def int_scores(Q, P):
    """Exact int64 scores (nq, n_docs)."""
    S = (Q @ P).toarray()
    assert S.dtype == np.int64
    return S


def to_float(S, q_scale):
    return (S.astype(np.float64) * q_scale[:, None]).astype(np.float32)


def topk_oracle(S, q_scale, k, live=None):
    """Top-k of the int64 score matrix: score > 0, live, score desc then doc id asc; float32 ``S * q_scale``."""
    nq = S.shape[0]
    D = np.full((nq, k), -np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    F = to_float(S, q_scale)
    for q in range(nq):
        ok = S[q] > 0
        if live is not None:
            ok &= np.asarray(live) != 0
        rows = np.flatnonzero(ok)
        order = rows[np.lexsort((rows, -S[q, rows]))][:k]
        # the kernels report float32 scores: integers that round to one float are then ordered by doc id
        order = order[np.lexsort((order, -F[q, order]))]
        I[q, :len(order)] = order
        D[q, :len(order)] = F[q, order]
    return D, I


def cut_mask(queries, idx, cut):
    """Which query terms ``query_cut=cut`` keeps: per query, the ``cut`` usable terms (in the vocabulary, with
    inverted postings) with the largest quantized weight, ties by position."""
    qp, qt, qw = queries
    qi, _ = quantize_queries(qp, qt, qw, np.asarray(idx.term_scale))
    lens = np.diff(np.asarray(idx.indptr))
    keep = np.zeros(len(qt), bool)
    for q in range(len(qp) - 1):
        pos = [j for j in range(qp[q], qp[q + 1]) if qt[j] < idx.vocab_size and lens[qt[j]] > 0]
        pos.sort(key=lambda j: (-qi[j], j))
        keep[pos[:cut]] = True
    return keep


def subset(queries, keep):
    qp, qt, qw = queries
    qid = np.repeat(np.arange(len(qp) - 1), np.diff(qp))
    new = np.zeros(len(qp), np.int64)
    np.cumsum(np.bincount(qid[keep], minlength=len(qp) - 1), out=new[1:])
    return new, qt[keep], qw[keep]


def query_matrix(queries, V, dtype=np.float64):
    qp, qt, qw = queries
    rows = np.repeat(np.arange(len(qp) - 1), np.diff(qp))
    ok = qt < V
    return sp.csr_matrix((qw[ok].astype(dtype), (rows[ok], qt[ok])), shape=(len(qp) - 1, V))


def recall(I_approx, I_exact):
    hits = total = 0
    for a, e in zip(I_approx, I_exact):
        e = set(e[e >= 0].tolist())
        hits += len(e & set(a[a >= 0].tolist()))
        total += len(e)
    return hits / max(total, 1)


def check_blocks(idx):
    """Block arrays recomputed independently (np.maximum.at / minimum.at over each posting's block)."""
    indptr, docs, imp = np.asarray(idx.indptr), np.asarray(idx.docs), np.asarray(idx.impacts)
    bs, V = idx.block_size, idx.vocab_size
    assert indptr.dtype == np.int64 and docs.dtype == np.int32 and imp.dtype in (np.uint8, np.uint16)
    assert idx.block_indptr.dtype == np.int64 and idx.block_max.dtype == imp.dtype
    assert idx.block_first.dtype == np.int32 and idx.block_last.dtype == np.int32
    assert len(indptr) == len(idx.block_indptr) == V + 1 and indptr[0] == 0 and idx.block_indptr[0] == 0
    lens = np.diff(indptr)
    np.testing.assert_array_equal(np.diff(idx.block_indptr), [math.ceil(n / bs) for n in lens])
    term = np.repeat(np.arange(V), lens)
    assert (imp > 0).all() and (docs >= 0).all() and (docs < idx.n_docs).all()
    assert (np.diff(docs)[np.diff(term) == 0] > 0).all()  # strictly ascending within a term
    blk = np.asarray(idx.block_indptr)[term] + (np.arange(len(docs)) - indptr[term]) // bs
    nb = idx.n_blocks
    assert len(idx.block_max) == len(idx.block_first) == len(idx.block_last) == nb
    bmax = np.zeros(nb, np.int64)
    first = np.full(nb, np.iinfo(np.int64).max)
    last = np.full(nb, -1)
    np.maximum.at(bmax, blk, imp.astype(np.int64))
    np.minimum.at(first, blk, docs.astype(np.int64))
    np.maximum.at(last, blk, docs.astype(np.int64))
    np.testing.assert_array_equal(idx.block_max, bmax)
    np.testing.assert_array_equal(idx.block_first, first)
    np.testing.assert_array_equal(idx.block_last, last)


# ---------------------------------------------------------------------------------------------------------
# 1. exact kernel == reference == integer oracle
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("bs", [1, 3, 64])
def test_exact_matches_reference(data, indexes, bits, bs):
    X, used, queries, live = data
    idx = indexes[(bits, bs)]
    Q, q_scale = query_int(queries, idx.term_scale)
    S = int_scores(Q, inverted_matrix(idx))
    for lv in (None, live):
        for k in (1, 10, 100, N_DOCS + 500):
            want = run(impact_topk_ref, idx, queries, k, lv)
            assert_same(want, topk_oracle(S, q_scale, k, lv))  # the reference itself is right
            check_rows(*want)
            for window in WINDOWS if k <= K else WINDOWS[1:]:  # (window 1 is the slowest)
                assert_same(run(impact_topk_exact, idx, queries, k, lv, window=window), want)
            if k > N_DOCS:  # more slots than docs: every hit, then padding
                ok = S > 0 if lv is None else (S > 0) & lv
                np.testing.assert_array_equal((want[1] >= 0).sum(1), ok.sum(1))
            if lv is not None:
                assert lv[want[1][want[1] >= 0]].all()
    D, I = run(impact_topk_exact, idx, queries, K)
    assert (I[[0, 1, 2, 4]] == -1).all() and np.isneginf(D[[0, 1, 2, 4]]).all()  # no usable positive weight
    assert (I[3] >= 0).all() and (I[5] >= 0).all() and (I[6] >= 0).all()
    qi, _ = quantize_queries(*queries, idx.term_scale)
    q8 = slice(queries[0][8], queries[0][9])
    assert qi[q8][queries[1][q8] == used[6]] == [0]  # the negligible weight of query 8 quantizes to 0 ...
    lonely = np.setdiff1d(X[:, [used[6]]].nonzero()[0], X[:, [used[5]]].nonzero()[0])
    assert lonely.size and not np.isin(lonely, run(impact_topk_exact, idx, queries, N_DOCS)[1][8]).any()  # ... so
    # docs holding only that term are no hits


@pytest.mark.parametrize("bits", [8, 16])
def test_exact_independent_of_block_size(indexes, data, bits):
    _, _, queries, live = data
    for name in ("indptr", "docs", "impacts", "term_scale"):
        for bs in (3, 64):
            np.testing.assert_array_equal(getattr(indexes[(bits, 1)], name), getattr(indexes[(bits, bs)], name))
    want = run(impact_topk_exact, indexes[(bits, 1)], queries, 20, live)
    for bs in (3, 64):
        assert_same(run(impact_topk_exact, indexes[(bits, bs)], queries, 20, live), want)


@pytest.mark.parametrize("bs", [1, 3, 64])
def test_exact_ties_broken_by_doc_id(tie_data, bs):
    X, queries = tie_data
    idx = ImpactIndex.from_csr(X, bits=8, block_size=bs)
    assert (idx.impacts == 255).all()
    Q, q_scale = query_int(queries, idx.term_scale)
    S = int_scores(Q, inverted_matrix(idx))
    kth_ties = sum(int(np.sort(s)[::-1][K - 1] == np.sort(s)[::-1][K] > 0) for s in S)
    assert kth_ties >= 20  # the test is meaningful: the k-th slot is contested by equal scores
    for k in (1, K, 100):
        want = topk_oracle(S, q_scale, k)
        assert_same(run(impact_topk_ref, idx, queries, k), want)
        for window in WINDOWS:
            got = run(impact_topk_exact, idx, queries, k, window=window)
            assert_same(got, want)
            check_rows(*got)


def test_empty_index_and_no_queries():
    idx = ImpactIndex.from_csr(sp.csr_matrix((10, 4), dtype=np.float32))
    assert idx.nnz == 0 and idx.n_blocks == 0 and (idx.term_scale == 0).all()
    assert np.array_equal(idx.fwd_indptr, np.zeros(11)) and idx.to_csr().nnz == 0
    queries = ragged([([2], [1.0]), ([0, 7], [1.0, 2.0])])
    for kw in ({}, {"query_cut": 1}, {"heap_factor": 2.0}):
        D, I = idx.search(query_matrix(queries, 8, np.float32), 3, **kw)
        assert D.shape == (2, 3) and (I == -1).all() and np.isneginf(D).all()
    assert_same(run(impact_topk_ref, idx, queries, 3), (np.full((2, 3), -np.inf), np.full((2, 3), -1)))
    idx = ImpactIndex.from_csr(sp.random(10, 4, density=0.5, random_state=0, format="csr", dtype=np.float32))
    none = (np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    for fn in (impact_topk_exact, impact_topk_ref, impact_topk_approx):
        D, I = run(fn, idx, none, 3)
        assert D.shape == I.shape == (0, 3)


# ---------------------------------------------------------------------------------------------------------
# 2. exact search vs float brute force on the dequantized weights
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
def test_exact_close_to_float_brute_force(data, indexes, bits):
    _, _, queries, live = data
    idx = indexes[(bits, 64)]
    B = (query_matrix(queries, VOCAB) @ idx.to_csr().astype(np.float64).T).toarray()
    # each query weight is off by at most half a query step: |score - B| <= q_scale / 2 * sum of the doc's impacts
    # over the query terms (+ float32 rounding of the dequantized weights and of the result)
    _, q_scale = quantize_queries(*queries, idx.term_scale)
    Qbin = query_matrix(queries, VOCAB)
    Qbin.data[:] = 1.0
    tol = 0.5 * q_scale[:, None] * (Qbin @ inverted_matrix(idx).astype(np.float64)).toarray() + 1e-6 * np.abs(B)
    D, I = run(impact_topk_exact, idx, queries, K, live)
    rel = []
    for q in range(NQ):
        n = int((I[q] >= 0).sum())
        rows = I[q, :n]
        assert (np.abs(D[q, :n] - B[q, rows]) <= tol[q, rows]).all()
        others = np.setdiff1d(np.flatnonzero(live), rows)
        if n == K:  # nothing left out beats the k-th hit beyond the tolerance
            assert (B[q, others] <= D[q, K - 1] + tol[q, others] + tol[q, rows[-1]]).all()
        else:  # fewer than k hits: the docs left out have an integer score of 0
            assert (B[q, others] <= tol[q, others]).all()
        if n:
            rel.append(abs(D[q, 0] - B[q, rows[0]]) / B[q, rows[0]])
    assert max(rel) < 1e-4, max(rel)


# ---------------------------------------------------------------------------------------------------------
# 3. quantization
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
def test_per_term_quantization(data, indexes, bits):
    X = data[0]
    idx = indexes[(bits, 3)]
    maxq = 2 ** bits - 1
    assert idx.impacts.dtype == (np.uint8 if bits == 8 else np.uint16) and idx.bits == bits
    colmax = X.max(axis=0).toarray().ravel().astype(np.float64)
    assert idx.term_scale.dtype == np.float32
    np.testing.assert_array_equal(idx.term_scale, (colmax / maxq).astype(np.float32))
    has = np.diff(idx.indptr) > 0
    assert (idx.term_scale[~has] == 0).all()
    top = np.zeros(VOCAB, np.int64)
    np.maximum.at(top, np.repeat(np.arange(VOCAB), np.diff(idx.indptr)), idx.impacts.astype(np.int64))
    np.testing.assert_array_equal(top[has], maxq)  # every term keeps its full range
    R = idx.to_csr()
    assert R.shape == X.shape and R.dtype == np.float32
    E = (X.astype(np.float64) - R.astype(np.float64)).tocoo()  # includes the postings rounded to 0 and dropped
    assert ((R != 0).astype(np.int8) - (R != 0).multiply(X != 0).astype(np.int8)).nnz == 0  # no new postings
    bound = idx.term_scale[E.col].astype(np.float64) / 2 * (1 + 1e-6) + 1e-7 * colmax[E.col]
    assert (np.abs(E.data) <= bound).all()
    # the forward index holds the same quantized postings as the (unpruned) inverted index
    assert len(idx.fwd_impacts) == idx.nnz and idx.fwd_impacts.dtype == idx.impacts.dtype
    assert idx.fwd_terms.dtype == np.uint16 and idx.fwd_indptr.dtype == np.int64
    assert (forward_matrix(idx) != inverted_matrix(idx)).nnz == 0
    assert (np.diff(idx.fwd_terms.astype(np.int64))[np.diff(np.repeat(np.arange(N_DOCS), np.diff(idx.fwd_indptr)))
                                                     == 0] > 0).all()
    no_fwd = ImpactIndex.from_csr(X, bits=bits, block_size=3, forward=False)
    assert not no_fwd.has_forward and no_fwd.forward is None
    assert (no_fwd.to_csr() != R).nnz == 0


def test_quantize_queries(data, indexes):
    _, _, queries, _ = data
    qp, qt, qw = queries
    ts = indexes[(8, 3)].term_scale
    qi, q_scale = quantize_queries(qp, qt, qw, ts)
    assert qi.dtype == np.int64 and q_scale.dtype == np.float64 and q_scale.shape == (NQ,)
    v = np.where(qt < VOCAB, qw.astype(np.float64) * ts[np.minimum(qt, VOCAB - 1)].astype(np.float64), 0.0)
    qid = np.repeat(np.arange(NQ), np.diff(qp))
    vmax = np.zeros(NQ)
    np.maximum.at(vmax, qid, v)
    np.testing.assert_allclose(q_scale, vmax / QUERY_LEVELS, rtol=1e-15)
    assert ((qi >= 0) & (qi <= QUERY_LEVELS)).all() and (qi[qt >= VOCAB] == 0).all()
    pos = vmax[qid] > 0
    assert (np.abs(qi[pos] - v[pos] / vmax[qid][pos] * QUERY_LEVELS) <= 0.5 + 1e-6).all()
    assert (qi[~pos] == 0).all() and q_scale[0] == q_scale[1] == q_scale[2] == q_scale[4] == 0
    top = np.zeros(NQ, np.int64)
    np.maximum.at(top, qid, qi)
    np.testing.assert_array_equal(top[vmax > 0], QUERY_LEVELS)


@pytest.mark.parametrize("bits", [8, 16])
def test_fixed_scale_max_weight(data, bits):
    """With max_weight, separately built indexes (segments) quantize a doc identically and score it equally."""
    X, _, queries, _ = data
    mw = float(np.ceil(X.data.max()))
    A, B = X[:2000], X[1000:]  # docs 1000..1999 are in both
    a = ImpactIndex.from_csr(A, bits=bits, block_size=3, max_weight=mw)
    b = ImpactIndex.from_csr(B, bits=bits, block_size=64, max_weight=mw)
    scale = np.float32(mw / (2 ** bits - 1))
    assert (a.term_scale == scale).all() and (b.term_scale == scale).all()
    Ra, Rb = a.to_csr(), b.to_csr()
    assert (Ra[1000:] != Rb[:1000]).nnz == 0
    for d in (1000, 1500, 1999):
        fa, fb = slice(a.fwd_indptr[d], a.fwd_indptr[d + 1]), slice(b.fwd_indptr[d - 1000], b.fwd_indptr[d - 999])
        np.testing.assert_array_equal(a.fwd_terms[fa], b.fwd_terms[fb])
        np.testing.assert_array_equal(a.fwd_impacts[fa], b.fwd_impacts[fb])
    err = (A.astype(np.float64) - Ra.astype(np.float64)).tocoo().data
    assert (np.abs(err) <= scale / 2 * (1 + 1e-6) + 1e-7 * mw).all()
    # per-term scales (the default) do depend on the other docs: the check above is not vacuous
    pa = ImpactIndex.from_csr(A, bits=bits, block_size=3)
    pb = ImpactIndex.from_csr(B, bits=bits, block_size=3)
    assert (pa.to_csr()[1000:] != pb.to_csr()[:1000]).nnz > 0
    # scores of the shared docs agree across the two segments, bit for bit; kernel == reference on both
    Da, Ia = run(impact_topk_exact, a, queries, 2000)
    Db, Ib = run(impact_topk_exact, b, queries, 2000)
    assert_same((Da, Ia), run(impact_topk_ref, a, queries, 2000))
    assert_same((Db, Ib), run(impact_topk_ref, b, queries, 2000))
    n_shared = 0
    for q in range(NQ):
        sa = {int(i): d for i, d in zip(Ia[q], Da[q]) if 1000 <= i}
        sb = {int(i) + 1000: d for i, d in zip(Ib[q], Db[q]) if 0 <= i < 1000}
        for d in sa.keys() & sb.keys():
            assert sa[d] == sb[d]
            n_shared += 1
    assert n_shared > 1000


def test_max_weight_bounds():
    X = sp.csr_matrix(np.array([[0.5, 0, 2.0], [0, 1.0, 0]], np.float32))
    idx = ImpactIndex.from_csr(X, bits=8, max_weight=2.0)  # a weight equal to max_weight is fine
    assert idx.fwd_impacts.max() == 255
    with pytest.raises(ValueError, match="max_weight"):
        ImpactIndex.from_csr(X, bits=8, max_weight=1.99)
    with pytest.raises(ValueError, match="max_weight"):
        ImpactIndex.from_csr(X, bits=16, max_weight=1.0)


@pytest.mark.parametrize("V,dtype", [(65536, np.uint16), (65537, np.uint32)])
def test_forward_term_dtype(V, dtype):
    X = sp.csr_matrix((np.array([1.0, 2.0, 3.0, 0.5], np.float32), ([0, 0, 1, 2], [3, V - 1, V - 1, 0])),
                      shape=(3, V))
    idx = ImpactIndex.from_csr(X, bits=8, block_size=1)
    assert idx.fwd_terms.dtype == dtype
    np.testing.assert_array_equal(idx.fwd_terms, [3, V - 1, V - 1, 0])
    assert (idx.to_csr() != ImpactIndex.from_csr(X, bits=8, forward=False).to_csr()).nnz == 0
    queries = ragged([([3, V - 1], [1.0, 1.0])])
    got = run(impact_topk_approx, idx, queries, 2, query_cut=1, forward=idx.forward)
    phase1 = run(impact_topk_approx, idx, queries, 2, query_cut=1)[1]
    assert_same(got, forward_rescore_ref(*queries, idx.term_scale, idx.forward, phase1, 2))
    assert_same(got, run(impact_topk_exact, idx, queries, 2))


# ---------------------------------------------------------------------------------------------------------
# 4. static pruning
# ---------------------------------------------------------------------------------------------------------


def expected_kept(full, X, keep_top, keep_fraction):
    """Per term, the (doc ids of the) postings static pruning must keep: the keep_n largest unquantized weights,
    ties by doc id ascending; keep_n from the term's (nonzero-impact) postings, decimal keep_fraction."""
    csc = X.tocsc()
    kept = []
    for t in range(full.vocab_size):
        docs = full.docs[full.indptr[t]:full.indptr[t + 1]]
        n = len(docs)
        if not n:
            kept.append(docs)
            continue
        keep_n = n
        if keep_top is not None:
            keep_n = min(keep_n, keep_top)
        if keep_fraction is not None:
            keep_n = min(keep_n, max(1, math.ceil(Fraction(str(keep_fraction)) * n)))
        col = dict(zip(csc.indices[csc.indptr[t]:csc.indptr[t + 1]].tolist(),
                       csc.data[csc.indptr[t]:csc.indptr[t + 1]].tolist()))
        order = sorted(docs.tolist(), key=lambda d: (-col[d], d))[:keep_n]
        kept.append(np.sort(np.asarray(order, np.int32)))
    return kept


@pytest.mark.parametrize("which", ["lognormal", "ties"])
@pytest.mark.parametrize("kw", [{"keep_top": 7}, {"keep_fraction": 0.3}, {"keep_top": 40, "keep_fraction": 0.3}])
def test_static_pruning(data, tie_data, indexes, which, kw):
    if which == "lognormal":
        X, queries = data[0], data[2]
    else:
        X, queries = tie_data
    full = indexes[(8, 3)] if which == "lognormal" else ImpactIndex.from_csr(X, bits=8, block_size=3)
    idx = ImpactIndex.from_csr(X, bits=8, block_size=3, **kw)
    assert idx.keep_top == kw.get("keep_top") and idx.keep_fraction == kw.get("keep_fraction")
    assert idx.meta()["keep_top"] == kw.get("keep_top") and idx.meta()["keep_fraction"] == kw.get("keep_fraction")
    kept = expected_kept(full, X, kw.get("keep_top"), kw.get("keep_fraction"))
    assert idx.nnz < full.nnz
    for t in range(idx.vocab_size):
        docs = idx.docs[idx.indptr[t]:idx.indptr[t + 1]]
        np.testing.assert_array_equal(docs, kept[t])
    np.testing.assert_array_equal(idx.term_scale, full.term_scale)  # pruning does not change the scales
    Pf, Pp = inverted_matrix(full), inverted_matrix(idx)
    assert (Pp != Pf.multiply(Pp != 0)).nnz == 0  # kept postings keep their impacts
    check_blocks(idx)
    # the forward index is still complete
    R = idx.to_csr()
    assert (R != full.to_csr()).nnz == 0 and (forward_matrix(idx) != Pf).nnz == 0
    no_fwd = ImpactIndex.from_csr(X, bits=8, block_size=3, forward=False, **kw)
    assert no_fwd.to_csr().nnz == idx.nnz
    # exact search is exact on the pruned postings
    Q, q_scale = query_int(queries, idx.term_scale)
    want = topk_oracle(int_scores(Q, Pp), q_scale, K)
    assert_same(run(impact_topk_ref, idx, queries, K), want)
    assert_same(run(impact_topk_exact, idx, queries, K, window=64), want)
    assert_same(idx.search(query_matrix(queries, idx.vocab_size + 10, np.float32), K), want)


# ---------------------------------------------------------------------------------------------------------
# 5. approximate mode
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bs", [3, 64])
def test_approx_defaults_equal_exact(data, indexes, bs):
    _, _, queries, live = data
    idx = indexes[(8, bs)]
    for lv in (None, live):
        exact = run(impact_topk_exact, idx, queries, K, lv)
        for kw in ({}, {"query_cut": None, "heap_factor": 1.0}, {"heap_factor": 1},
                   {"forward": idx.forward}, {"forward": idx.forward, "candidates": 50}, {"window": 7}):
            assert_same(run(impact_topk_approx, idx, queries, K, lv, **kw), exact)
        assert_same(idx.search(query_matrix(queries, VOCAB + 10, np.float32), K, lv), exact)
        assert_same(idx.search(query_matrix(queries, VOCAB + 10, np.float32), K, lv, candidates=50), exact)


def test_cut_queries_helper(data, indexes):
    _, _, queries, _ = data
    idx = indexes[(8, 64)]
    qi, _ = quantize_queries(*queries, idx.term_scale)
    for cut in (1, 2, 5, 1000):
        keep = cut_mask(queries, idx, cut)
        new_p, new_t, new_w = _cut_queries(queries[0], queries[1], qi, idx.indptr, cut)
        want = subset((queries[0], queries[1], qi), keep)
        np.testing.assert_array_equal(new_p, want[0])
        np.testing.assert_array_equal(new_t, want[1])
        np.testing.assert_array_equal(new_w, want[2])
    qt = queries[1]
    usable = (qt < VOCAB) & (np.diff(idx.indptr)[np.minimum(qt, VOCAB - 1)] > 0)
    np.testing.assert_array_equal(cut_mask(queries, idx, 1000), usable)
    # equal quantized weights (a fixed scale and the equal-weight query 7): ties keep the first terms
    X = data[0]
    mw = ImpactIndex.from_csr(X, bits=8, block_size=64, max_weight=float(np.ceil(X.data.max())))
    q7 = slice(queries[0][7], queries[0][8])
    assert (quantize_queries(*queries, mw.term_scale)[0][q7] == QUERY_LEVELS).all()
    keep7 = cut_mask(queries, mw, 3)[q7]
    assert keep7.tolist() == [True] * 3 + [False] * 9
    qi_mw, _ = quantize_queries(*queries, mw.term_scale)
    got = _cut_queries(queries[0], queries[1], qi_mw, mw.indptr, 3)
    np.testing.assert_array_equal(got[1], subset(queries, cut_mask(queries, mw, 3))[1])


@pytest.mark.parametrize("bits", [8, 16])
def test_query_cut_exact_on_truncated_query(data, indexes, bits):
    X, _, queries, live = data
    idx = indexes[(bits, 64)]
    mw = ImpactIndex.from_csr(X, bits=bits, block_size=64, max_weight=float(np.ceil(X.data.max())))
    exact = run(impact_topk_exact, idx, queries, K)
    recalls = {}
    for cut in (1, 3, 8):
        for index in (idx, mw):
            keep = cut_mask(queries, index, cut)
            Q, q_scale = query_int(queries, index.term_scale, keep)  # scaled as the whole query
            S = int_scores(Q, inverted_matrix(index))
            for lv in (None, live):
                want = topk_oracle(S, q_scale, K, lv)
                for window in (1, 64, 1 << 14) if lv is None else (64,):
                    assert_same(run(impact_topk_approx, index, queries, K, lv, query_cut=cut, window=window), want)
        # with per-term scales the heaviest term survives any cut, so the truncated query quantizes alike
        cq = subset(queries, cut_mask(queries, idx, cut))
        assert_same(run(impact_topk_approx, idx, queries, K, query_cut=cut), run(impact_topk_ref, idx, cq, K))
        recalls[cut] = recall(run(impact_topk_approx, idx, queries, K, query_cut=cut)[1], exact[1])
    assert recalls[1] < recalls[8] < 1.0, recalls  # the cut does cut


@pytest.mark.parametrize("bits", [8, 16])
def test_heap_factor_scores_exact(data, indexes, bits):
    _, _, queries, live = data
    idx = indexes[(bits, 3)]
    Q, q_scale = query_int(queries, idx.term_scale)
    S = int_scores(Q, inverted_matrix(idx))
    F = to_float(S, q_scale)
    exact = run(impact_topk_exact, idx, queries, K, live)
    recalls = {}
    for hf in (1.2, 3.0, 100.0):
        for window in (64, 1 << 14):
            D, I = run(impact_topk_approx, idx, queries, K, live, heap_factor=hf, window=window)
            check_rows(D, I)
            hit = I >= 0
            rows = np.nonzero(hit)[0]
            np.testing.assert_array_equal(D[hit], F[rows, I[hit]])  # every returned score is the exact one
            assert live[I[hit]].all() and (S[rows, I[hit]] > 0).all()
            recalls[hf, window] = recall(I, exact[1])
    assert recalls[100.0, 64] < 1.0, recalls  # heap_factor is applied (it prunes between windows only)
    # with a query cut too: exact scores of the truncated query
    keep = cut_mask(queries, idx, 3)
    Qc, _ = query_int(queries, idx.term_scale, keep)
    Fc = to_float(int_scores(Qc, inverted_matrix(idx)), q_scale)
    D, I = run(impact_topk_approx, idx, queries, K, query_cut=3, heap_factor=1.5)
    check_rows(D, I)
    hit = I >= 0
    np.testing.assert_array_equal(D[hit], Fc[np.nonzero(hit)[0], I[hit]])


@pytest.mark.parametrize("pruned", [False, True])
def test_forward_rescoring(data, indexes, pruned):
    X, _, queries, live = data
    idx = ImpactIndex.from_csr(X, bits=8, block_size=3, keep_fraction=0.3) if pruned else indexes[(8, 3)]
    Q, q_scale = query_int(queries, idx.term_scale)
    F = to_float(int_scores(Q, forward_matrix(idx)), q_scale)  # whole query, every posting
    qm = query_matrix(queries, VOCAB + 10, np.float32)
    for cut, hf, cand in ((1, 1.0, None), (3, 1.0, 30), (3, 1.5, 30), (None, 2.0, 50), (5, 1.2, K), (2, 1.0, 5)):
        for lv in (None, live):
            kw = dict(query_cut=cut, heap_factor=hf)
            got = run(impact_topk_approx, idx, queries, K, lv, forward=idx.forward, candidates=cand, window=64, **kw)
            check_rows(*got)
            k1 = max(K, cand or K)
            phase1 = run(impact_topk_approx, idx, queries, k1, lv, window=64, **kw)[1]
            assert_same(got, forward_rescore_ref(*queries, idx.term_scale, idx.forward, phase1, K))
            D, I = got
            hit = I >= 0
            np.testing.assert_array_equal(D[hit], F[np.nonzero(hit)[0], I[hit]])  # exact whole-query scores
            for q in range(NQ):
                assert set(I[q][I[q] >= 0].tolist()) <= set(phase1[q][phase1[q] >= 0].tolist())
            assert_same(idx.search(qm, K, lv, candidates=cand, window=64, **kw), got)


@pytest.mark.parametrize("bs", [1, 64])
def test_rescoring_with_every_term_is_exact(data, indexes, bs):
    _, _, queries, live = data
    idx = indexes[(16, bs)]
    every = int(np.diff(queries[0]).max())
    for lv in (None, live):
        exact = run(impact_topk_exact, idx, queries, K, lv)
        for cand in (None, K, 3 * K):
            got = run(impact_topk_approx, idx, queries, K, lv, query_cut=every, forward=idx.forward, candidates=cand)
            assert recall(got[1], exact[1]) == 1.0
            assert_same(got, exact)


# ---------------------------------------------------------------------------------------------------------
# 6. block arrays
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("bs", [1, 3, 64])
def test_block_arrays(indexes, bits, bs):
    idx = indexes[(bits, bs)]
    assert idx.block_size == bs
    check_blocks(idx)
    assert idx.n_blocks == sum(math.ceil(n / bs) for n in np.diff(idx.indptr))
    if bs == 1:
        np.testing.assert_array_equal(idx.block_max, idx.impacts)
        np.testing.assert_array_equal(idx.block_first, idx.docs)


# ---------------------------------------------------------------------------------------------------------
# 7. persistence
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("forward", [True, False])
def test_save_load_round_trip(tmp_path, data, mmap, forward):
    X, _, queries, live = data
    idx = ImpactIndex.from_csr(X, bits=16, block_size=3, keep_top=300, forward=forward)
    files = idx.save(tmp_path / "imp")
    assert len(files) == 10 + 3 * forward and all((tmp_path / "imp" / f).exists() for f in files)
    for f in files[:-1]:
        np.load(tmp_path / "imp" / f, allow_pickle=False)  # plain arrays, no pickle
    back = ImpactIndex.load(tmp_path / "imp", mmap=mmap)
    assert isinstance(back.docs, np.memmap) == mmap and back.has_forward == forward
    assert back.meta() == idx.meta() and back.nbytes == idx.nbytes and repr(back) == repr(idx)
    names = INV_ARRAYS + (FWD_ARRAYS if forward else ())
    assert idx.nbytes == sum((tmp_path / "imp" / f).stat().st_size - 128 for f in files[:-1])
    for name in names:
        a, b = getattr(idx, name), getattr(back, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    qm = query_matrix(queries, VOCAB, np.float32)
    for kw in ({}, {"query_cut": 4}, {"query_cut": 4, "heap_factor": 1.2, "candidates": 30}, {"heap_factor": 2.0}):
        if "candidates" in kw and not forward:
            with pytest.raises(ValueError, match="candidates needs a forward index"):
                back.search(qm, K, live, **kw)
            continue
        assert_same(back.search(qm, K, live, **kw), idx.search(qm, K, live, **kw))
    assert_same(run(impact_topk_exact, back, queries, K), run(impact_topk_exact, idx, queries, K))


def _saved_small(tmp_path):
    idx = ImpactIndex.from_csr(sp.random(20, 5, density=0.5, random_state=0, format="csr", dtype=np.float32))
    idx.save(tmp_path)
    ImpactIndex.load(tmp_path)  # loads as saved
    return idx, json.loads((tmp_path / "impact_meta.json").read_text())


@pytest.mark.parametrize("change", [{"format": 1}, {"format": None}, {"vocab_size": 4}, {"nnz": 1}, {"bits": 16},
                                    {"n_docs": 21}, {"n_terms": 4}, {"n_terms": 6}, {"term_scale_fill": None}])
def test_load_rejects_bad_metadata(tmp_path, change):
    _, meta = _saved_small(tmp_path)
    meta.update(change)
    (tmp_path / "impact_meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format|match"):
        ImpactIndex.load(tmp_path)


@pytest.mark.parametrize("name,bad", [("impacts", lambda a: a.astype(np.uint16)),
                                      ("term_scale", lambda a: a[:-1]),
                                      ("terms", lambda a: a[::-1]),
                                      ("terms", lambda a: a.astype(np.int64)),
                                      ("fwd_indptr", lambda a: a[:-1]),
                                      ("fwd_impacts", lambda a: a[:-1])])
def test_load_rejects_bad_arrays(tmp_path, name, bad):
    idx, _ = _saved_small(tmp_path)
    arr = np.load(tmp_path / f"impact_{name}.npy") if name in ("terms", "term_scale") else getattr(idx, name)
    np.save(tmp_path / f"impact_{name}.npy", bad(arr))
    with pytest.raises(ValueError, match="match"):
        ImpactIndex.load(tmp_path)


def save_format_2(idx, directory):
    """Write ``idx`` in impact format 2, as hylex wrote segments before format 3 (every per-term array
    vocabulary-sized)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = INV_ARRAYS + (FWD_ARRAYS if idx.has_forward else ())
    for name in names:
        np.save(directory / f"impact_{name}.npy", np.ascontiguousarray(getattr(idx, name)), allow_pickle=False)
    (directory / "impact_meta.json").write_text(json.dumps({**idx.meta(), "format": 2}))


@pytest.mark.parametrize("max_weight", [None, 16.0])
def test_small_index_stores_only_its_terms(tmp_path, max_weight):
    """Issue 12 item 15: three documents over a 49,152-term vocabulary took ~0.9 MiB (three vocabulary-sized
    per-term arrays); only the terms present are stored now, and loading gives back the same arrays exactly."""
    V = 49152
    rng = np.random.default_rng(3)
    X = sp.random(3, V, density=40 / V, random_state=rng, format="csr", dtype=np.float32)
    X.data = (X.data * 5).astype(np.float32)
    idx = ImpactIndex.from_csr(X, bits=16, max_weight=max_weight)
    files = idx.save(tmp_path / "imp")
    size = sum((tmp_path / "imp" / f).stat().st_size for f in files)
    assert size < 16 << 10, size  # was 983,440 bytes (indptr, block_indptr, term_scale sized V)
    back = ImpactIndex.load(tmp_path / "imp")
    assert back.vocab_size == V and back.meta() == idx.meta()
    for name in INV_ARRAYS + FWD_ARRAYS:
        a, b = getattr(idx, name), getattr(back, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    q = sp.random(4, V, density=30 / V, random_state=rng, format="lil", dtype=np.float32)
    q[0, int(X.indices[0])] = 1.0  # at least one hit
    q = q.tocsr()
    assert_same(back.search(q, 3), idx.search(q, 3))


@pytest.mark.parametrize("forward", [True, False])
def test_format_2_layout_is_read(tmp_path, data, indexes, forward):
    """Segments written before format 3 (vocabulary-sized per-term arrays) still load, memory-mapped, and search
    bit for bit as before; saving them again writes format 3 with the same content."""
    X, _, queries, live = data
    idx = indexes[(16, 3)] if forward else ImpactIndex.from_csr(X, bits=16, block_size=3, forward=False)
    save_format_2(idx, tmp_path / "old")
    old = ImpactIndex.load(tmp_path / "old")
    assert isinstance(old.indptr, np.memmap) and len(old.indptr) == VOCAB + 1
    for name in INV_ARRAYS + (FWD_ARRAYS if forward else ()):
        np.testing.assert_array_equal(getattr(old, name), getattr(idx, name))
    qm = query_matrix(queries, VOCAB, np.float32)
    for kw in ({}, {"query_cut": 4}, {"heap_factor": 1.5}):
        assert_same(old.search(qm, K, live, **kw), idx.search(qm, K, live, **kw))
    old.save(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "impact_meta.json").read_text())["format"] == 3
    assert_same(ImpactIndex.load(tmp_path / "new").search(qm, K, live), idx.search(qm, K, live))


# ---------------------------------------------------------------------------------------------------------
# 8. threads
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs numba with at least 2 threads")
@pytest.mark.parametrize("bits,bs", [(8, 3), (16, 64)])
def test_parallel_equals_single_thread(data, indexes, bits, bs):
    _, _, queries, live = data
    idx = indexes[(bits, bs)]
    calls = [(impact_topk_exact, {}), (impact_topk_exact, {"window": 7}),
             (impact_topk_approx, {"query_cut": 3, "heap_factor": 1.3, "window": 64}),
             (impact_topk_approx, {"query_cut": 2, "forward": idx.forward, "candidates": 40}),
             (impact_topk_approx, {"heap_factor": 2.0, "forward": idx.forward, "window": 7})]
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = [run(fn, idx, queries, K, lv, **kw) for fn, kw in calls for lv in (None, live)]
        numba.set_num_threads(2)
        assert numba.get_num_threads() == 2
        multi = [run(fn, idx, queries, K, lv, **kw) for fn, kw in calls for lv in (None, live)]
    finally:
        numba.set_num_threads(old)
    for a, b in zip(single, multi):
        assert_same(b, a)
    assert_same(multi[0], run(impact_topk_ref, idx, queries, K))
    assert_same(multi[3], run(impact_topk_ref, idx, queries, K, live))


# ---------------------------------------------------------------------------------------------------------
# small random cases (hypothesis)
# ---------------------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), n_docs=st.integers(1, 70), V=st.integers(1, 12), bs=st.integers(1, 9),
       k=st.integers(1, 12), bits=st.sampled_from([8, 16]), window=st.sampled_from([1, 2, 5, 64]),
       integer=st.booleans())
def test_property_small(seed, n_docs, V, bs, k, bits, window, integer):
    rng = np.random.default_rng(seed)
    X = sp.random(n_docs, V, density=0.4, random_state=rng, format="csr", dtype=np.float32)
    if integer:
        X.data = np.ceil(X.data * 3)
    idx = ImpactIndex.from_csr(X, bits=bits, block_size=bs)
    qs = []
    for _ in range(6):
        t = rng.choice(V + 2, int(rng.integers(0, V + 3)), replace=False)
        w = rng.integers(0, 3, len(t)) if integer else rng.uniform(0, 2, len(t))
        qs.append((t, w))
    queries = ragged(qs)
    live = rng.random(n_docs) < 0.8
    Q, q_scale = query_int(queries, idx.term_scale)
    S = int_scores(Q, inverted_matrix(idx))
    for lv in (None, live):
        want = topk_oracle(S, q_scale, k, lv)
        assert_same(run(impact_topk_ref, idx, queries, k, lv), want)
        assert_same(run(impact_topk_exact, idx, queries, k, lv, window=window), want)
        kw = dict(query_cut=2, heap_factor=1.5, window=window)
        phase1 = run(impact_topk_approx, idx, queries, k + 2, lv, **kw)[1]
        got = run(impact_topk_approx, idx, queries, k, lv, forward=idx.forward, candidates=k + 2, **kw)
        assert_same(got, forward_rescore_ref(*queries, idx.term_scale, idx.forward, phase1, k))


# ---------------------------------------------------------------------------------------------------------
# 9. invalid input
# ---------------------------------------------------------------------------------------------------------


def _kernel_args():
    # term 0: docs 0, 1; term 1: docs 1, 2
    X = sp.csr_matrix(np.array([[1, 0], [2, 1], [0, 3]], np.float32))
    idx = ImpactIndex.from_csr(X, bits=8, block_size=1)
    args = dict(q_indptr=np.array([0, 2], np.int64), q_terms=np.array([0, 1], np.int64),
                q_weights=np.array([1.0, 0.5], np.float32), k=2)
    args.update(zip(KERNEL_ARG_NAMES, idx.kernel_args()))
    return args, idx


def test_kernel_args_are_valid():
    args, idx = _kernel_args()
    for fn in (impact_topk_exact, impact_topk_ref, impact_topk_approx):
        D, I = fn(**args)
        np.testing.assert_array_equal(I, [[1, 2]])


@pytest.mark.parametrize("fn", [impact_topk_exact, impact_topk_ref, impact_topk_approx])
@pytest.mark.parametrize("change,match", [
    ({"q_weights": np.array([1.0, -0.5], np.float32)}, "q_weights must be >= 0"),
    ({"q_weights": np.array([np.nan, 1.0], np.float32)}, "q_weights must be finite"),
    ({"q_weights": np.array([1.0], np.float32)}, "same length"),
    ({"q_terms": np.array([-1, 0])}, "q_terms must be >= 0"),
    ({"q_terms": np.array([0.0, 1.0])}, "q_terms"),
    ({"q_indptr": np.array([0, 1])}, "q_indptr"),
    ({"k": 0}, "k must be"), ({"k": 1.5}, "k must be"), ({"n_docs": -1}, "n_docs"),
    ({"term_scale": np.ones(3, np.float32)}, "term_scale must hold one factor per term"),
    ({"term_scale": np.ones(1, np.float32)}, "term_scale must hold one factor per term"),
    ({"term_scale": np.array([1.0, -1.0], np.float32)}, "term_scale must be finite and >= 0"),
    ({"term_scale": np.array([np.inf, 1.0], np.float32)}, "term_scale must be finite and >= 0"),
    ({"impacts": np.array([1, 2, 3, 4], np.float32)}, "impacts must be a 1-D uint8 or uint16"),
    ({"impacts": np.array([1, 2, 3, 4], np.int32)}, "impacts must be a 1-D uint8 or uint16"),
    ({"impacts": np.array([1, 2, 3], np.uint8)}, "same length"),
    ({"block_max": np.array([1, 2, 3, 4], np.uint16)}, "block_max must have the dtype of impacts"),
    ({"block_max": np.array([1, 2, 3], np.uint8)}, "block_first and block_last must have the length"),
    ({"block_first": np.array([0, 1], np.int32)}, "block_first and block_last must have the length"),
    ({"block_last": np.array([0, 1, 1, 2, 2], np.int32)}, "block_first and block_last must have the length"),
    ({"block_indptr": np.array([0, 1, 4], np.int64)}, "block_indptr must give each term"),
    ({"block_indptr": np.array([0, 4], np.int64)}, "block_indptr must have the length of indptr"),
    ({"block_indptr": np.array([0, 2, 3], np.int64)}, "block_indptr must start at 0 and end at 4"),
    ({"block_size": 2}, "block_indptr must give each term"),
    ({"block_size": 0}, "block_size must be an integer >= 1"),
    ({"block_size": 1.0}, "block_size must be an integer >= 1"),
    ({"docs": np.array([0, 1, 1, 5], np.int32)}, "doc ids"),
    ({"docs": np.array([-1, 1, 1, 2], np.int32)}, "doc ids"),
    ({"docs": np.array([0, 1, 1, 2**32 + 1], np.int64)}, "doc ids"),  # would wrap into range as int32
    ({"live": np.ones(4, bool)}, "live must have shape"),
    ({"live": np.ones(3, np.float64)}, "live must have dtype"),
    ({"live": np.ones(3, np.int64)}, "live must have dtype"),
])
def test_kernel_invalid(fn, change, match):
    args, _ = _kernel_args()
    args.update(change)
    with pytest.raises(ValueError, match=match):
        fn(**args)


@pytest.mark.parametrize("fn", [impact_topk_exact, impact_topk_approx])
@pytest.mark.parametrize("window", [0, -3, 1.5, True, (1 << 24) + 1, None])
def test_window_invalid(fn, window):
    args, _ = _kernel_args()
    with pytest.raises(ValueError, match="window"):
        fn(**args, window=window)


@pytest.mark.parametrize("kw,match", [
    ({"heap_factor": 0.5}, "heap_factor"), ({"heap_factor": 0.999}, "heap_factor"), ({"heap_factor": 0}, "heap_factor"),
    ({"heap_factor": -1.0}, "heap_factor"), ({"heap_factor": float("nan")}, "heap_factor"),
    ({"heap_factor": float("inf")}, "heap_factor"), ({"heap_factor": "1"}, "heap_factor"),
    ({"heap_factor": True}, "heap_factor"), ({"heap_factor": None}, "heap_factor"),
    ({"query_cut": 0}, "query_cut"), ({"query_cut": -1}, "query_cut"), ({"query_cut": 2.0}, "query_cut"),
    ({"query_cut": True}, "query_cut"),
    ({"candidates": 5}, "candidates needs a forward index"),
    ({"candidates": 5, "query_cut": 1}, "candidates needs a forward index"),
    ({"candidates": 0, "forward": "fwd"}, ">= 1"),
    ({"forward": "list"}, "forward must be a tuple"),
    ({"forward": "short_indptr"}, "fwd_indptr"),
    ({"forward": "term_out_of_range"}, "fwd_terms"),
    ({"forward": "float_terms"}, "fwd_terms"),
    ({"forward": "impacts_dtype"}, "fwd_impacts"),
    ({"forward": "impacts_length"}, "fwd_impacts"),
])
def test_approx_invalid(kw, match):
    args, idx = _kernel_args()
    p, t, m = idx.forward
    forwards = {"fwd": idx.forward, "list": list(idx.forward), "short_indptr": (p[:-1], t, m),
                "term_out_of_range": (p, np.where(t == 1, 2, t).astype(t.dtype), m),
                "float_terms": (p, t.astype(np.float32), m), "impacts_dtype": (p, t, m.astype(np.uint16)),
                "impacts_length": (p, t, m[:-1])}
    if "forward" in kw:
        kw = dict(kw, forward=forwards[kw["forward"]])
    with pytest.raises(ValueError, match=match):
        impact_topk_approx(**args, **kw)


@pytest.mark.parametrize("kw,match", [({"heap_factor": 0.9}, "heap_factor"), ({"query_cut": 0}, "query_cut"),
                                      ({"window": 0}, "window")])
def test_search_invalid(kw, match):
    _, idx = _kernel_args()
    with pytest.raises(ValueError, match=match):
        idx.search(sp.csr_matrix(np.array([[1.0, 0.0]], np.float32)), 2, **kw)


@pytest.mark.parametrize("kw,match", [
    ({"bits": 4}, "bits"), ({"bits": 8.0}, "bits"), ({"bits": True}, "bits"),
    ({"block_size": 0}, "block_size"), ({"block_size": 2.5}, "block_size"),
    ({"keep_top": 0}, "keep_top"), ({"keep_top": 1.5}, "keep_top"),
    ({"keep_fraction": 0.0}, "keep_fraction"), ({"keep_fraction": 1.5}, "keep_fraction"),
    ({"keep_fraction": float("nan")}, "keep_fraction"),
    ({"max_weight": 0.0}, "max_weight"), ({"max_weight": -1.0}, "max_weight"),
    ({"max_weight": float("nan")}, "max_weight"), ({"max_weight": float("inf")}, "max_weight"),
    ({"max_weight": "2"}, "max_weight"), ({"max_weight": 0.01}, "max_weight"),
    ({"negative": True}, "finite and >= 0"), ({"nan": True}, "finite and >= 0"), ({"inf": True}, "finite and >= 0"),
])
def test_from_csr_invalid(kw, match):
    X = sp.random(10, 6, density=0.5, random_state=0, format="csr", dtype=np.float32)
    kw = dict(kw)  # the parametrized dict is shared by both backends' runs
    for key, value in (("negative", -1.0), ("nan", np.nan), ("inf", np.inf)):
        if kw.pop(key, False):
            X.data[0] = value
    with pytest.raises(ValueError, match=match):
        ImpactIndex.from_csr(X, **kw)


def test_repeated_query_terms_count_twice_in_exact_and_rescored_search():
    X = sp.csr_matrix(np.array([[1, 0], [0, 1], [1, 1]], np.float32))
    idx = ImpactIndex.from_csr(X)
    q = (np.array([0, 3]), np.array([0, 0, 1]), np.ones(3, np.float32))  # term 0 twice
    D, I = impact_topk_exact(*q, *idx.kernel_args(), 3)
    Dr, Ir = impact_topk_approx(*q, *idx.kernel_args(), 3, query_cut=3, forward=idx.forward, candidates=3)
    assert_same((Dr, Ir), (D, I))
    assert I[0, 0] == 2 and D[0, 0] == pytest.approx(3.0, rel=1e-4)  # 2 x term 0 + term 1
    # a csr query with a duplicate entry is summed by ImpactIndex.search
    qm = sp.csr_matrix((np.ones(3, np.float32), np.array([0, 0, 1]), np.array([0, 3])), shape=(1, 2))
    Ds, Is = idx.search(qm, 3)
    np.testing.assert_array_equal(Is, I)
    np.testing.assert_allclose(Ds, D, rtol=1e-4)  # (a weight of 2 moves the 16-bit query scale)


# ---------------------------------------------------------------------------------------------------------
# selective masks: the allowed documents scored through the forward index
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frac", [0.0, 0.002, 0.02, 0.2])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_subset_scoring_equals_exact_with_a_mask(data, tie_data, indexes, frac, k):
    """impact_topk_subset over the allowed rows == the exact search (and the reference) with that live mask, bit
    for bit, ties included; ImpactIndex.search takes that path for selective masks and gives the same."""
    from hylex.kernels.blockmax import impact_topk_subset

    rng = np.random.default_rng(int(frac * 1000) + k)
    for X, queries, idx in ((data[0], data[2], indexes[(16, 64)]),
                            (tie_data[0], tie_data[1], ImpactIndex.from_csr(tie_data[0], bits=8, block_size=3))):
        n = X.shape[0]
        live = rng.random(n) < frac
        rows = np.flatnonzero(live)
        got = impact_topk_subset(*queries, idx.term_scale, idx.forward, rows, k)
        assert_same(got, run(impact_topk_ref, idx, queries, k, live))
        assert_same(got, run(impact_topk_exact, idx, queries, k, live))
        q_csr = sp.csr_matrix((queries[2], queries[1], queries[0]), shape=(len(queries[0]) - 1, X.shape[1]))
        via_index = idx.search(q_csr, k, live)
        assert_same(via_index, run(impact_topk_exact, idx, queries, k, live))


def test_subset_path_is_taken_only_when_cheaper(data, indexes):
    idx = indexes[(16, 64)]
    queries = data[2]
    q_csr = sp.csr_matrix((queries[2], queries[1], queries[0]), shape=(len(queries[0]) - 1, idx.vocab_size))
    few = np.zeros(idx.n_docs, bool)
    few[:3] = True
    assert idx._selective(few, q_csr) is not None
    assert idx._selective(np.ones(idx.n_docs, bool), q_csr) is None
    assert idx._selective(None, q_csr) is None
    pruned = ImpactIndex.from_csr(data[0], bits=16, block_size=64, keep_top=5)
    assert pruned._selective(few, q_csr) is None  # forward postings differ from the pruned lists
