"""Tests of hylex.kernels: every numba kernel against its plain reference, brute force, and hand examples."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from hylex.kernels import fuse, fuse_ref, merge_topk, merge_topk_ref, sparse_topk, sparse_topk_ref

# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def make_index(rng, n_docs, V, density, integer):
    """Random inverted index; returns (X csr (n_docs, V), post_indptr, post_docs, post_weights)."""
    mask = rng.random((n_docs, V)) < density
    vals = rng.integers(1, 4, (n_docs, V)) if integer else rng.uniform(0.05, 2.0, (n_docs, V))
    X = sp.csc_matrix(np.where(mask, vals, 0).astype(np.float32))
    X.sort_indices()
    return X.tocsr(), X.indptr.astype(np.int64), X.indices.astype(np.int32), X.data.astype(np.float32)


def make_queries(rng, nq, V, integer, oov=3, negative=False):
    """Ragged random queries with out-of-vocabulary terms, an empty query and an OOV-only query."""
    lens = rng.integers(0, 7, nq)
    if nq >= 2:
        lens[0] = 0  # empty query
        lens[1] = 2  # only out-of-vocabulary terms
    indptr = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
    terms = rng.integers(0, V + oov, indptr[-1]).astype(np.int32)
    if nq >= 2:
        terms[indptr[1]:indptr[2]] = V + np.arange(2)
    weights = rng.integers(1, 4, indptr[-1]) if integer else rng.uniform(0.05, 2.0, indptr[-1])
    if negative:
        weights = weights * rng.choice([-1, 1], indptr[-1])
    return indptr, terms, weights.astype(np.float32)


def check_row_order(D, I):
    """Rows: hits first, score descending, ties by doc id ascending; padding is -1 / -inf."""
    for d, i in zip(D, I):
        hit = i >= 0
        n = int(hit.sum())
        assert hit[:n].all() and not hit[n:].any()
        assert np.all(d[n:] == -np.inf)
        for a in range(n - 1):
            assert d[a] > d[a + 1] or (d[a] == d[a + 1] and i[a] < i[a + 1])
        assert len(set(i[:n].tolist())) == n


def assert_same(got, want):
    (gD, gI), (wD, wI) = got, want
    assert gD.dtype == np.float32 and gI.dtype == np.int64
    assert gD.shape == wD.shape and gI.shape == wI.shape
    np.testing.assert_array_equal(gI, wI)
    np.testing.assert_allclose(gD, wD, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# sparse_topk
# ---------------------------------------------------------------------------------------------------------

SPARSE_CASES = [
    # seed, n_docs, V, density, nq, k, integer, with_live
    (0, 50, 10, 0.3, 20, 5, False, False),
    (1, 200, 40, 0.05, 33, 10, False, True),
    (2, 30, 8, 0.5, 17, 50, True, False),   # k > hits, many ties
    (3, 300, 25, 0.1, 64, 1, True, True),
    (4, 1, 3, 1.0, 5, 3, True, False),
    (5, 120, 60, 0.02, 40, 7, False, True),
]


@pytest.mark.parametrize("seed,n_docs,V,density,nq,k,integer,with_live", SPARSE_CASES)
def test_sparse_matches_ref(seed, n_docs, V, density, nq, k, integer, with_live):
    rng = np.random.default_rng(seed)
    _, pi, pd, pw = make_index(rng, n_docs, V, density, integer)
    qi, qt, qw = make_queries(rng, nq, V, integer)
    live = rng.random(n_docs) < 0.7 if with_live else None
    got = sparse_topk(qi, qt, qw, pi, pd, pw, n_docs, k, live=live)
    assert_same(got, sparse_topk_ref(qi, qt, qw, pi, pd, pw, n_docs, k, live=live))
    check_row_order(*got)
    assert np.all(got[1][0] == -1) and np.all(got[1][1] == -1)  # empty query, OOV-only query
    if live is not None:
        assert live[got[1][got[1] >= 0]].all()


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_sparse_negative_query_weights(seed):
    """Scores <= 0 are not hits, even for touched docs; a doc whose sum returns to 0 is not duplicated."""
    rng = np.random.default_rng(seed)
    _, pi, pd, pw = make_index(rng, 80, 12, 0.3, True)
    qi, qt, qw = make_queries(rng, 30, 12, True, negative=True)
    got = sparse_topk(qi, qt, qw, pi, pd, pw, 80, 20)
    assert_same(got, sparse_topk_ref(qi, qt, qw, pi, pd, pw, 80, 20))
    check_row_order(*got)
    assert np.all(got[0][got[1] >= 0] > 0)


@pytest.mark.parametrize("seed,with_live", [(20, False), (21, True), (22, False)])
def test_sparse_brute_force_scipy(seed, with_live):
    """Integer weights keep every float32 score exact, so the scipy product must agree bit for bit."""
    rng = np.random.default_rng(seed)
    n_docs, V, k = 150, 30, 12
    X, pi, pd, pw = make_index(rng, n_docs, V, 0.15, True)
    qi, qt, qw = make_queries(rng, 25, V, True)
    rows = np.repeat(np.arange(len(qi) - 1), np.diff(qi))
    inv = qt < V
    Q = sp.csr_matrix((qw[inv], (rows[inv], qt[inv])), shape=(len(qi) - 1, V))
    S = (Q @ X.T).toarray()
    live = rng.random(n_docs) < 0.6 if with_live else None
    D, I = sparse_topk(qi, qt, qw, pi, pd, pw, n_docs, k, live=live)
    for q in range(S.shape[0]):
        ok = S[q] > 0
        if live is not None:
            ok &= live
        docs = np.flatnonzero(ok)
        docs = docs[np.lexsort((docs, -S[q, docs]))][:k]
        n = len(docs)
        np.testing.assert_array_equal(I[q, :n], docs)
        np.testing.assert_array_equal(D[q, :n], S[q, docs].astype(np.float32))
        assert np.all(I[q, n:] == -1) and np.all(D[q, n:] == -np.inf)


def test_sparse_hand_example_and_tie_order():
    # term 0: docs 0,1,2 weight 1; term 1: doc 3 weight 2, doc 1 weight 1
    pi = np.array([0, 3, 5], np.int64)
    pd = np.array([0, 1, 2, 1, 3], np.int32)
    pw = np.array([1, 1, 1, 1, 2], np.float32)
    qi = np.array([0, 2, 3, 3, 4], np.int64)  # q0: terms 0,1; q1: term 0; q2: empty; q3: OOV term 7
    qt = np.array([0, 1, 0, 7], np.int32)
    qw = np.array([1, 1, 1, 1], np.float32)
    D, I = sparse_topk(qi, qt, qw, pi, pd, pw, 5, 4)
    # q0: doc1 = 2, doc3 = 2, doc0 = 1, doc2 = 1 -> ties by doc id ascending
    np.testing.assert_array_equal(I[0], [1, 3, 0, 2])
    np.testing.assert_array_equal(D[0], [2, 2, 1, 1])
    np.testing.assert_array_equal(I[1], [0, 1, 2, -1])
    np.testing.assert_array_equal(D[1], [1, 1, 1, -np.inf])
    assert np.all(I[2:] == -1) and np.all(D[2:] == -np.inf)
    live = np.array([1, 0, 1, 1, 1], np.uint8)
    D, I = sparse_topk(qi, qt, qw, pi, pd, pw, 5, 2, live=live)
    np.testing.assert_array_equal(I[0], [3, 0])
    np.testing.assert_array_equal(I[1], [0, 2])


def test_sparse_empty_shapes():
    pi, pd, pw = np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    D, I = sparse_topk(np.zeros(1, np.int64), [], [], pi, pd, pw, 10, 3)  # nq = 0
    assert D.shape == (0, 3) and I.shape == (0, 3)
    D, I = sparse_topk([0, 1], [2], [1.0], pi, pd, pw, 0, 2)  # n_docs = 0, empty index
    assert D.shape == (1, 2) and np.all(I == -1) and np.all(D == -np.inf)


def test_sparse_many_queries_reuse_buffers():
    """More queries than threads: per-thread buffers must be fully reset between queries."""
    rng = np.random.default_rng(30)
    _, pi, pd, pw = make_index(rng, 400, 50, 0.08, False)
    qi, qt, qw = make_queries(rng, 500, 50, False)
    assert_same(sparse_topk(qi, qt, qw, pi, pd, pw, 400, 8), sparse_topk_ref(qi, qt, qw, pi, pd, pw, 400, 8))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_docs=st.integers(1, 40), V=st.integers(1, 10),
       k=st.integers(1, 12), integer=st.booleans())
def test_sparse_property(seed, n_docs, V, k, integer):
    rng = np.random.default_rng(seed)
    _, pi, pd, pw = make_index(rng, n_docs, V, 0.4, integer)
    qi, qt, qw = make_queries(rng, 6, V, integer)
    assert_same(sparse_topk(qi, qt, qw, pi, pd, pw, n_docs, k), sparse_topk_ref(qi, qt, qw, pi, pd, pw, n_docs, k))


def _sparse_args():
    return dict(q_indptr=np.array([0, 1], np.int64), q_terms=np.array([0], np.int32),
                q_weights=np.array([1.0], np.float32), post_indptr=np.array([0, 2], np.int64),
                post_docs=np.array([0, 1], np.int32), post_weights=np.array([1.0, 2.0], np.float32),
                n_docs=2, k=2)


@pytest.mark.parametrize("fn", [sparse_topk, sparse_topk_ref])
@pytest.mark.parametrize("change", [
    {"k": 0}, {"k": -1}, {"k": 1.5}, {"k": True},
    {"n_docs": -1},
    {"q_weights": np.array([1.0, 2.0], np.float32)},           # length != q_terms
    {"q_indptr": np.array([0, 2], np.int64)},                    # does not end at len(q_terms)
    {"q_indptr": np.array([1, 1], np.int64)},                    # does not start at 0
    {"q_terms": np.array([-1], np.int32)},
    {"q_terms": np.array([0.0])},                                # float term ids
    {"q_weights": np.array([np.nan], np.float32)},
    {"post_weights": np.array([1.0], np.float32)},               # length != post_docs
    {"post_indptr": np.array([0, 1], np.int64)},
    {"post_indptr": np.array([0, 3, 2], np.int64)},               # decreasing
    {"post_docs": np.array([0, 2], np.int32)},                   # doc id >= n_docs
    {"post_docs": np.array([0, 2**32 + 1], np.int64)},           # would wrap into range as int32
    {"live": np.ones(3, bool)},
    {"live": np.ones(2, np.float64)},
])
def test_sparse_invalid(fn, change):
    args = _sparse_args()
    args.update(change)
    with pytest.raises(ValueError):
        fn(**args)


# ---------------------------------------------------------------------------------------------------------
# fusion
# ---------------------------------------------------------------------------------------------------------


def make_arms(rng, n_arms, nq, depth, n_docs, integer):
    """Random arm lists with duplicates, interspersed and trailing padding, and integer scores for ties."""
    I = rng.integers(0, n_docs, (n_arms, nq, depth)).astype(np.int64)
    D = (rng.integers(0, 5, I.shape) if integer else rng.normal(size=I.shape)).astype(np.float32)
    D = -np.sort(-D, axis=2)
    cut = rng.integers(0, depth + 1, (n_arms, nq, 1))
    pad = (np.arange(depth) >= cut) | (rng.random(I.shape) < 0.1)
    I[pad] = -1
    D[pad] = -np.inf
    return I, D


FUSION_CASES = [
    # seed, n_arms, nq, depth, n_docs, k, integer
    (0, 2, 20, 10, 30, 5, False),
    (1, 3, 15, 8, 12, 20, True),   # k > union, many duplicates and ties
    (2, 1, 10, 6, 100, 3, False),
    (3, 2, 40, 25, 60, 10, True),
    (4, 4, 5, 1, 3, 2, True),
]


@pytest.mark.parametrize("method", ["convex", "rrf"])
@pytest.mark.parametrize("seed,n_arms,nq,depth,n_docs,k,integer", FUSION_CASES)
def test_fuse_matches_ref(method, seed, n_arms, nq, depth, n_docs, k, integer):
    rng = np.random.default_rng(seed)
    I, D = make_arms(rng, n_arms, nq, depth, n_docs, integer)
    weights = (rng.integers(1, 3, n_arms) if integer else rng.uniform(0.1, 1.0, n_arms)).astype(np.float32)
    got = fuse(I, D, weights, method, k, rrf_k=10.0 if integer else 60.0)
    assert_same(got, fuse_ref(I, D, weights, method, k, rrf_k=10.0 if integer else 60.0))
    check_row_order(*got)
    union = [set(I[:, q][I[:, q] >= 0].tolist()) for q in range(nq)]
    for q in range(nq):
        assert int((got[1][q] >= 0).sum()) == min(k, len(union[q]))


def test_fuse_hand_example():
    # arm 0: docs 1 (3.0), 2 (2.0), 3 (1.0), 1 again (dup, dropped); arm 1: docs 3 (5.0), 1 (4.0)
    I = np.array([[[1, 2, 3, 1]], [[3, 1, -1, -1]]], np.int64)
    D = np.array([[[3, 2, 1, 0.5]], [[5, 4, -np.inf, -np.inf]]], np.float32)
    w = np.array([1.0, 0.5], np.float32)
    # convex: arm 0 norms 1, .5, 0 ; arm 1 norms doc3 1, doc1 0
    # doc1 = 1 + 0 = 1, doc3 = 0 + .5 = .5, doc2 = .5 -> tie doc2 < doc3
    for fn in (fuse, fuse_ref):
        Dc, Ic = fn(I, D, w, "convex", 4)
        np.testing.assert_array_equal(Ic, [[1, 2, 3, -1]])
        np.testing.assert_allclose(Dc, [[1.0, 0.5, 0.5, -np.inf]])
    # rrf (rrf_k=1): doc1 = 1/2 + .5/3, doc2 = 1/3, doc3 = 1/4 + .5/2
    for fn in (fuse, fuse_ref):
        Dr, Ir = fn(I, D, w, "rrf", 2, rrf_k=1.0)
        np.testing.assert_array_equal(Ir, [[1, 3]])
        np.testing.assert_allclose(Dr, [[1 / 2 + 0.5 / 3, 1 / 4 + 0.5 / 2]], rtol=1e-6)
        # doc2 (1/3) loses to doc3 (0.5) ; with k=3 it comes last
        Dr, Ir = fn(I, D, w, "rrf", 3, rrf_k=1.0)
        np.testing.assert_array_equal(Ir, [[1, 3, 2]])


def test_fuse_constant_arm_and_empty_query():
    # one arm with all-equal scores -> every hit normalises to 1.0; second query has no hits at all
    I = np.array([[[4, 2, 9], [-1, -1, -1]]], np.int64)
    D = np.array([[[7, 7, 7], [-np.inf, -np.inf, -np.inf]]], np.float32)
    for fn in (fuse, fuse_ref):
        Do, Io = fn(I, D, [2.0], "convex", 4)
        np.testing.assert_array_equal(Io, [[2, 4, 9, -1], [-1, -1, -1, -1]])
        np.testing.assert_array_equal(Do, [[2, 2, 2, -np.inf], [-np.inf] * 4])


def test_fuse_empty_shapes():
    D, I = fuse(np.zeros((2, 0, 5), np.int64), np.zeros((2, 0, 5), np.float32), [1, 1], "rrf", 3)
    assert D.shape == (0, 3) and I.shape == (0, 3)
    D, I = fuse(np.zeros((2, 3, 0), np.int64), np.zeros((2, 3, 0), np.float32), [1, 1], "convex", 2)
    assert np.all(I == -1) and np.all(D == -np.inf) and I.shape == (3, 2)


@pytest.mark.parametrize("fn", [fuse, fuse_ref])
@pytest.mark.parametrize("change", [
    {"k": 0}, {"method": "sum"}, {"method": None},
    {"weights": np.ones(3, np.float32)},
    {"weights": np.array([1.0, np.inf], np.float32)},
    {"D": np.zeros((2, 2, 4), np.float32)},                     # shape != I
    {"I": np.zeros((2, 2), np.int64), "D": np.zeros((2, 2), np.float32)},
    {"D": np.full((2, 2, 3), np.nan, np.float32)},              # non-finite score of a valid hit
    {"I": np.zeros((2, 2, 3))},                                  # float ids
    {"rrf_k": -1.0}, {"rrf_k": float("nan")},
])
def test_fuse_invalid(fn, change):
    args = dict(I=np.zeros((2, 2, 3), np.int64), D=np.zeros((2, 2, 3), np.float32),
                weights=np.ones(2, np.float32), method="rrf", k=2)
    args.update(change)
    with pytest.raises(ValueError):
        fn(**args)


# ---------------------------------------------------------------------------------------------------------
# merge_topk
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,nq,m,k,integer", [(0, 10, 20, 5, False), (1, 7, 6, 10, True),
                                                   (2, 30, 40, 40, True), (3, 4, 1, 1, False)])
def test_merge_matches_ref(seed, nq, m, k, integer):
    rng = np.random.default_rng(seed)
    I = np.stack([rng.permutation(10 * m)[:m] for _ in range(nq)]).astype(np.int64)  # distinct per row
    D = (rng.integers(0, 4, (nq, m)) if integer else rng.normal(size=(nq, m))).astype(np.float32)
    holes = rng.random((nq, m)) < 0.3
    I[holes] = -1
    D[holes] = np.where(rng.random(holes.sum()) < 0.5, -np.inf, 100.0)  # a missing hit's score is ignored
    got = merge_topk(D, I, k)
    assert_same(got, merge_topk_ref(D, I, k))
    check_row_order(*got)


def test_merge_hand_example_and_empty():
    D = np.array([[1.0, 3.0, -np.inf, 3.0, 2.0]], np.float32)
    I = np.array([[7, 9, -1, 4, 5]], np.int64)
    Do, Io = merge_topk(D, I, 6)
    np.testing.assert_array_equal(Io, [[4, 9, 5, 7, -1, -1]])
    np.testing.assert_array_equal(Do, [[3, 3, 2, 1, -np.inf, -np.inf]])
    Do, Io = merge_topk(np.zeros((3, 0), np.float32), np.zeros((3, 0), np.int64), 2)
    assert Io.shape == (3, 2) and np.all(Io == -1) and np.all(Do == -np.inf)


@pytest.mark.parametrize("fn", [merge_topk, merge_topk_ref])
@pytest.mark.parametrize("D,I,k", [
    (np.zeros((2, 3)), np.zeros((2, 3), np.int64), 0),
    (np.zeros((2, 3)), np.zeros((2, 4), np.int64), 2),
    (np.zeros(3), np.zeros(3, np.int64), 2),
    (np.array([[np.nan]]), np.array([[0]]), 1),
])
def test_merge_invalid(fn, D, I, k):
    with pytest.raises(ValueError):
        fn(D, I, k)
