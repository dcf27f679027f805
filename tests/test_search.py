"""Searcher: result shapes and padding, argument errors, fusion semantics, attached documents."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import SPARSE_ATOL, FakeEncoder, brute_force
from hylex.errors import HylexError
from hylex.indexing import Index
from hylex.kernels import fuse_ref
from hylex.retrieval import Results, Searcher

MODES = ("dense", "sparse", "hybrid")


@pytest.fixture(scope="module")
def searcher(built_index, fake_encoder):
    ix = Index.open(built_index)
    yield Searcher(ix, encoder=fake_encoder)
    ix.close()


def _vectors(queries, mode):
    """Pre-encoded queries for ``mode``: a plain hybrid search fuses the stored arms (dense, sparse, bm25 for
    the fake model), so it gets the bm25 texts too."""
    texts, qd, qs = queries
    return {"dense": qd if mode in ("dense", "hybrid") else None,
            "sparse": qs if mode in ("sparse", "hybrid") else None,
            "bm25_queries": texts if mode == "hybrid" else None}


# -- shapes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fusion", ["convex", "rrf"])
def test_results_shape(searcher, queries, mode, fusion):
    texts = queries[0]
    for k in (1, 7):
        r = searcher.search(None, k=k, mode=mode, fusion=fusion, **_vectors(queries, mode))
        assert isinstance(r, Results) and r.mode == mode
        assert r.shape == (len(texts), k) and len(r) == len(texts)
        assert r.ids.shape == r.rows.shape == r.scores.shape == (len(texts), k)
        assert r.scores.dtype == np.float32 and r.rows.dtype == np.int64
        assert all(i is not None for i in r.ids[:-1].ravel())  # topical queries fill k <= 7 hits
        if mode == "sparse":  # the last query matches no document's words
            assert r.ids[-1].tolist() == [None] * k and np.isneginf(r.scores[-1]).all()
        fin = r.scores[:-1]
        assert (fin[:, 1:] <= fin[:, :-1] + 1e-6).all()
        assert r.documents is None
    # one text query, and text queries equal their pre-encoded vectors
    one = searcher.search(texts[3], k=4, mode=mode, fusion=fusion)
    assert one.shape == (1, 4)
    many = searcher.search(texts, k=4, mode=mode, fusion=fusion)
    pre = searcher.search(None, k=4, mode=mode, fusion=fusion, **_vectors(queries, mode))
    assert many.ids.tolist() == pre.ids.tolist()
    np.testing.assert_array_equal(many.scores, pre.scores)
    assert one.ids[0].tolist() == many.ids[3].tolist()


@pytest.mark.parametrize("mode", MODES)
def test_k_larger_than_corpus_is_capped_at_the_live_documents(searcher, queries, docs, mode):
    k = 260  # more than the 200 documents: the results hold one slot per document, not k
    r = searcher.search(None, k=k, mode=mode, **_vectors(queries, mode))
    assert r.shape == (len(queries[0]), len(docs))
    for q in range(r.shape[0]):
        valid = r.rows[q] >= 0
        n = int(valid.sum())
        assert n <= len(docs)
        if mode != "sparse":
            assert n == len(docs)  # every doc has a dense score
        assert valid[:n].all() and not valid[n:].any(), "hits must come before the padding"
        assert all(i is None for i in r.ids[q, n:]) and all(i is not None for i in r.ids[q, :n])
        assert np.isneginf(r.scores[q, n:]).all() and np.isfinite(r.scores[q, :n]).all()
        assert (r.rows[q, n:] == -1).all()
        assert len(set(r.rows[q, :n].tolist())) == n
        assert len(r.hits(q)) == n and len(r.to_list()[q]) == n
    # the query of unknown words has no sparse hit at all
    if mode == "sparse":
        assert r.rows[-1].max() == -1 and r.hits(len(r) - 1) == []


def test_empty_sparse_query_gives_no_hits(searcher):
    q = sp.csr_matrix((2, 1000), dtype=np.float32)
    r = searcher.search(None, k=3, mode="sparse", sparse=q)
    assert r.shape == (2, 3) and (r.rows == -1).all() and np.isneginf(r.scores).all()
    assert r.ids.tolist() == [[None] * 3] * 2


# -- argument errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,msg", [
    ({"k": 0}, "k must be a positive integer"),
    ({"k": -1}, "k must be a positive integer"),
    ({"k": 2.5}, "k must be a positive integer"),
    ({"k": True}, "k must be a positive integer"),
    ({"depth": 0}, "depth must be a positive integer"),
    ({"mode": "lexical"}, "mode 'lexical' is unknown"),
    ({"fusion": "max"}, "fusion 'max' is unknown"),
    ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ({"alpha": float("nan")}, r"alpha must be in \[0, 1\]"),
    ({"query_cut": 0}, "query_cut must be None or an integer >= 1"),
    ({"query_cut": 2.5}, "query_cut must be None or an integer >= 1"),
    ({"heap_factor": 0.5}, "heap_factor must be a number >= 1"),
    ({"heap_factor": float("inf")}, "heap_factor must be a number >= 1"),
    ({"candidates": 0}, "candidates must be None or an integer >= 1"),
])
def test_bad_arguments(searcher, queries, kwargs, msg):
    _, qd, qs = queries
    with pytest.raises(HylexError, match=msg):
        searcher.search(None, dense=qd, sparse=qs, **kwargs)
    with pytest.raises(HylexError, match=msg):
        searcher.search(["a query"], **kwargs)


def test_bad_query_vectors(searcher, queries):
    texts, qd, qs = queries
    with pytest.raises(HylexError, match=r"dense queries have shape \(\d+, 31\).*\(n, 32\)"):
        searcher.search(None, mode="dense", dense=qd[:, :31])
    with pytest.raises(HylexError, match="999 columns.*1000"):
        searcher.search(None, mode="sparse", sparse=sp.csr_matrix(qs[:, :999]))
    with pytest.raises(HylexError, match="NaN"):
        bad = qd.copy()
        bad[0, 0] = np.nan
        searcher.search(None, mode="dense", dense=bad)
    with pytest.raises(HylexError, match="scipy.sparse"):
        searcher.search(None, mode="sparse", sparse=qs.toarray())
    # finite but near float32's range: inner products would overflow to infinity (found by Schemathesis: a 500)
    for mode in ("dense", "hybrid"):
        with pytest.raises(HylexError, match="dense query 0 has norm .*L2-normalised"):
            searcher.search(None, mode=mode, dense=np.full_like(qd[:1], 3e38), sparse=qs[:1], bm25_queries=texts[:1])
    searcher.search(None, mode="dense", dense=qd[:2] * 1000)  # unnormalised but sane: accepted
    with pytest.raises(HylexError, match="same number"):
        searcher.search(None, mode="hybrid", dense=qd[:3], sparse=qs[:4])
    with pytest.raises(HylexError, match="not both"):
        searcher.search(texts[:2], mode="dense", dense=qd[:2])
    with pytest.raises(HylexError, match="not both"):
        searcher.search(texts[:2], mode="sparse", sparse=qs[:2])
    with pytest.raises(HylexError, match="needs dense and sparse"):
        searcher.search(None, mode="hybrid", dense=qd)
    with pytest.raises(HylexError, match="needs sparse"):
        searcher.search(None, mode="sparse", dense=qd)
    with pytest.raises(HylexError, match="query 1 is empty"):
        searcher.search(["fine", "  "])
    with pytest.raises(HylexError, match="finite weights >= 0"):
        neg = qs.copy()
        neg.data[0] = -1.0
        searcher.search(None, mode="sparse", sparse=neg)
    # a 1-D dense query is one query
    assert searcher.search(None, mode="dense", dense=qd[0], k=2).shape == (1, 2)


def test_searcher_refuses_encoder_of_other_dims(built_index):
    with pytest.raises(HylexError, match="dim 16.*dim 32"):
        Searcher(built_index, encoder=FakeEncoder(dim=16))
    with pytest.raises(HylexError, match="vocab 500.*vocab 1000"):
        Searcher(built_index, encoder=FakeEncoder(vocab_size=500))


def test_the_same_weights_under_another_name_query_an_index_without_a_warning(built_index, caplog):
    # a tuned folder and the shipped copy of it: same fingerprint, the settings differ only in the model's name
    import logging

    base = FakeEncoder()
    renamed = FakeEncoder(model_id="copy", settings={**base.settings, "model": "copy"})
    with caplog.at_level(logging.WARNING, logger="hylex.retrieval.searcher"):
        Searcher(built_index, encoder=renamed)
    assert "differs from the index" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="hylex.retrieval.searcher"):
        Searcher(built_index, encoder=FakeEncoder(fingerprint="fake-2"))  # other weights: warned
    assert "differs from the index" in caplog.text


def test_plain_tuple_encoder_works(built_index, fake_encoder, queries):
    """The TextEncoder protocol promises a (dense, sparse) tuple, not named fields."""
    class TupleEncoder(FakeEncoder):
        def encode_queries(self, texts):
            return tuple(super().encode_queries(texts))

    with Index.open(built_index) as ix:
        r = Searcher(ix, encoder=TupleEncoder()).search(queries[0], k=5)
        ref = Searcher(ix, encoder=fake_encoder).search(queries[0], k=5)
    assert r.ids.tolist() == ref.ids.tolist()


# -- fusion ------------------------------------------------------------------------------------------------------
def _check_hybrid_follows_arm(hyb, arm_D, arm_I, full, k, atol=1e-5):
    """Hybrid hits also in the arm's list keep the arm's order; the hybrid top-k are the arm's top-k."""
    for q in range(hyb.shape[0]):
        in_arm = set(arm_I[q][arm_I[q] >= 0].tolist())
        common = [r for r in hyb.rows[q] if r in in_arm]
        s = full[q, common]
        assert (np.diff(s) <= atol).all(), f"query {q}: hybrid order disagrees with the arm"
        # the hybrid's hits with a positive fused score are exactly the arm's best (up to ties)
        pos = hyb.rows[q][hyb.scores[q] > 1e-6]
        if len(pos):
            np.testing.assert_allclose(np.sort(full[q, pos])[::-1], np.sort(arm_D[q][arm_I[q] >= 0])[::-1][:len(pos)],
                                       atol=atol)


