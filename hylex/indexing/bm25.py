"""The BM25 arm: per-segment term-frequency postings keyed by 64-bit term hashes, scored with global statistics.

Layout of one segment (T distinct terms, nnz postings), five ``.npy`` files memory-mapped on load:

* ``bm25_terms.npy`` uint64 (T,): the segment's term hashes (:func:`hylex.text.term_hash`), sorted, unique;
* ``bm25_indptr.npy`` int64 (T+1,): term row t's postings are ``indptr[t]:indptr[t+1]``;
* ``bm25_docs.npy`` int32 (nnz,): local doc rows, ascending within a term;
* ``bm25_tf.npy`` float32 (nnz,): the term's count in the doc;
* ``bm25_doclen.npy`` float32 (n_docs,): each doc's length in terms (after stopword removal).

A segment needs no shared vocabulary: a query term is looked up by its hash in each segment's table. The
statistics BM25 needs beyond one segment (N, each term's document frequency, the average length) are summed
over all segments at query time by :func:`bm25_search`, so scores are exactly those of one index holding every
document, however the documents were split into segments or added later.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from hylex.errors import HylexError
from hylex.kernels import bm25_topk, merge_topk
from hylex.text import term_hashes

FILES = ("bm25_terms.npy", "bm25_indptr.npy", "bm25_docs.npy", "bm25_tf.npy", "bm25_doclen.npy")
DEFAULT_K1 = 0.9
DEFAULT_B = 0.4
# k1's upper bound. A term's contribution is idf * tf / (tf + k1 * norm): past k1 ~ 100 the ranking is already
# that of the k1 -> infinity limit (term frequency counted linearly), and a k1 large enough (about 1e19 for a rare
# term in a long document of a billion-document index; 1e308 always) underflows every float32 score to 0, so
# nothing is a hit. 1000 keeps the smallest contribution above 1e-22.
MAX_K1 = 1000.0


def check_k1(k1) -> float:
    if isinstance(k1, bool) or not isinstance(k1, (int, float, np.integer, np.floating)) or \
            not (math.isfinite(float(k1)) and 0 < float(k1) <= MAX_K1):
        raise HylexError(f"BM25 k1 must be a finite number > 0 and at most {MAX_K1:g}, got {k1!r}: it sets how "
                         f"fast term frequency saturates (typical 0.9 .. 1.5)")
    return float(k1)


def check_b(b) -> float:
    if isinstance(b, bool) or not isinstance(b, (int, float, np.integer, np.floating)) or \
            not (0.0 <= float(b) <= 1.0):
        raise HylexError(f"BM25 b must be in [0, 1], got {b!r}: it sets how much document length normalises "
                         f"scores (typical 0.4 .. 0.75)")
    return float(b)


class Bm25Postings:
    """Term-frequency postings of one segment. Rows are local to the segment (0 .. n_docs-1)."""

    def __init__(self, terms: np.ndarray, indptr: np.ndarray, docs: np.ndarray, tf: np.ndarray,
                 doc_len: np.ndarray, total_len: int | None = None):
        self.terms, self.indptr, self.docs, self.tf, self.doc_len = terms, indptr, docs, tf, doc_len
        self.n_docs = int(doc_len.shape[0])
        # the summed length is recorded in the manifest; computing it reads the whole doc_len array
        self.total_len = int(np.asarray(doc_len, dtype=np.float64).sum()) if total_len is None else int(total_len)

    @classmethod
    def from_tokens(cls, tokens: Sequence[Sequence[str]]) -> "Bm25Postings":
        """Build from each doc's terms (analyzed, with repeats: a term's count is its frequency)."""
        n = len(tokens)
        doc_len = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=n)
        vocab: dict[str, int] = {}
        flat = np.fromiter((vocab.setdefault(w, len(vocab)) for ts in tokens for w in ts), dtype=np.int64,
                           count=int(doc_len.sum()))
        # terms as sorted unique hashes (a 64-bit collision would merge two terms, as at query time)
        terms, tid = np.unique(term_hashes(vocab), return_inverse=True)
        rows = np.repeat(np.arange(n, dtype=np.int64), doc_len)
        keys = tid.reshape(-1)[flat] * max(n, 1) + rows  # term-major, doc ascending
        keys, tf = np.unique(keys, return_counts=True)
        post_terms, docs = np.divmod(keys, max(n, 1))
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(post_terms, minlength=len(terms)), out=indptr[1:])
        return cls(terms.astype(np.uint64), indptr, docs.astype(np.int32), tf.astype(np.float32),
                   doc_len.astype(np.float32), total_len=int(doc_len.sum()))

    @property
    def n_terms(self) -> int:
        return int(self.terms.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """Rows of the term table of ``hashes`` uint64 (n,), -1 where the segment lacks the term; int32 (n,)."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        if self.n_terms == 0:
            return np.full(hashes.shape, -1, dtype=np.int32)
        pos = np.searchsorted(self.terms, hashes)
        pos_c = np.minimum(pos, self.n_terms - 1)
        return np.where(np.asarray(self.terms[pos_c]) == hashes, pos_c, -1).astype(np.int32)

    def df(self, hashes: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Document frequencies int64 (n,) of ``hashes`` in this segment (0 where absent).

        ``rows``: the result of :meth:`lookup` for ``hashes``, when the caller has it.
        """
        rows = self.lookup(hashes) if rows is None else np.asarray(rows)
        out = np.zeros(rows.shape, dtype=np.int64)
        hit = rows >= 0
        r = rows[hit].astype(np.int64)
        out[hit] = np.asarray(self.indptr[r + 1]) - np.asarray(self.indptr[r])
        return out

    def search(self, q_indptr: np.ndarray, q_rows: np.ndarray, q_idf: np.ndarray, k1: float, b: float,
               avgdl: float, k: int, live: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top-k over this segment with the caller's (global) idf and avgdl -> (D, I local rows)."""
        return bm25_topk(q_indptr, q_rows, q_idf, self.indptr, self.docs, self.tf, self.doc_len, k1, b, avgdl,
                         self.n_docs, k, live)

    def subset(self, keep: np.ndarray) -> "Bm25Postings":
        """The postings of the documents where ``keep`` (bool (n_docs,)) holds, renumbered 0.. in order: equal to
        :meth:`from_tokens` over those documents alone (terms absent from them are dropped)."""
        keep = np.asarray(keep, dtype=bool)
        new_row = np.cumsum(keep) - 1
        docs = np.asarray(self.docs)
        on = keep[docs]
        counts = np.add.reduceat(on.astype(np.int64), np.asarray(self.indptr)[:-1]) if len(docs) else \
            np.zeros(self.n_terms, np.int64)
        counts[np.diff(np.asarray(self.indptr)) == 0] = 0  # reduceat gives the next value for empty ranges
        used = counts > 0
        indptr = np.zeros(int(used.sum()) + 1, dtype=np.int64)
        np.cumsum(counts[used], out=indptr[1:])
        doc_len = np.asarray(self.doc_len)[keep]
        return Bm25Postings(np.asarray(self.terms)[used], indptr, new_row[docs[on]].astype(np.int32),
                            np.asarray(self.tf)[on], doc_len.astype(np.float32),
                            total_len=int(np.asarray(doc_len, dtype=np.float64).sum()))

    @classmethod
    def concat(cls, parts: Sequence["Bm25Postings"]) -> "Bm25Postings":
        """One segment's postings from several, documents renumbered in order (part 0's first): equal to
        :meth:`from_tokens` over all their documents."""
        offsets = np.concatenate([[0], np.cumsum([p.n_docs for p in parts])]).astype(np.int64)
        hashes = np.concatenate([np.repeat(np.asarray(p.terms), np.diff(np.asarray(p.indptr))) for p in parts]
                                + [np.zeros(0, np.uint64)])
        docs = np.concatenate([np.asarray(p.docs, dtype=np.int64) + o for p, o in zip(parts, offsets)]
                              + [np.zeros(0, np.int64)])
        tf = np.concatenate([np.asarray(p.tf) for p in parts] + [np.zeros(0, np.float32)])
        order = np.lexsort((docs, hashes))
        hashes, docs, tf = hashes[order], docs[order], tf[order]
        terms, counts = np.unique(hashes, return_counts=True)
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        doc_len = np.concatenate([np.asarray(p.doc_len) for p in parts] + [np.zeros(0, np.float32)])
        return cls(terms.astype(np.uint64), indptr, docs.astype(np.int32), tf.astype(np.float32),
                   doc_len.astype(np.float32), total_len=sum(p.total_len for p in parts))

    def save(self, directory: str | os.PathLike) -> list[str]:
        d = Path(directory)
        for name, arr in zip(FILES, (self.terms, self.indptr, self.docs, self.tf, self.doc_len)):
            np.save(d / name, np.ascontiguousarray(arr), allow_pickle=False)
        return list(FILES)

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True, total_len: int | None = None) -> "Bm25Postings":
        d = Path(directory)
        mode = "r" if mmap else None
        arrays = (np.load(d / name, mmap_mode=mode, allow_pickle=False) for name in FILES)
        return cls(*arrays, total_len=total_len)


