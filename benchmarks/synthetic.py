"""Seeded synthetic workload of issue 4: Zipf-like sparse vectors and clustered dense vectors.

* documents: ``n_docs`` rows of ~``doc_nnz`` distinct terms (uniform in [0.5, 1.5] x doc_nnz) drawn from a Zipf
  law over ``vocab`` term ids (p(t) ~ 1 / (t + 10)^s, term 0 the most frequent), weights lognormal times an
  idf-like factor so rare terms weigh more, as learned sparse weights do;
* queries: ~``query_nnz`` terms from the same law, weights likewise;
* dense: ``dim``-d unit vectors from a mixture of 256 Gaussian clusters; each query is a document's vector plus
  noise, so it has a true neighbourhood (random Gaussian data would make every ANN index look bad).

Returns float32 CSR matrices (n, vocab) and float32 (n, dim) arrays. Generating 200,000 docs takes ~20 s.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _zipf_cdf(vocab: int, s: float) -> np.ndarray:
    p = 1.0 / (np.arange(vocab) + 10.0) ** s
    return np.cumsum(p / p.sum())


def sparse_rows(n: int, nnz: int, vocab: int, seed: int, s: float = 1.0, chunk: int = 4096) -> sp.csr_matrix:
    """float32 csr (n, vocab): ~nnz distinct Zipf-drawn terms per row with positive weights."""
    rng = np.random.default_rng(seed)
    cdf = _zipf_cdf(vocab, s)
    idf = np.log1p(np.arange(vocab) / 10.0 + 1.0).astype(np.float32)  # grows slowly with rarity
    indptr, indices, data = [0], [], []
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        want = rng.integers(max(1, nnz // 2), nnz + nnz // 2 + 1, size=m)
        draws = np.searchsorted(cdf, rng.random((m, int(want.max() * 2))))  # with replacement, deduped below
        draws = np.minimum(draws, vocab - 1)
        draws.sort(axis=1)
        first = np.ones_like(draws, dtype=bool)
        first[:, 1:] = draws[:, 1:] != draws[:, :-1]
        for r in range(m):
            terms = draws[r][first[r]]
            if len(terms) > want[r]:
                terms = np.sort(rng.choice(terms, size=want[r], replace=False))
            w = rng.lognormal(0.0, 0.5, size=len(terms)).astype(np.float32) * idf[terms]
            indices.append(terms.astype(np.int32))
            data.append(w)
            indptr.append(indptr[-1] + len(terms))
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.asarray(indptr, np.int64)),
                         shape=(n, vocab))


def dense_rows(n_docs: int, n_queries: int, dim: int, seed: int, clusters: int = 256,
               noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """(docs float32 (n_docs, dim), queries float32 (n_queries, dim)), unit rows."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    docs = centers[rng.integers(0, clusters, n_docs)] + noise * rng.standard_normal((n_docs, dim)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    q = docs[rng.integers(0, n_docs, n_queries)] + 0.5 * noise * rng.standard_normal((n_queries, dim)).astype(
        np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return docs, q.astype(np.float32)


def workload(n_docs: int = 200_000, n_queries: int = 1000, vocab: int = 32_000, doc_nnz: int = 120,
             query_nnz: int = 30, dim: int = 384, seed: int = 0) -> dict:
    """The issue-4 synthetic workload: dict with docs_sparse, queries_sparse (csr), docs_dense, queries_dense."""
    docs_dense, queries_dense = dense_rows(n_docs, n_queries, dim, seed + 2)
    return {"docs_sparse": sparse_rows(n_docs, doc_nnz, vocab, seed),
            "queries_sparse": sparse_rows(n_queries, query_nnz, vocab, seed + 1),
            "docs_dense": docs_dense, "queries_dense": queries_dense}