def test_convex_alpha_extremes_follow_one_arm(searcher, docs, fake_encoder, queries):
    _, qd, qs = queries
    X, S = brute_force(docs, fake_encoder)
    k, depth = 10, 40
    Dd, Id = searcher.search_dense(qd, depth)
    Ds, Is = searcher.search_sparse(qs, depth)
    h1 = searcher.search(None, k=k, mode="hybrid", alpha=1.0, depth=depth, dense=qd, sparse=qs)
    _check_hybrid_follows_arm(h1, Dd, Id, qd @ X.T, k)
    dense = searcher.search(None, k=k, mode="dense", dense=qd)
    np.testing.assert_allclose(np.sort((qd @ X.T)[np.arange(len(qd))[:, None], h1.rows], axis=1),
                               np.sort(dense.scores, axis=1), atol=1e-5)
    h0 = searcher.search(None, k=k, mode="hybrid", alpha=0.0, depth=depth, dense=qd, sparse=qs)
    _check_hybrid_follows_arm(h0, Ds, Is, (qs @ S.T).toarray(), k, atol=SPARSE_ATOL)
    # the two extremes differ somewhere (they really pick one arm each)
    assert h0.ids.tolist() != h1.ids.tolist()
    # the convex result equals the reference fusion of the arms
    for alpha in (0.0, 0.3, 1.0):
        h = searcher.search(None, k=k, mode="hybrid", alpha=alpha, depth=depth, dense=qd, sparse=qs)
        D, I = fuse_ref(np.stack([Id, Is]), np.stack([Dd, Ds]), [alpha, 1 - alpha], "convex", k)
        np.testing.assert_array_equal(h.rows, I)
        np.testing.assert_allclose(h.scores, D, atol=1e-6)