def lucene_idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """``log(1 + (N - df + 0.5) / (df + 0.5))`` in float64 (Lucene's idf, always > 0; bm25s ``method="lucene"``)."""
    # math.log per term (queries hold few terms): the same libm call as bm25s, so the same float32 idf
    return np.array([math.log(1.0 + (n_docs - d + 0.5) / (d + 0.5)) for d in np.asarray(df).tolist()],
                    dtype=np.float64)


def deleted_df(postings: "Bm25Postings", deleted: np.ndarray) -> np.ndarray:
    """Per term of the segment's table, how many of the ``deleted`` (bool (n_docs,)) documents hold it: int32
    (n_terms,). Subtracted from the document frequencies so that BM25 statistics count live documents only."""
    docs = np.asarray(postings.docs)
    hit = np.asarray(deleted, dtype=bool)[docs].astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(hit)])
    indptr = np.asarray(postings.indptr)
    return (csum[indptr[1:]] - csum[indptr[:-1]]).astype(np.int32)


def global_stats(parts: Sequence[tuple], hashes: np.ndarray) -> tuple[list, np.ndarray | None, float]:
    """For term ``hashes`` uint64 (n,) over the segments ``parts`` (as :func:`bm25_search`'s, 4-tuples): each
    segment's term-table rows, the terms' Lucene idf float32 (n,) over the live documents, and the live
    average length (idf None when no live document has a term)."""
    n_total = sum(p.n_docs - (dl[2] if dl else 0) for _, p, _, dl in parts)
    len_total = sum(p.total_len - (dl[1] if dl else 0) for _, p, _, dl in parts)
    rows = [p.lookup(hashes) for _, p, _, _ in parts]
    if n_total <= 0 or len_total <= 0:
        return rows, None, 0.0
    df = np.zeros(hashes.shape, dtype=np.int64)
    for (_, p, _, dl), r in zip(parts, rows):
        df += p.df(hashes, r)
        if dl is not None:
            hit = r >= 0
            df[hit] -= np.asarray(dl[0])[r[hit]]
    return rows, lucene_idf(df, n_total).astype(np.float32), len_total / n_total


