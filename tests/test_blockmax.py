"""Tests of the impact index (hylex.indexing.impact) and its block-max kernels (hylex.kernels.blockmax): exact
kernel == NumPy reference == brute force (scipy product on the dequantized weights), approximate modes,
quantization, static pruning, persistence and input validation."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from hylex.indexing.impact import ImpactIndex
from hylex.kernels import sparse_topk
from hylex.kernels.blockmax import impact_topk_approx, impact_topk_exact, impact_topk_ref

N_DOCS, VOCAB, NQ, K = 2000, 500, 50, 10

# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------


def zipf_docs(rng, n_docs, V, mean_nnz=30, a=1.1, integer=False):
    """csr (n_docs, V) float32: ~mean_nnz distinct terms per doc drawn by Zipf-like popularity."""
    p = 1.0 / np.arange(1, V + 1) ** a
    p /= p.sum()
    ids = rng.permutation(V)  # popular terms scattered over the vocabulary
    rows, cols = [], []
    for d in range(n_docs):
        n = int(np.clip(rng.poisson(mean_nnz), 1, min(V, 3 * mean_nnz)))
        t = ids[rng.choice(V, n, replace=False, p=p)]
        rows.append(np.full(n, d))
        cols.append(t)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    vals = rng.integers(1, 4, rows.size) if integer else rng.lognormal(0.0, 0.7, rows.size)
    return sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(n_docs, V))


def make_queries(rng, X, nq, mean_nnz=10, oov=5, integer=False, negative=False):
    """Ragged queries: half of each query's terms from a random doc, half Zipf-random, some OOV; query 0 is
    empty and query 1 has only out-of-vocabulary terms."""
    n_docs, V = X.shape
    indptr, terms = [0], []
    for q in range(nq):
        if q == 0:
            t = np.zeros(0, np.int64)
        elif q == 1:
            t = V + np.arange(2)
        else:
            doc = X.indices[X.indptr[d := rng.integers(n_docs)]:X.indptr[d + 1]]
            n = max(1, rng.poisson(mean_nnz))
            t = np.concatenate((rng.choice(doc, min(len(doc), n // 2 + 1), replace=False),
                                rng.integers(0, V + oov, n - n // 2 - 1)))
            t = np.unique(t)
        terms.append(t)
        indptr.append(indptr[-1] + len(t))
    terms = np.concatenate(terms).astype(np.int64)
    w = rng.integers(1, 4, terms.size) if integer else rng.uniform(0.1, 2.0, terms.size)
    if negative:
        w = w * rng.choice([-1, 1], terms.size, p=[0.3, 0.7])
    return np.asarray(indptr, np.int64), terms, w.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1234)
    X = zipf_docs(rng, N_DOCS, VOCAB)
    qi, qt, qw = make_queries(rng, X, NQ)
    live = rng.random(N_DOCS) < 0.8
    return X, (qi, qt, qw), live


@pytest.fixture(scope="module")
def indexes(data):
    X = data[0]
    return {(bits, bs): ImpactIndex.from_csr(X, bits=bits, block_size=bs) for bits in (8, 16) for bs in (1, 7, 64)}


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def run(fn, idx, queries, k, live=None, **kw):
    qi, qt, qw = queries
    return fn(qi, qt, qw, *idx.kernel_args(), k, live, **kw)


def query_matrix(queries, V):
    qi, qt, qw = queries
    rows = np.repeat(np.arange(len(qi) - 1), np.diff(qi))
    ok = qt < V
    return sp.csr_matrix((qw[ok].astype(np.float64), (rows[ok], qt[ok])), shape=(len(qi) - 1, V))


def brute_scores(idx, queries):
    """float64 (nq, n_docs) dot products on the dequantized weights (scipy)."""
    return (query_matrix(queries, idx.vocab_size) @ idx.to_csr().astype(np.float64).T).toarray()


def check_rows(D, I):
    assert D.dtype == np.float32 and I.dtype == np.int64
    for d, i in zip(D, I):
        n = int((i >= 0).sum())
        assert (i[:n] >= 0).all() and (i[n:] == -1).all() and (d[n:] == -np.inf).all()
        assert len(set(i[:n].tolist())) == n
        for a in range(n - 1):
            assert d[a] > d[a + 1] or (d[a] == d[a + 1] and i[a] < i[a + 1])


def check_brute(D, I, S, k, live=None, rtol=1e-5):
    """Scores match brute force; ids match wherever scores are distinct (up to ties)."""
    for q in range(S.shape[0]):
        s = S[q].copy()
        ok = s > 0
        if live is not None:
            ok &= live
        cand = np.flatnonzero(ok)
        want = np.sort(s[cand])[::-1][:k]
        n = len(want)
        assert int((I[q] >= 0).sum()) == n
        np.testing.assert_allclose(D[q, :n], want, rtol=rtol)
        np.testing.assert_allclose(D[q, :n], s[I[q, :n]], rtol=rtol)
        if n:
            kth = want[-1]
            sure = cand[s[cand] > kth * (1 + 2 * rtol)]  # docs that beat the k-th score beyond rounding
            assert set(sure.tolist()) <= set(I[q, :n].tolist())


def recall(I_approx, I_exact):
    hits = total = 0
    for a, e in zip(I_approx, I_exact):
        e = set(e[e >= 0].tolist())
        hits += len(e & set(a[a >= 0].tolist()))
        total += len(e)
    return hits / max(total, 1)


# ---------------------------------------------------------------------------------------------------------
# index building
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
def test_quantization_round_trip(data, indexes, bits):
    X = data[0]
    idx = indexes[(bits, 64)]
    assert idx.impacts.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert idx.scale == float(np.float32(X.data.max() / (2 ** bits - 1)))
    assert (idx.impacts > 0).all() and idx.impacts.max() == 2 ** bits - 1
    err = abs(idx.to_csr() - X).max()  # covers postings dropped because they quantize to 0
    assert err <= idx.scale / 2 * (1 + 1e-5) + 1e-7 * X.data.max()
    assert idx.to_csr().shape == X.shape and idx.nnz <= X.nnz


@pytest.mark.parametrize("bs", [1, 7, 64])
def test_block_structure(indexes, bs):
    idx = indexes[(8, bs)]
    assert idx.indptr.dtype == np.int64 and idx.block_indptr.dtype == np.int64
    assert idx.docs.dtype == np.int32 and idx.block_first.dtype == np.int32 and idx.block_last.dtype == np.int32
    assert idx.block_max.dtype == idx.impacts.dtype
    for t in range(idx.vocab_size):
        lo, hi = idx.indptr[t], idx.indptr[t + 1]
        docs, imp = idx.docs[lo:hi], idx.impacts[lo:hi]
        assert np.all(np.diff(docs) > 0)
        bl, bh = idx.block_indptr[t], idx.block_indptr[t + 1]
        assert bh - bl == -(-(hi - lo) // bs)
        for j, b in enumerate(range(bl, bh)):
            seg = slice(j * bs, (j + 1) * bs)
            assert idx.block_max[b] == imp[seg].max()
            assert idx.block_first[b] == docs[seg][0] and idx.block_last[b] == docs[seg][-1]
    assert idx.nbytes == sum(a.nbytes for a in (idx.indptr, idx.docs, idx.impacts, idx.block_indptr, idx.block_max,
                                                 idx.block_first, idx.block_last))


def test_static_pruning(data):
    X = data[0]
    csc = X.tocsc()
    lens = np.diff(csc.indptr)
    for kw, limit in (({"keep_top": 20}, np.minimum(lens, 20)),
                      ({"keep_fraction": 0.3}, np.ceil(0.3 * lens).astype(int)),
                      ({"keep_top": 20, "keep_fraction": 0.3}, np.minimum(20, np.ceil(0.3 * lens).astype(int)))):
        idx = ImpactIndex.from_csr(X, bits=16, block_size=8, **kw)
        assert idx.keep_top == kw.get("keep_top") and idx.keep_fraction == kw.get("keep_fraction")
        got = np.diff(idx.indptr)
        assert np.all(got <= limit) and np.all(got >= limit - 1)  # -1: a kept weight may quantize to 0
        for t in range(0, VOCAB, 37):  # the kept postings are the term's largest
            w = np.sort(csc.data[csc.indptr[t]:csc.indptr[t + 1]])[::-1]
            if len(w) > limit[t]:
                kept = idx.dequantized()[idx.indptr[t]:idx.indptr[t + 1]]
                assert kept.min() >= w[limit[t]] - idx.scale
    assert np.all(np.diff(idx.docs[idx.indptr[3]:idx.indptr[4]]) > 0)


# ---------------------------------------------------------------------------------------------------------
# exact kernel
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("bs", [1, 7, 64])
@pytest.mark.parametrize("with_live", [False, True])
def test_exact_matches_ref_and_brute_force(data, indexes, bits, bs, with_live):
    _, queries, live = data
    live = live if with_live else None
    idx = indexes[(bits, bs)]
    got = run(impact_topk_exact, idx, queries, K, live)
    want = run(impact_topk_ref, idx, queries, K, live)
    np.testing.assert_array_equal(got[1], want[1])  # same docs, same tie order, bit-identical scores
    np.testing.assert_array_equal(got[0], want[0])
    check_rows(*got)
    check_brute(*got, brute_scores(idx, queries), K, live)
    # the plain inverted-index kernel on the dequantized weights agrees bit for bit too
    qi, qt, qw = queries
    sp_got = sparse_topk(qi, qt, qw, idx.indptr, idx.docs, idx.dequantized(), idx.n_docs, K, live)
    np.testing.assert_array_equal(got[1], sp_got[1])
    np.testing.assert_array_equal(got[0], sp_got[0])
    assert np.all(got[1][:2] == -1) and np.all(got[0][:2] == -np.inf)  # empty query, OOV-only query
    if live is not None:
        assert live[got[1][got[1] >= 0]].all()


@pytest.mark.parametrize("k", [1, 3, 100, 2500])
def test_exact_k_values_and_k_beyond_hits(data, indexes, k):
    _, queries, _ = data
    idx = indexes[(8, 7)]
    got = run(impact_topk_exact, idx, queries, k)
    want = run(impact_topk_ref, idx, queries, k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    if k == 2500:  # more slots than docs: every hit is returned, the rest is padding
        S = brute_scores(idx, queries)
        assert np.array_equal((got[1] >= 0).sum(1), (S > 0).sum(1))


@pytest.mark.parametrize("seed,bs", [(5, 1), (6, 4), (7, 64)])
def test_exact_ties_and_negative_weights(seed, bs):
    """Three distinct doc weights and integer query weights: many tied scores; negative query weights."""
    rng = np.random.default_rng(seed)
    X = zipf_docs(rng, 600, 60, mean_nnz=12, integer=True)
    idx = ImpactIndex.from_csr(X, bits=8, block_size=bs)
    for negative in (False, True):
        queries = make_queries(rng, X, 40, mean_nnz=6, integer=True, negative=negative)
        for k in (1, 5, 20):
            got = run(impact_topk_exact, idx, queries, k)
            want = run(impact_topk_ref, idx, queries, k)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])
            check_rows(*got)
            assert np.all(got[0][got[1] >= 0] > 0)


def test_exact_hand_example():
    # term 0: docs 0,1,2 weight 1; term 1: doc 3 weight 2, doc 1 weight 1. scale = float32(2/255) and
    # 1 / scale = 127.4999..., so weight 1 quantizes to 127: doc 1 (2 * 127 * scale) ranks below doc 3 (255 * scale)
    X = sp.csr_matrix(np.array([[1, 0], [1, 1], [1, 0], [0, 2], [0, 0]], np.float32))
    idx = ImpactIndex.from_csr(X, bits=8, block_size=1)
    np.testing.assert_array_equal(idx.impacts, [127, 127, 127, 127, 255])
    w1, w2 = np.float32(127) * np.float32(idx.scale), np.float32(255) * np.float32(idx.scale)
    qi, qt, qw = np.array([0, 2, 3, 3, 4]), np.array([0, 1, 0, 9]), np.ones(4, np.float32)
    for fn in (impact_topk_exact, impact_topk_ref):
        D, I = fn(qi, qt, qw, *idx.kernel_args(), 4)
        np.testing.assert_array_equal(I, [[3, 1, 0, 2], [0, 1, 2, -1], [-1] * 4, [-1] * 4])
        np.testing.assert_array_equal(D[0], [w2, w1 + w1, w1, w1])
        D, I = fn(qi, qt, qw, *idx.kernel_args(), 2, live=np.array([1, 0, 1, 1, 1], bool))
        np.testing.assert_array_equal(I[:2], [[3, 0], [0, 2]])


def test_empty_shapes():
    idx = ImpactIndex.from_csr(sp.csr_matrix((10, 4), dtype=np.float32))
    assert idx.nnz == 0 and idx.scale == 0.0 and idx.n_blocks == 0
    D, I = impact_topk_exact([0, 1], [2], [1.0], *idx.kernel_args(), 3)
    assert D.shape == (1, 3) and np.all(I == -1) and np.all(D == -np.inf)
    D, I = impact_topk_exact(np.zeros(1, np.int64), [], [], *idx.kernel_args(), 3)  # nq = 0
    assert D.shape == (0, 3) and I.shape == (0, 3)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_docs=st.integers(1, 60), V=st.integers(1, 12), bs=st.integers(1, 9),
       k=st.integers(1, 12), bits=st.sampled_from([8, 16]), integer=st.booleans())
def test_exact_property(seed, n_docs, V, bs, k, bits, integer):
    rng = np.random.default_rng(seed)
    X = sp.random(n_docs, V, density=0.4, random_state=rng, format="csr", dtype=np.float32)
    if integer:
        X.data = np.ceil(X.data * 3)
    idx = ImpactIndex.from_csr(X, bits=bits, block_size=bs)
    queries = make_queries(rng, X, 8, mean_nnz=4, integer=integer, negative=bool(seed % 2)) if X.nnz else \
        (np.array([0, 1]), np.array([0]), np.array([1.0], np.float32))
    got = run(impact_topk_exact, idx, queries, k)
    want = run(impact_topk_ref, idx, queries, k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


# ---------------------------------------------------------------------------------------------------------
# approximate kernel
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bs", [7, 64])
def test_approx_defaults_equal_exact(data, indexes, bs):
    _, queries, live = data
    idx = indexes[(8, bs)]
    exact = run(impact_topk_exact, idx, queries, K, live)
    for kw in ({}, {"query_cut": None, "heap_factor": 1.0}, {"heap_factor": 0.7}, {"query_cut": 1000}):
        got = run(impact_topk_approx, idx, queries, K, live, **kw)
        np.testing.assert_array_equal(got[1], exact[1])
        np.testing.assert_array_equal(got[0], exact[0])
    D, I = idx.search(query_matrix(queries, VOCAB + 5).astype(np.float32), K, live)
    np.testing.assert_array_equal(I, exact[1])
    np.testing.assert_allclose(D, exact[0], rtol=1e-6)


def cut_queries(queries, idx, cut):
    """The query_cut truncation spelled out: each query's ``cut`` heaviest in-vocabulary terms with postings."""
    qi, qt, qw = queries
    lens = np.diff(idx.indptr)
    out_i, out_t, out_w = [0], [], []
    for q in range(len(qi) - 1):
        t, w = qt[qi[q]:qi[q + 1]], qw[qi[q]:qi[q + 1]]
        ok = np.flatnonzero((t < idx.vocab_size) & (lens[np.minimum(t, idx.vocab_size - 1)] > 0))
        keep = np.sort(ok[sorted(range(len(ok)), key=lambda j: (-w[ok[j]], ok[j]))[:cut]])
        out_t.append(t[keep])
        out_w.append(w[keep])
        out_i.append(out_i[-1] + len(keep))
    return np.asarray(out_i, np.int64), np.concatenate(out_t), np.concatenate(out_w)


