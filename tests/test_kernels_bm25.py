"""hylex.kernels.bm25: the numba BM25 kernel against its NumPy reference, a hand example, and input checks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hylex.kernels import bm25_topk, bm25_topk_ref, kernel_backend


@pytest.fixture(scope="module", autouse=True, params=["numba", "numpy"])
def backend(request):
    """Every test runs on the compiled kernels and on their NumPy twins (the path of small workloads, chosen by
    hylex.kernels.topk.SMALL_WORK): both must match the references, hand examples and input checks."""
    with kernel_backend(request.param):
        yield request.param


def make_segment(rng, n_docs, T, density, max_tf=4, empty_docs=0):
    """Random tf postings: (post_indptr, post_docs, post_tf, doc_len, tf matrix (n_docs, T))."""
    tf = np.where(rng.random((n_docs, T)) < density, rng.integers(1, max_tf + 1, (n_docs, T)), 0)
    if empty_docs:
        tf[rng.choice(n_docs, empty_docs, replace=False)] = 0
    doc_len = tf.sum(1) + rng.integers(0, 5, n_docs) * (tf.sum(1) > 0)  # words of other terms too
    indptr = np.concatenate(([0], np.cumsum((tf > 0).sum(0)))).astype(np.int64)
    docs = np.concatenate([np.flatnonzero(tf[:, t]) for t in range(T)]).astype(np.int32)
    tfs = np.concatenate([tf[tf[:, t] > 0, t] for t in range(T)]).astype(np.float32)
    return indptr, docs, tfs, doc_len.astype(np.float32), tf


def make_queries(rng, nq, T, absent=0.2):
    """Ragged queries over rows of the term table, with absent terms (-1), repeats and an empty query."""
    lens = rng.integers(0, 6, nq)
    lens[0] = 0
    indptr = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
    terms = rng.integers(0, T, indptr[-1]).astype(np.int32)
    terms[rng.random(indptr[-1]) < absent] = -1
    if nq > 1 and lens[1] >= 2:
        terms[indptr[1] + 1] = terms[indptr[1]]  # a repeated term
    idf = rng.uniform(0.1, 3.0, indptr[-1]).astype(np.float32)
    return indptr, terms, idf


def brute(qi, qt, qidf, tf, doc_len, k1, b, avgdl):
    """float64 scores (nq, n_docs) straight from the formula."""
    S = np.zeros((len(qi) - 1, tf.shape[0]))
    for q in range(len(qi) - 1):
        for j in range(qi[q], qi[q + 1]):
            t = qt[j]
            if t < 0:
                continue
            d = np.flatnonzero(tf[:, t])
            f = tf[d, t].astype(np.float64)
            S[q, d] += float(qidf[j]) * f / (f + k1 * (1 - b + b * doc_len[d] / avgdl))
    return S


def check_row_order(D, I):
    for d, i in zip(D, I):
        n = int((i >= 0).sum())
        assert (i[:n] >= 0).all() and (i[n:] == -1).all() and np.all(d[n:] == -np.inf)
        for a in range(n - 1):
            assert d[a] > d[a + 1] or (d[a] == d[a + 1] and i[a] < i[a + 1])


CASES = [
    # seed, n_docs, T, density, nq, k, k1, b, with_live
    (0, 60, 12, 0.3, 25, 5, 0.9, 0.4, False),
    (1, 250, 40, 0.05, 40, 10, 1.2, 0.75, True),
    (2, 30, 6, 0.6, 20, 50, 0.9, 0.4, False),     # k > hits
    (3, 300, 20, 0.1, 70, 1, 1.5, 1.0, True),
    (4, 1, 3, 1.0, 5, 3, 0.5, 0.0, False),
    (5, 120, 50, 0.03, 500, 7, 2.0, 0.3, True),   # more queries than threads: buffers reused
]


@pytest.mark.parametrize("seed,n_docs,T,density,nq,k,k1,b,with_live", CASES)
def test_bm25_matches_ref_and_formula(seed, n_docs, T, density, nq, k, k1, b, with_live):
    rng = np.random.default_rng(seed)
    pi, pd, ptf, dl, tf = make_segment(rng, n_docs, T, density, empty_docs=min(2, n_docs - 1))
    qi, qt, qidf = make_queries(rng, nq, T)
    avgdl = float(dl.mean()) if dl.sum() else 1.0
    live = rng.random(n_docs) < 0.7 if with_live else None
    got = bm25_topk(qi, qt, qidf, pi, pd, ptf, dl, k1, b, avgdl, n_docs, k, live=live)
    want = bm25_topk_ref(qi, qt, qidf, pi, pd, ptf, dl, k1, b, avgdl, n_docs, k, live=live)
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64 and got[0].shape == (nq, k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])  # same float ops in the same order: bit-identical
    check_row_order(*got)
    assert np.all(got[1][0] == -1)  # the empty query
    if live is not None:
        assert live[got[1][got[1] >= 0]].all()
    # the scores are the formula's, and the hits are exactly the docs scoring > 0 (live), best first
    S = brute(qi, qt, qidf, tf, dl.astype(np.float64), k1, b, avgdl)
    D, I = got
    for q in range(nq):
        ok = S[q] > 0
        if live is not None:
            ok &= live
        n = min(k, int(ok.sum()))
        assert (I[q, :n] >= 0).all() and (I[q, n:] == -1).all()
        np.testing.assert_allclose(D[q, :n], S[q, I[q, :n]], rtol=1e-5)
        np.testing.assert_allclose(D[q, :n], np.sort(S[q, ok])[::-1][:n], rtol=1e-5)


def test_bm25_ties_by_doc_id():
    """Docs of equal tf and length tie; they come in doc id order, also across threads and with k cutting a tie."""
    n_docs = 40
    pi = np.array([0, n_docs, n_docs + 10], np.int64)
    pd = np.concatenate([np.arange(n_docs), np.arange(0, n_docs, 4)]).astype(np.int32)
    ptf = np.ones(n_docs + 10, np.float32)
    dl = np.full(n_docs, 5, np.float32)
    qi = np.array([0, 1, 3, 4], np.int64)
    qt = np.array([0, 0, 1, 1], np.int32)
    qidf = np.ones(4, np.float32)
    for k in (3, 10, 45):
        D, I = bm25_topk(qi, qt, qidf, pi, pd, ptf, dl, 0.9, 0.4, 5.0, n_docs, k)
        assert_equal = np.testing.assert_array_equal
        assert_equal(I, bm25_topk_ref(qi, qt, qidf, pi, pd, ptf, dl, 0.9, 0.4, 5.0, n_docs, k)[1])
        n0 = min(k, n_docs)
        assert_equal(I[0, :n0], np.arange(n0))  # all tie: doc ids ascending
        assert np.all(D[0, :n0] == D[0, 0])
        n1 = min(k, 10)
        assert_equal(I[1, :n1], np.arange(0, n_docs, 4)[:n1])  # the docs with both terms first
        assert_equal(I[2, :n1], np.arange(0, n_docs, 4)[:n1])


def test_bm25_hand_example():
    # term 0: doc 0 tf 1, doc 1 tf 2; term 1: doc 1 tf 1, doc 2 tf 3. Lengths 2, 4, 6 (avg 4).
    pi = np.array([0, 2, 4], np.int64)
    pd = np.array([0, 1, 1, 2], np.int32)
    ptf = np.array([1, 2, 1, 3], np.float32)
    dl = np.array([2, 4, 6], np.float32)
    k1, b = 1.2, 0.75

    def s(idf, tf, l):
        return np.float32(idf * tf / (tf + k1 * (1 - b + b * l / 4.0)))

    qi = np.array([0, 1, 3, 5, 6], np.int64)  # q0: t0; q1: t0,t1; q2: t1,t1 (repeated); q3: absent term
    qt = np.array([0, 0, 1, 1, 1, -1], np.int32)
    qidf = np.array([2.0, 2.0, 1.0, 1.0, 1.0, 5.0], np.float32)
    D, I = bm25_topk(qi, qt, qidf, pi, pd, ptf, dl, k1, b, 4.0, 3, 3)
    assert s(2, 2, 4) > s(2, 1, 2)  # tf 2 in an average doc beats tf 1 in a short one here
    assert I[0].tolist() == [1, 0, -1]
    np.testing.assert_allclose(D[0, :2], sorted([s(2, 1, 2), s(2, 2, 4)], reverse=True), rtol=1e-6)
    got1 = dict(zip(I[1].tolist(), D[1].tolist()))
    assert got1[1] == pytest.approx(float(s(2, 2, 4) + s(1, 1, 4)), rel=1e-6)
    assert got1[0] == pytest.approx(float(s(2, 1, 2)), rel=1e-6)
    assert got1[2] == pytest.approx(float(s(1, 3, 6)), rel=1e-6)
    # a repeated query term counts twice
    got2 = dict(zip(I[2].tolist(), D[2].tolist()))
    assert got2[2] == pytest.approx(2 * float(s(1, 3, 6)), rel=1e-6) and -1 in got2 and 0 not in got2
    assert np.all(I[3] == -1) and np.all(D[3] == -np.inf)
    # b = 0 ignores lengths: tf 1 in any doc scores idf / (1 + k1)
    D, I = bm25_topk(qi[:2], qt[:1], qidf[:1], pi, pd, ptf, dl, k1, 0.0, 4.0, 3, 3)
    assert D[0, 1] == pytest.approx(2.0 / (1 + k1), rel=1e-6) and I[0, 1] == 0


def test_bm25_empty_shapes():
    pi, pd, ptf = np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    D, I = bm25_topk(np.zeros(1, np.int64), [], [], pi, pd, ptf, np.ones(10, np.float32), 0.9, 0.4, 1.0, 10, 3)
    assert D.shape == (0, 3) and I.shape == (0, 3)
    D, I = bm25_topk([0, 1], [2], [1.0], pi, pd, ptf, np.zeros(0, np.float32), 0.9, 0.4, 1.0, 0, 2)
    assert D.shape == (1, 2) and np.all(I == -1) and np.all(D == -np.inf)
    D, I = bm25_topk([0, 2], [-1, -1], [1.0, 1.0], pi, pd, ptf, np.ones(5, np.float32), 0.9, 0.4, 1.0, 5, 2)
    assert np.all(I == -1)


def _args():
    return dict(q_indptr=np.array([0, 1], np.int64), q_terms=np.array([0], np.int32),
                q_idf=np.array([1.0], np.float32), post_indptr=np.array([0, 2], np.int64),
                post_docs=np.array([0, 1], np.int32), post_tf=np.array([1.0, 2.0], np.float32),
                doc_len=np.array([3.0, 4.0], np.float32), k1=0.9, b=0.4, avgdl=3.5, n_docs=2, k=2)


@pytest.mark.parametrize("fn", [bm25_topk, bm25_topk_ref])
@pytest.mark.parametrize("change,msg", [
    ({"k": 0}, "k must be"), ({"k": 1.5}, "k must be"),
    ({"n_docs": -1}, "n_docs"),
    ({"k1": 0.0}, "k1"), ({"k1": -1.0}, "k1"), ({"k1": math.inf}, "k1"), ({"k1": True}, "k1"),
    ({"b": -0.1}, "b must"), ({"b": 1.5}, "b must"), ({"b": math.nan}, "b must"),
    ({"avgdl": 0.0}, "avgdl"), ({"avgdl": math.nan}, "avgdl"),
    ({"q_idf": np.array([1.0, 2.0], np.float32)}, "same length"),
    ({"q_idf": np.array([np.inf], np.float32)}, "q_idf must be finite"),
    ({"q_indptr": np.array([0, 2], np.int64)}, "q_indptr"),
    ({"q_terms": np.array([-2], np.int32)}, "q_terms"),
    ({"q_terms": np.array([1], np.int32)}, "q_terms"),           # row beyond the term table
    ({"q_terms": np.array([0.0])}, "q_terms"),
    ({"post_tf": np.array([1.0], np.float32)}, "same length"),
    ({"post_tf": np.array([1.0, 0.0], np.float32)}, "post_tf"),
    ({"post_tf": np.array([1.0, np.nan], np.float32)}, "post_tf"),
    ({"post_indptr": np.array([0, 1], np.int64)}, "post_indptr"),
    ({"post_docs": np.array([0, 2], np.int32)}, "post_docs"),
    ({"post_docs": np.array([0, 2**32 + 1], np.int64)}, "post_docs"),
    ({"doc_len": np.array([1.0], np.float32)}, "doc_len"),
    ({"doc_len": np.array([1.0, -1.0], np.float32)}, "doc_len"),
    ({"live": np.ones(3, bool)}, "live"), ({"live": np.ones(2, np.float64)}, "live"),
])
def test_bm25_invalid(fn, change, msg):
    with pytest.raises(ValueError, match=msg):
        fn(**{**_args(), **change})