def bm25_search(parts: Sequence[tuple], query_terms: Sequence[Sequence[str]], k: int,
                k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> tuple[np.ndarray, np.ndarray]:
    """BM25 top-k over several segments with global statistics.

    Args:
        parts: per segment of the index ``(row_offset, postings)``, or ``(row_offset, postings, allowed,
            deleted)`` where ``allowed`` is None or a mask (n_docs,) of the documents that may be hits (live and
            passing a filter) and ``deleted`` is None or ``(deleted_df, deleted_len, n_deleted)``: what the
            segment's deleted documents contribute to the statistics (see :func:`deleted_df`), taken out of them.
        query_terms: each query's analyzed terms; a repeated term counts once per occurrence (as in bm25s),
            scored once with its idf times its count (a query repeating one word a million times walks that
            word's postings once, not a million times).
        k: hits per query, >= 1.
        k1, b: the BM25 parameters.

    Returns:
        D float32 (nq, k), I int64 (nq, k) global rows (``row_offset + local row``); only docs sharing a term
        with the query are hits; missing slots hold ``I == -1``, ``D == -inf``. Statistics (N, document
        frequencies, average length) are those of the live documents of every segment, whatever ``allowed``.
    """
    k1, b = check_k1(k1), check_b(b)
    parts = [tuple(p) + (None,) * (4 - len(p)) for p in parts]
    nq = len(query_terms)
    D_out = np.full((nq, k), -np.inf, np.float32)
    I_out = np.full((nq, k), -1, np.int64)
    # each query's distinct terms in first-occurrence order, with their counts
    distinct = [Counter(q) for q in query_terms]
    hashes = term_hashes(t for c in distinct for t in c)
    counts = np.fromiter((n for c in distinct for n in c.values()), dtype=np.float64, count=len(hashes))
    rows, idf, avgdl = global_stats(parts, hashes)
    if nq == 0 or idf is None:  # no live document has a term: nothing can match
        return D_out, I_out
    # count x idf: the same score as scoring each occurrence (up to float32 rounding; unchanged without repeats)
    idf = np.where(counts == 1, idf, (idf.astype(np.float64) * counts).astype(np.float32)).astype(np.float32)
    q_indptr = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum([len(c) for c in distinct], out=q_indptr[1:])
    parts_D, parts_I = [], []
    for (offset, p, allowed, _), r in zip(parts, rows):
        if allowed is not None and not np.any(allowed):
            continue
        D, I = p.search(q_indptr, r, idf, k1, b, avgdl, k, allowed)
        parts_D.append(D)
        parts_I.append(np.where(I >= 0, I + offset, -1))
    if not parts_D:
        return D_out, I_out
    if len(parts_D) == 1:
        return parts_D[0], parts_I[0]
    return merge_topk(np.concatenate(parts_D, 1), np.concatenate(parts_I, 1), k)


def bm25_settings(bm25: dict | None = None) -> dict:
    """Validated BM25 settings of an index, ``{"analyzer": {"stemmer", "stopwords"}, "k1", "b"}``.

    ``bm25`` may give ``k1``, ``b``, and the analyzer either as ``analyzer`` (a dict or a
    :class:`~hylex.text.Bm25Analyzer`) or as ``stemmer`` / ``stopwords``; what it leaves out takes the defaults
    (English stemming and stopwords, k1 0.9, b 0.4).
    """
    from hylex.text import Bm25Analyzer

    bm25 = {} if bm25 is None else bm25
    if not isinstance(bm25, dict):
        raise HylexError(f"bm25 settings must be a dict such as {{'k1': 0.9, 'b': 0.4, 'stemmer': 'english'}}, "
                         f"got {bm25!r}")
    unknown = set(bm25) - {"analyzer", "stemmer", "stopwords", "k1", "b"}
    if unknown:
        raise HylexError(f"bm25 setting(s) {', '.join(sorted(unknown))} are unknown: use k1, b, stemmer, "
                         f"stopwords (or analyzer)")
    if "analyzer" in bm25 and ({"stemmer", "stopwords"} & set(bm25)):
        raise HylexError("pass the BM25 analyzer as 'analyzer' or as 'stemmer'/'stopwords', not both")
    an = bm25.get("analyzer")
    if isinstance(an, Bm25Analyzer):
        analyzer = an
    elif an is not None:
        analyzer = Bm25Analyzer.from_dict(an)
    else:
        analyzer = Bm25Analyzer(**{key: bm25[key] for key in ("stemmer", "stopwords") if key in bm25})
    return {"analyzer": analyzer.to_dict(), "k1": check_k1(bm25.get("k1", DEFAULT_K1)),
            "b": check_b(bm25.get("b", DEFAULT_B))}
