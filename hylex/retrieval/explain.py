"""Why a document was returned: each arm's score of the hit and the terms behind its sparse and BM25 scores.

For a hit (a global row) and its query, :func:`explain_hit` gives

* ``dense``: the inner product of the query and document vectors (a chunked document: its best chunk);
* ``sparse``: the dot product of the query's and the document's sparse weights (the document's stored, quantized
  weights), with its largest ``terms``: each vocabulary entry decoded to text, the query weight, the document
  weight and their product, and whether the entry is an *expansion* term of the query or of the document (not
  one of that text's own words: a word the LLM added);
* ``bm25``: the BM25 score with each analyzed query term's contribution (term frequency, idf), computed with the
  index's global statistics, as the search does;
* ``fused``: the score the search returned for the hit (the fusion of the arms in hybrid mode).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from hylex.indexing.bm25 import global_stats
from hylex.text import term_hashes


def _dense(seg, local: int, q: np.ndarray) -> float | None:
    if seg.dense_owner is None:
        vec = seg.dense.reconstruct(np.array([local]))
    else:
        vec = seg.dense.reconstruct(np.flatnonzero(np.asarray(seg.dense_owner) == local))
    if vec is None or not len(vec):
        return None  # an index type that cannot give its vectors back
    return float(np.max(vec @ q))


def _doc_sparse(seg, local: int) -> dict[int, float]:
    sparse = seg.sparse
    fwd = np.asarray(sparse.fwd_indptr)
    terms = np.asarray(sparse.fwd_terms[fwd[local]:fwd[local + 1]]).astype(np.int64)
    weights = np.asarray(sparse.fwd_impacts[fwd[local]:fwd[local + 1]]).astype(np.float32) * \
        np.asarray(sparse.term_scale)[terms]
    return dict(zip(terms.tolist(), weights.tolist()))


def explain_hits(index, rows: np.ndarray, scores: np.ndarray, *, dense: np.ndarray | None = None,
                 sparse: sp.csr_matrix | None = None, bm25_texts: Sequence[str] | None = None,
                 k1: float | None = None, b: float | None = None, encoder=None, query_texts=None,
                 doc_texts=None, terms: int = 10) -> list[list[dict | None]]:
    """Explanations of hits ``rows`` int64 (nq, k) (global rows, -1 = none) with their returned ``scores``
    float32 (nq, k). ``dense`` float32 (nq, dim) / ``sparse`` csr (nq, V) / ``bm25_texts`` are the queries as
    searched (None: that arm is not explained). ``encoder`` (optional) decodes vocabulary ids and, with
    ``query_texts`` and ``doc_texts`` (per hit, (nq, k) nested lists), marks expansion terms."""
    k1 = index.bm25_k1 if k1 is None else k1
    b = index.bm25_b if b is None else b
    bm = None
    if bm25_texts is not None:
        analyzed = index.bm25_analyzer.analyze(list(bm25_texts))
        parts = [(s.row_offset, s.bm25, None, s.bm25_deleted) for s in index.segments]
        flat = [t for q in analyzed for t in q]
        hashes = term_hashes(flat)
        seg_rows, idf, avgdl = global_stats(parts, hashes)
        bm = (analyzed, hashes, seg_rows, idf, avgdl)
    decode = getattr(encoder, "decode_terms", None)
    own = getattr(encoder, "own_terms", None)
    q_own = [set(t.tolist()) for t in own(list(query_texts))] if own and query_texts is not None else None
    seg_pos = {s.name: i for i, s in enumerate(index.segments)}
    out: list[list[dict | None]] = []
    offset = 0
    for q in range(rows.shape[0]):
        row_out: list[dict | None] = []
        qs = None
        if sparse is not None:
            r = sparse[q]
            qs = dict(zip(r.indices.tolist(), r.data.tolist()))
        for j, g in enumerate(rows[q].tolist()):
            seg = index._segment_of(g) if g >= 0 else None
            if seg is None:
                row_out.append(None)
                continue
            local = g - seg.row_offset
            e: dict[str, Any] = {"fused": float(scores[q, j])}
            if dense is not None:
                e["dense"] = _dense(seg, local, dense[q])
            if qs is not None:
                ds = _doc_sparse(seg, local)
                shared = sorted(((qs[t] * ds[t], t) for t in qs.keys() & ds.keys()), reverse=True)
                e["sparse"] = float(sum(c for c, _ in shared))
                top = shared[:terms]
                names = decode([t for _, t in top]) if decode else [None] * len(top)
                d_own = None
                if own and doc_texts is not None and doc_texts[q][j] is not None:
                    d_own = set(own([doc_texts[q][j]])[0].tolist())
                items = []
                for (c, t), name in zip(top, names):
                    item = {"term": name, "id": int(t), "query_weight": round(qs[t], 4),
                            "doc_weight": round(ds[t], 4), "contribution": round(c, 4)}
                    if q_own is not None:
                        item["query_expansion"] = t not in q_own[q]
                    if d_own is not None:
                        item["doc_expansion"] = t not in d_own
                    items.append(item)
                e["sparse_terms"] = items
            if bm is not None:
                analyzed, hashes, seg_rows, idf, avgdl = bm
                n_q = len(analyzed[q])
                si = seg_pos[seg.name]
                contrib = []
                if idf is not None:
                    dl = float(np.asarray(seg.bm25.doc_len)[local])
                    for i in range(offset, offset + n_q):
                        tr = int(seg_rows[si][i])
                        if tr < 0:
                            continue
                        lo, hi = int(seg.bm25.indptr[tr]), int(seg.bm25.indptr[tr + 1])
                        docs = np.asarray(seg.bm25.docs[lo:hi])
                        pos = int(np.searchsorted(docs, local))
                        if pos < len(docs) and docs[pos] == local:
                            tf = float(seg.bm25.tf[lo + pos])
                            s = float(idf[i]) * tf / (tf + k1 * (1 - b + b * dl / avgdl))  # Lucene: no (k1 + 1)
                            contrib.append((s, {"term": analyzed[q][i - offset], "tf": tf,
                                                "idf": round(float(idf[i]), 4), "contribution": round(s, 4)}))
                e["bm25"] = float(sum(c for c, _ in contrib))
                e["bm25_terms"] = [d for _, d in sorted(contrib, key=lambda c: -c[0])][:terms]
            row_out.append(e)
        if bm is not None:
            offset += len(bm[0][q])
        out.append(row_out)
    return out
