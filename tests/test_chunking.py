"""Long documents: overlapping chunks, aggregated (sparse max per term; dense first / mean / maxsim)."""
from __future__ import annotations

import numpy as np
import pytest

from hylex.engine import Encoder
from hylex.sample import stdlib_corpus

SENTENCES = [
    "Volcanoes erupt when magma rises through the crust.",
    "Glaciers carve valleys as they slowly move downhill.",
    "Coral reefs grow in warm shallow tropical seas.",
    "Rainforests hold more species than any other biome.",
    "Deserts receive less than twenty-five centimetres of rain a year.",
    "Tides follow the gravitational pull of the moon and sun.",
]
# ~1,500 words of varied prose: the docstrings of the standard-library sample
LONG = " ".join(" ".join(d.text for d in stdlib_corpus(limit=120)).split()[:1500])


@pytest.fixture(scope="module")
def chunker():
    return Encoder(progress=False, encoding_cache=False, long_docs="chunk", max_length=256, chunk_overlap=32)


def test_windows_overlap_and_cover_the_text(chunker):
    units = chunker._units([LONG], "passage")
    assert len(units) > 3 and [u.chunk for u in units] == list(range(len(units)))
    ids = chunker.tokenizer(LONG, add_special_tokens=False)["input_ids"]
    windows = [u.ids[u.start:u.end] for u in units]
    assert all(len(u.ids) <= 256 for u in units)
    stride = len(windows[0]) - 32
    for c, w in enumerate(windows):
        assert w == ids[c * stride:c * stride + len(windows[0])]
    assert windows[-1][-1] == ids[-1]  # the end of the text is covered
    assert windows[0][-32:] == windows[1][:32]  # consecutive chunks share chunk_overlap tokens


def test_chunked_sparse_is_max_over_chunks_and_dense_first_or_mean(chunker):
    from hylex.engine.encoder import EncodeStats

    units, dense_u, idx, val = chunker._encode_units([LONG, "short text about tides"], "passage", EncodeStats())
    m = len(units)
    per_chunk = np.zeros((m, chunker.vocab_size), np.float32)
    for r in range(m):
        per_chunk[r, idx[r]] = val[r]
    owner = np.array([u.owner for u in units])
    out = chunker.encode_documents([LONG, "short text about tides"])
    np.testing.assert_array_equal(out.sparse[0].toarray()[0], per_chunk[owner == 0].max(0))
    np.testing.assert_array_equal(out.sparse[1].toarray()[0], per_chunk[owner == 1].max(0))
    assert out.sparse[0].nnz > len(idx[0])  # later chunks add terms the first window lacks
    np.testing.assert_array_equal(out.dense[0], dense_u[0])  # dense_agg="first"
    mean = Encoder(progress=False, encoding_cache=False, long_docs="chunk", max_length=256, chunk_overlap=32,
                   dense_agg="mean").encode_documents([LONG]).dense[0]
    want = dense_u[owner == 0].mean(0)
    np.testing.assert_allclose(mean, want / np.linalg.norm(want), atol=1e-5)


def test_maxsim_returns_every_chunk_vector():
    enc = Encoder(progress=False, encoding_cache=False, long_docs="chunk", max_length=256, chunk_overlap=32,
                  dense_agg="maxsim")
    out = enc.encode_documents_chunked([LONG, "short text"])
    assert out.dense.shape[0] == len(out.owner) and out.owner.tolist() == sorted(out.owner.tolist())
    assert (out.owner == 1).sum() == 1 and (out.owner == 0).sum() > 3
    assert out.sparse.shape == (2, enc.vocab_size)


def test_queries_are_never_chunked(chunker):
    assert len(chunker._units([LONG], "query")) == 1


def test_chunk_cache_keys_keep_short_documents_shared(tmp_path):
    trunc = Encoder(progress=False, encoding_cache=str(tmp_path))
    trunc.encode_documents(["a short document about coral reefs"])
    chunked = Encoder(progress=False, encoding_cache=str(tmp_path), long_docs="chunk")
    chunked.encode_documents(["a short document about coral reefs"])
    assert chunked.stats.cache_hits == 1  # one window: the same encoding as truncation


def test_twenty_thousand_word_document_indexes(tmp_path):
    from hylex.corpus import Document
    from hylex.indexing import build_index
    from hylex.retrieval import Searcher

    words = " ".join(SENTENCES[i % len(SENTENCES)] for i in range(2400)).split()[:20000]
    assert len(words) == 20000
    enc = Encoder(progress=False, encoding_cache=False, long_docs="chunk")
    docs = [Document("long", " ".join(words)), Document("other", "Bread is baked from flour, water and yeast.")]
    build_index(docs, tmp_path / "idx", enc, progress=False)
    assert enc.stats.texts == 2
    res = Searcher(tmp_path / "idx", encoder=enc).search(["coral reefs in tropical seas"], k=2, mode="sparse")
    assert res.ids[0, 0] == "long"


def test_maxsim_index_scores_documents_by_best_chunk(tmp_path):
    """Dense maxsim search equals brute force: each document's score is its best chunk's inner product."""
    from hylex.corpus import Document
    from hylex.indexing import build_index
    from hylex.retrieval import Searcher

    # float32: bf16 results move by ~1e-3 with batch composition, which would blur the exactness check
    # the cache makes the check's own encoding below a lookup of the vectors the index was built from
    enc = Encoder(progress=False, encoding_cache=str(tmp_path / "cache"), long_docs="chunk", max_length=128,
                  chunk_overlap=16, dense_agg="maxsim", dtype="float32")
    docs = [Document(d.id, d.text) for d in stdlib_corpus(limit=30)]
    docs.append(Document("long", LONG))
    build_index(docs, tmp_path / "idx", enc, progress=False, segment_size=12)
    chunks = enc.encode_documents_chunked([d.full_text for d in docs])
    assert len(chunks.owner) > len(docs)
    q = enc.encode_queries(["compress data", "regular expressions", "random numbers"]).dense
    s = Searcher(tmp_path / "idx", encoder=enc)
    D, I = s.search_dense(q, 5)
    sims = q @ chunks.dense.T
    best = np.full((len(q), len(docs)), -np.inf, np.float32)
    for j, o in enumerate(chunks.owner):
        best[:, o] = np.maximum(best[:, o], sims[:, j])
    for r in range(len(q)):
        want = np.sort(best[r])[::-1][:5]
        np.testing.assert_allclose(D[r], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(best[r, I[r]], D[r], rtol=1e-4, atol=1e-5)
    assert len(set(I[0].tolist())) == 5  # distinct documents, not chunks
