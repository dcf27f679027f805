"""Explanations of hits: each arm's score of a hit equals what that arm's search returned for it, and the terms
behind the sparse and BM25 scores are the query's and document's own weights."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from conftest import QUERY_TEXTS, SPARSE_ATOL, FakeEncoder

from hylex.indexing import Index
from hylex.retrieval import Searcher


class WordEncoder(FakeEncoder):
    """FakeEncoder that also decodes vocabulary ids and names each text's own terms (like the real encoder)."""

    def _ids(self, text):
        return {zlib.crc32(w.encode()) % self.vocab_size: w for w in text.lower().split()}

    def own_terms(self, texts):
        return [np.array(sorted(self._ids(t)), dtype=np.int64) for t in texts]

    def decode_terms(self, ids):
        return [f"term{int(i)}" for i in ids]


@pytest.fixture(scope="module")
def searcher(built_index):
    ix = Index.open(built_index)
    yield Searcher(ix, encoder=WordEncoder())
    ix.close()


@pytest.mark.parametrize("mode, key, atol", [("dense", "dense", 1e-5), ("sparse", "sparse", SPARSE_ATOL),
                                             ("bm25", "bm25", 1e-4)])
def test_single_arm_explanations_equal_the_returned_scores(searcher, mode, key, atol):
    res = searcher.search(QUERY_TEXTS, k=5, mode=mode, explain=True)
    for q in range(len(QUERY_TEXTS)):
        for j in range(5):
            e = res.explanations[q][j]
            if res.ids[q, j] is None:
                assert e is None
                continue
            assert e["fused"] == pytest.approx(float(res.scores[q, j]))
            assert e[key] == pytest.approx(float(res.scores[q, j]), abs=atol), (q, j)


def test_hybrid_explanations_give_every_arm_and_the_terms(searcher):
    enc = searcher.encoder
    res = searcher.search(QUERY_TEXTS[:4], k=5, arms=("dense", "sparse", "bm25"), fusion="rrf", explain=True,
                          with_documents=True)
    dense_q, sparse_q = enc.encode_queries(QUERY_TEXTS[:4])
    dense_res = searcher.search(None, k=200, mode="dense", dense=dense_q)
    for q in range(4):
        for j in range(5):
            e = res.explanations[q][j]
            assert set(e) >= {"fused", "dense", "sparse", "sparse_terms", "bm25", "bm25_terms"}
            # the dense score of a hit is its score in the dense arm's own ranking
            pos = list(dense_res.ids[q]).index(res.ids[q, j])
            assert e["dense"] == pytest.approx(float(dense_res.scores[q, pos]), abs=1e-5)
            contribs = [t["contribution"] for t in e["sparse_terms"]]
            assert contribs == sorted(contribs, reverse=True)
            for t in e["sparse_terms"]:
                assert t["contribution"] == pytest.approx(t["query_weight"] * t["doc_weight"], abs=2e-4)
                assert t["term"] == f"term{t['id']}"
                assert t["query_expansion"] is False and t["doc_expansion"] is False  # own words only here
            assert sum(t["contribution"] for t in e["bm25_terms"]) == pytest.approx(e["bm25"], abs=1e-3)
            assert all(t["tf"] >= 1 and t["idf"] > 0 for t in e["bm25_terms"])


def test_expansion_terms_are_marked(searcher):
    """A query term that is not one of the query's own words (as an LLM's expansion) is marked."""
    enc = searcher.encoder
    dense_q, sparse_q = enc.encode_queries(["pawn bishop"])
    extra = enc.encode_queries(["knight"])[1]  # 'knight' weighted as if the model had added it
    res = searcher.search(None, k=3, arms=("dense", "sparse", "bm25"), dense=dense_q, sparse=sparse_q + extra,
                          bm25_queries=["pawn bishop"], explain=True)
    marks = {t["id"]: t["query_expansion"] for e in res.explanations[0] if e for t in e["sparse_terms"]}
    knight = int(extra.indices[0])
    assert marks.get(knight) is True
    assert any(v is False for k, v in marks.items() if k != knight)