def test_rrf_matches_reference(searcher, queries):
    _, qd, qs = queries
    for k, depth, rrf_k in ((10, 100, 60.0), (5, 20, 1.0), (30, 30, 0.0)):
        Dd, Id = searcher.search_dense(qd, depth)
        Ds, Is = searcher.search_sparse(qs, depth)
        r = searcher.search(None, k=k, mode="hybrid", fusion="rrf", depth=depth, rrf_k=rrf_k, dense=qd, sparse=qs)
        D, I = fuse_ref(np.stack([Id, Is]), np.stack([Dd, Ds]), [1.0, 1.0], "rrf", k, rrf_k)
        np.testing.assert_array_equal(r.rows, I)
        np.testing.assert_allclose(r.scores, D, rtol=1e-6)
        # a doc first in both arms gets the top possible score 2 / (rrf_k + 1)
        for q in range(len(qd)):
            if Id[q, 0] == Is[q, 0] >= 0:
                assert r.rows[q, 0] == Id[q, 0]
                assert r.scores[q, 0] == pytest.approx(2 / (rrf_k + 1), rel=1e-6)


# -- documents ---------------------------------------------------------------------------------------------------
def test_with_documents(searcher, docs, queries):
    by_id = {d.id: d for d in docs}
    for mode in MODES:
        r = searcher.search(queries[0], k=5, mode=mode, with_documents=True)
        assert len(r.documents) == len(queries[0]) and all(len(row) == 5 for row in r.documents)
        for q in range(len(r)):
            for j in range(5):
                doc = r.documents[q][j]
                if r.ids[q, j] is None:
                    assert doc is None
                    continue
                src = by_id[r.ids[q, j]]
                assert doc == {"id": src.id, "title": src.title, "text": src.text, "metadata": src.metadata}
        listed = r.to_list()[0][0]
        assert listed["rank"] == 1 and listed["id"] == r.ids[0, 0]
        assert listed["title"] == by_id[listed["id"]].title and listed["metadata"]["topic"] == \
            by_id[listed["id"]].metadata["topic"]
    # k past the corpus: one slot per document, each holding its document
    r = searcher.search(queries[0][:1], k=205, mode="dense", with_documents=True)
    assert len(r.documents[0]) == 200 and all(d is not None for d in r.documents[0])