def test_approx_query_cut_is_exact_on_the_truncated_query(data, indexes):
    _, queries, live = data
    exact = run(impact_topk_exact, indexes[(8, 64)], queries, K)
    recalls = {}
    for bs in (7, 64):
        idx = indexes[(8, bs)]
        for cut in (1, 3, 5, 8):
            cq = cut_queries(queries, idx, cut)
            assert np.diff(cq[0]).max() <= cut
            for lv in (None, live):
                got = run(impact_topk_approx, idx, queries, K, lv, query_cut=cut)
                want = run(impact_topk_ref, idx, cq, K, lv)
                np.testing.assert_array_equal(got[1], want[1])
                np.testing.assert_array_equal(got[0], want[0])
            check_brute(*got, brute_scores(idx, cq), K, live)
            recalls[cut] = recall(run(impact_topk_approx, idx, queries, K, query_cut=cut)[1], exact[1])
    n_terms = np.diff(cut_queries(queries, indexes[(8, 64)], 10**6)[0])[2:]
    print(f"\nrecall@{K} vs exact by query_cut (heap_factor 1; queries have {n_terms.mean():.1f} terms on average, "
          f"median {np.median(n_terms):.0f}): {recalls}")
    assert recalls[1] <= recalls[3] <= recalls[5] <= recalls[8]
    assert recalls[8] >= 0.9


