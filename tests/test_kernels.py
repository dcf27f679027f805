"""Tests of hylex.kernels: fusion and top-k merging against their plain references and hand examples (the sparse
kernels: test_blockmax.py; BM25: test_kernels_bm25.py)."""
from __future__ import annotations

import numpy as np
import pytest

from hylex.kernels import fuse, fuse_ref, kernel_backend, merge_topk, merge_topk_ref


@pytest.fixture(scope="module", autouse=True, params=["numba", "numpy"])
def backend(request):
    """Every test runs on the compiled kernels and on their NumPy twins (the path of small workloads, chosen by
    hylex.kernels.topk.SMALL_WORK): both must match the references, hand examples and input checks."""
    with kernel_backend(request.param):
        yield request.param

# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


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


# -- flat (dense exact) top-k ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 7, 60])
@pytest.mark.parametrize("block", [1, 13, 4096])
@pytest.mark.parametrize("mask", [None, 0.3, 0.0])
def test_flat_topk_matches_reference(seed, k, block, mask):
    from hylex.kernels.dense import flat_topk, flat_topk_ref

    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(1, 50)), 8
    # integer-valued vectors: many exact ties, which must break by row ascending in both
    X = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    q = rng.integers(-2, 3, size=(5, d)).astype(np.float32)
    allowed = None if mask is None else rng.random(n) < mask
    D, I = flat_topk(q, X, k, allowed, block=block)
    Dr, Ir = flat_topk_ref(q, X, k, allowed)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_array_equal(D, Dr)


def test_flat_topk_rejects_bad_shapes():
    from hylex.kernels.dense import flat_topk

    X = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="share d"):
        flat_topk(np.zeros((2, 5), np.float32), X, 2)
    with pytest.raises(ValueError, match="allowed must have shape"):
        flat_topk(np.zeros((2, 3), np.float32), X, 2, np.ones(5, bool))


def test_dense_flat_batches_equal_faiss(tmp_path):
    """From FLAT_BLAS_MIN_QUERIES queries on, Flat search runs through flat_topk: same hits as FAISS's own
    exact search (scores to float rounding), with and without a mask, on a memory-mapped index."""
    import faiss

    from hylex.indexing.dense import FLAT_BLAS_MIN_QUERIES, DenseIndex

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    q = rng.standard_normal((FLAT_BLAS_MIN_QUERIES + 3, 24)).astype(np.float32)
    DenseIndex.build(x, "Flat").save(tmp_path / "f.faiss")
    ix = DenseIndex.load(tmp_path / "f.faiss")
    assert ix._flat_vectors() is not None
    D, I = ix.search(q, 10)
    D2, I2 = faiss.read_index(str(tmp_path / "f.faiss")).search(q, 10)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_allclose(D, D2, atol=1e-5)
    for frac in (0.1, 0.7):  # few allowed: flat_topk; most: FAISS's BLAS search over-fetching past masked rows
        allowed = rng.random(3000) < frac
        D, I = ix.search(q, 10, allowed)
        rows = np.flatnonzero(allowed)
        S = q @ x[rows].T
        np.testing.assert_array_equal(I, rows[np.argsort(-S, axis=1, kind="stable")[:, :10]])
        np.testing.assert_allclose(D, np.sort(S, axis=1)[:, ::-1][:, :10], atol=1e-5)