def test_topical_queries_find_their_topic(searcher, docs, queries):
    """A sanity check that the fake encoder and index make sense: topic queries hit docs of that topic."""
    texts = queries[0][:20]
    by_id = {d.id: d for d in docs}
    for mode in MODES:
        r = searcher.search(texts, k=5, mode=mode)
        right = [by_id[r.ids[q, 0]].metadata["topic"] == text.split()[0] for q, text in enumerate(texts)]
        # sparse and hybrid get every topic; a 32-d random projection blurs a few for dense
        assert sum(right) >= (15 if mode == "dense" else 20), (mode, right)


# -- approximate sparse search -------------------------------------------------------------------------------------
def test_approximate_sparse_returns_exact_scores(searcher, queries, docs):
    """query_cut / candidates / heap_factor may miss hits but never mis-score one: each returned score is the
    exact search's score of that document, and at the extremes the approximate search is the exact one."""
    _, _, qs = queries
    n = len(docs)
    De, Ie = searcher.search_sparse(qs, n)  # every hit, exact
    exact = [{int(r): float(d) for r, d in zip(Ie[q], De[q]) if r >= 0} for q in range(qs.shape[0])]
    D10, I10 = searcher.search_sparse(qs, 10)
    for kw in ({"query_cut": 1}, {"query_cut": 2, "candidates": 30}, {"heap_factor": 1.5},
               {"query_cut": 3, "heap_factor": 1.2, "candidates": 20}):
        D, I = searcher.search_sparse(qs, 10, **kw)
        assert D.shape == I.shape == (qs.shape[0], 10)
        for q in range(qs.shape[0]):
            hits = I[q][I[q] >= 0]
            assert len(set(hits.tolist())) == len(hits)
            for r, d in zip(hits, D[q][: len(hits)]):
                assert d == exact[q][int(r)], (kw, q, r)
            assert (np.diff(D[q][: len(hits)]) <= 0).all()
    # all terms kept and every document a candidate: the exact result
    D, I = searcher.search_sparse(qs, 10, query_cut=10_000, candidates=n)
    np.testing.assert_array_equal(I, I10)
    np.testing.assert_array_equal(D, D10)
    # the public API passes the knobs through
    r = searcher.search(None, k=10, mode="sparse", sparse=qs, query_cut=10_000, candidates=n)
    np.testing.assert_array_equal(r.rows, I10)