def test_approx_heap_factor_prunes_more(data, indexes):
    _, queries, _ = data
    idx = indexes[(8, 7)]
    exact = run(impact_topk_exact, idx, queries, K)
    S = brute_scores(idx, queries)
    recalls = {}
    for hf in (1.1, 1.5, 3.0):
        D, I = run(impact_topk_approx, idx, queries, K, heap_factor=hf)
        check_rows(D, I)
        hit = I >= 0
        rows = np.nonzero(hit)[0]
        np.testing.assert_allclose(D[hit], S[rows, I[hit]], rtol=1e-5)  # scores of returned docs are exact
        recalls[hf] = recall(I, exact[1])
    print(f"\nrecall@{K} vs exact by heap_factor (no query_cut): {recalls}")
    assert recalls[1.1] >= recalls[1.5] >= recalls[3.0] and recalls[1.1] >= 0.8
    # both knobs together: exact scores of the truncated query
    cq = cut_queries(queries, idx, 5)
    D, I = run(impact_topk_approx, idx, queries, K, query_cut=5, heap_factor=1.2)
    hit = I >= 0
    np.testing.assert_allclose(D[hit], brute_scores(idx, cq)[np.nonzero(hit)[0], I[hit]], rtol=1e-5)


def test_static_pruning_search(data):
    X, queries, _ = data
    full = ImpactIndex.from_csr(X, bits=8, block_size=16)
    pruned = ImpactIndex.from_csr(X, bits=8, block_size=16, keep_fraction=0.5)
    got = run(impact_topk_exact, pruned, queries, K)
    want = run(impact_topk_ref, pruned, queries, K)  # exact with respect to the pruned index
    np.testing.assert_array_equal(got[1], want[1])
    r = recall(got[1], run(impact_topk_exact, full, queries, K)[1])
    print(f"\nrecall@{K} of keep_fraction=0.5 ({pruned.nnz}/{full.nnz} postings) vs the full index: {r:.3f}")
    assert r >= 0.7


# ---------------------------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, data, mmap):
    X, queries, live = data
    idx = ImpactIndex.from_csr(X, bits=16, block_size=7, keep_top=300)
    files = idx.save(tmp_path / "imp")
    assert len(files) == 8 and all((tmp_path / "imp" / f).exists() for f in files)
    back = ImpactIndex.load(tmp_path / "imp", mmap=mmap)
    if mmap:
        assert isinstance(back.docs, np.memmap)
    assert back.meta() == idx.meta() and back.nbytes == idx.nbytes
    for name in ("indptr", "docs", "impacts", "block_indptr", "block_max", "block_first", "block_last"):
        a, b = getattr(idx, name), getattr(back, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    for kw in ({}, {"query_cut": 4, "heap_factor": 1.2}):
        a = run(impact_topk_approx, idx, queries, K, live, **kw)
        b = run(impact_topk_approx, back, queries, K, live, **kw)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_load_rejects_mismatch(tmp_path):
    idx = ImpactIndex.from_csr(sp.random(20, 5, density=0.5, random_state=0, format="csr", dtype=np.float32))
    idx.save(tmp_path)
    np.save(tmp_path / "impact_impacts.npy", idx.impacts.astype(np.uint16))
    with pytest.raises(ValueError):
        ImpactIndex.load(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# invalid input
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    {"bits": 4}, {"bits": 8.0}, {"block_size": 0}, {"block_size": 2.5}, {"keep_top": 0}, {"keep_fraction": 0.0},
    {"keep_fraction": 1.5}, {"negative": True}, {"nan": True},
])
def test_from_csr_invalid(kw):
    X = sp.random(10, 6, density=0.5, random_state=0, format="csr", dtype=np.float32)
    if kw.pop("negative", False):
        X.data[0] = -1.0
    if kw.pop("nan", False):
        X.data[0] = np.nan
    with pytest.raises(ValueError):
        ImpactIndex.from_csr(X, **kw)


def _kernel_args():
    X = sp.csr_matrix(np.array([[1, 0], [2, 1], [0, 3]], np.float32))
    idx = ImpactIndex.from_csr(X, bits=8, block_size=1)
    names = ("indptr", "docs", "impacts", "block_indptr", "block_max", "block_first", "block_last", "scale",
             "block_size", "n_docs")
    args = dict(q_indptr=np.array([0, 2], np.int64), q_terms=np.array([0, 1], np.int64),
                q_weights=np.array([1.0, 0.5], np.float32), k=2)
    args.update(zip(names, idx.kernel_args()))
    return args


@pytest.mark.parametrize("fn", [impact_topk_exact, impact_topk_ref, impact_topk_approx])
@pytest.mark.parametrize("change", [
    {"k": 0}, {"k": 1.5}, {"n_docs": -1},
    {"q_terms": np.array([-1, 0])}, {"q_terms": np.array([0.0, 1.0])}, {"q_weights": np.array([1.0], np.float32)},
    {"q_weights": np.array([np.nan, 1], np.float32)}, {"q_indptr": np.array([0, 1])},
    {"docs": np.array([0, 1, 5, 2], np.int32)},                      # doc id >= n_docs
    {"docs": np.array([0, 1, 2**32 + 1, 2], np.int64)},              # would wrap into range as int32
    {"impacts": np.array([1, 2, 3, 4], np.float32)},                 # not uint8/uint16
    {"impacts": np.array([1, 2, 3], np.uint8)},                      # length != docs
    {"block_max": np.array([1, 2, 3, 4], np.uint16)},                # dtype != impacts
    {"block_indptr": np.array([0, 1, 4], np.int64)},                 # wrong block counts
    {"block_size": 2},                                               # inconsistent with the blocks
    {"block_size": 0},
    {"block_first": np.array([0, 1], np.int32)},
    {"scale": -1.0}, {"scale": float("nan")},
    {"live": np.ones(4, bool)}, {"live": np.ones(3, np.float64)},
])
def test_kernel_invalid(fn, change):
    args = _kernel_args()
    args.update(change)
    with pytest.raises(ValueError):
        fn(**args)


@pytest.mark.parametrize("kw", [{"query_cut": 0}, {"query_cut": 2.0}, {"heap_factor": 0.0}, {"heap_factor": -1.0},
                                {"heap_factor": float("inf")}, {"heap_factor": "1"}])
def test_approx_invalid(kw):
    with pytest.raises(ValueError):
        impact_topk_approx(**_kernel_args(), **kw)
