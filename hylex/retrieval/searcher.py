"""Dense, sparse, BM25 and hybrid search over a hylex index, by query text or by pre-encoded query vectors.

Three arms: ``dense`` and ``sparse`` (the LLM's two encodings of a query) and ``bm25`` (lexical, from the query
text). ``mode="hybrid"`` fuses any of them (``arms``), by min-max-normalised convex combination or RRF.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from hylex.corpus import Document, clean_text
from hylex.errors import HylexError, ResultTooLargeError
from hylex.indexing.bm25 import bm25_search, check_b, check_k1
from hylex.indexing.index import Index
from hylex.indexing.protocols import TextEncoder
from hylex.kernels import fuse, merge_topk
from hylex.retrieval.filters import FilterEvaluator, check_filter
from hylex.retrieval.fusion import MAX_WEIGHT
from hylex.retrieval.results import Results

logger = logging.getLogger(__name__)

# The dense weight of the default dense+sparse convex fusion, chosen on SciFact's *train* queries with the
# packaged default model (benchmarks/quality.py: 0.3 beat 0.5 there; test qrels were not used).
DEFAULT_ALPHA = 0.3
# Candidates per arm for fusion, chosen the same way: 1000 beat 100 on SciFact train (min-max over deeper lists).
DEFAULT_DEPTH = 1000

# the longest dense query accepted: documents are unit vectors, and float32 inner products with a query near
# float32's range overflow to infinity
MAX_DENSE_NORM = 1e6
# the largest sparse score a query may reach (its weights times the largest stored weight of each of its terms,
# summed): scores are float32, and a bound far below its maximum (3.4e38) leaves room for fusion's sums
MAX_SPARSE_SCORE = 1e30

# hits' documents are read this many at a time: a search keeps only the ids of the documents it does not return,
# and a byte budget stops the reading at most one chunk past it
FETCH_CHUNK = 256

MODES = ("dense", "sparse", "bm25", "hybrid")
FUSIONS = ("convex", "rrf")
ARMS = ("dense", "sparse", "bm25")
DEFAULT_ARMS = ("dense", "sparse")


def check_k(k, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise HylexError(f"{name} must be a positive integer, got {k!r}: ask for at least 1 hit")
    return int(k)


def check_rrf_k(rrf_k) -> float:
    if isinstance(rrf_k, (bool, np.bool_)) or not isinstance(rrf_k, (int, float, np.integer, np.floating)) or \
            not (math.isfinite(float(rrf_k)) and float(rrf_k) >= 0):
        raise HylexError(f"rrf_k must be a finite number >= 0, got {rrf_k!r}: reciprocal rank fusion scores a hit "
                         f"at rank r by 1 / (rrf_k + r) (the usual constant is 60)")
    return float(rrf_k)


def check_alpha(alpha) -> float | None:
    if alpha is None:
        return None
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.integer, np.floating)) or \
            not 0.0 <= float(alpha) <= 1.0:
        raise HylexError(f"alpha must be in [0, 1], got {alpha!r}: it is the dense arm's weight against "
                         f"sparse")
    return float(alpha)


def check_arms(arms) -> tuple[str, ...]:
    """``arms`` (a sequence of arm names, or one comma-separated string) as a tuple, checked."""
    if isinstance(arms, str):
        arms = [a.strip() for a in arms.split(",")]
    try:
        arms = tuple(arms)
    except TypeError:
        raise HylexError(f"arms must be a sequence of arm names such as ('dense', 'bm25'), got {arms!r}") from None
    if not arms:
        raise HylexError(f"arms is empty: choose one or more of {', '.join(ARMS)}")
    for a in arms:
        if not isinstance(a, str) or a not in ARMS:
            raise HylexError(f"arm {a!r} is unknown: choose from {', '.join(ARMS)}")
    dup = next((a for i, a in enumerate(arms) if a in arms[:i]), None)
    if dup is not None:
        raise HylexError(f"arm {dup!r} is given twice in {', '.join(arms)}: name each arm once")
    return arms


def check_weights(weights, arms: Sequence[str]) -> list[float]:
    """One finite non-negative weight per arm, at most MAX_WEIGHT, not all zero."""
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__"):
        raise HylexError(f"weights must be a sequence of numbers, one per arm ({', '.join(arms)}), got {weights!r}")
    out = []
    for w in weights:
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, float, np.integer, np.floating)):
            raise HylexError(f"weight {w!r} is not a number: pass one number per arm ({', '.join(arms)})")
        try:
            w = float(w)
        except OverflowError:  # an int beyond float's range
            w = math.inf if w > 0 else -math.inf
        if not math.isfinite(w) or w < 0:
            raise HylexError(f"weights must be finite and >= 0, got {w}: an arm's weight scales its share of the "
                             f"fused score")
        if w > MAX_WEIGHT:  # fused scores are float32, at most the weights' sum
            raise HylexError(f"weight {w:g} is over {MAX_WEIGHT:g}: only the weights' ratios matter, so scale them "
                             f"down (e.g. to add up to 1)")
        out.append(w)
    if len(out) != len(arms):
        raise HylexError(f"{len(out)} weight(s) for {len(arms)} arm(s) ({', '.join(arms)}): pass one weight per arm")
    if not any(out):
        raise HylexError("weights are all 0: give at least one arm a positive weight")
    return out


def fusion_weights(arms: Sequence[str], weights: list[float] | None, fusion: str,
                   alpha: float | None) -> list[float]:
    """The weights a hybrid search fuses ``arms`` with: ``weights`` (checked), else the defaults.

    Defaults: convex ``alpha`` (DEFAULT_ALPHA) for dense and ``1 - alpha`` for sparse when the arms are those two, else
    equal weights summing to 1; rrf all 1.0 (alpha ignored, as before).
    """
    if weights is not None:
        if alpha is not None:
            raise HylexError("pass alpha or weights, not both: alpha is the dense weight of a dense + sparse "
                             "fusion, weights give one weight per arm")
        return check_weights(weights, arms)
    if fusion == "rrf":
        return [1.0] * len(arms)
    if set(arms) == {"dense", "sparse"}:
        a = DEFAULT_ALPHA if alpha is None else float(alpha)
        return [a if name == "dense" else 1.0 - a for name in arms]
    if alpha is not None:
        raise HylexError(f"alpha weighs dense against sparse; for arms {', '.join(arms)} pass weights (one per "
                         f"arm) instead")
    return [1.0 / len(arms)] * len(arms)


def fuse_arms(arms: list[tuple[np.ndarray, np.ndarray]], weights: Sequence[float], method: str, k: int,
              rrf_k: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Fuse per-arm top lists ``(D float32 (nq, d_a), I int64 (nq, d_a))`` into one top-k ``(D, I)``."""
    depth = max(I.shape[1] for _, I in arms)
    nq = arms[0][1].shape[0]
    I_all = np.full((len(arms), nq, depth), -1, np.int64)
    D_all = np.full((len(arms), nq, depth), -np.inf, np.float32)
    for a, (D, I) in enumerate(arms):
        I_all[a, :, : I.shape[1]] = I
        D_all[a, :, : D.shape[1]] = D
    return fuse(I_all, D_all, np.asarray(weights, np.float64), method, k, rrf_k)


def check_approx_knobs(query_cut, heap_factor, candidates) -> None:
    if query_cut is not None and (isinstance(query_cut, bool) or not isinstance(query_cut, (int, np.integer))
                                  or query_cut < 1):
        raise HylexError(f"query_cut must be None or an integer >= 1 (query terms searched), got {query_cut!r}")
    if isinstance(heap_factor, bool) or not isinstance(heap_factor, (int, float, np.integer, np.floating)) or \
            not (np.isfinite(heap_factor) and heap_factor >= 1):
        raise HylexError(f"heap_factor must be a number >= 1 (1 is exact), got {heap_factor!r}")
    if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer))
                                   or candidates < 1):
        raise HylexError(f"candidates must be None or an integer >= 1, got {candidates!r}")


def _check_sparse_bound(queries: sp.csr_matrix, sparse) -> None:
    """Refuse sparse queries that could score a document of this segment's postings beyond MAX_SPARSE_SCORE:
    the bound is each query weight times its term's largest storable weight, summed (in float64)."""
    q = sp.csr_matrix(queries)
    if not q.nnz:
        return
    scale = np.asarray(sparse.term_scale)
    top = float(np.iinfo(np.asarray(sparse.impacts).dtype).max)  # the largest quantized impact
    inside = q.indices < scale.shape[0]  # ids beyond the vocabulary are ignored by the search
    contrib = np.zeros(q.nnz, dtype=np.float64)
    contrib[inside] = q.data[inside].astype(np.float64) * scale[q.indices[inside]].astype(np.float64) * top
    rows = np.repeat(np.arange(q.shape[0]), np.diff(q.indptr))
    bound = np.bincount(rows, weights=contrib, minlength=q.shape[0])
    if not (bound <= MAX_SPARSE_SCORE).all():  # NaN-safe: a NaN bound fails too
        i = int(np.argmax(~(bound <= MAX_SPARSE_SCORE)))
        raise HylexError(f"sparse query {i} could score a document up to {bound[i]:.3g}, over {MAX_SPARSE_SCORE:g} "
                         f"(scores are float32): send the encoder's weights (log(1 + relu), typically below 10)")


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def document_bytes(doc: dict) -> int:
    """About the bytes a stored document takes as JSON: its text, title and metadata in UTF-8."""
    meta = doc.get("metadata")
    return _utf8_len(doc.get("text") or "") + _utf8_len(doc.get("title") or "") + \
        (len(json.dumps(meta, ensure_ascii=False)) if meta else 0)


class Searcher:
    """Search one index. Text queries need an encoder: given, or loaded from the index's recorded settings.

    Args:
        index: an open :class:`Index` or its directory.
        encoder: an encoder matching the index's model; None loads it lazily on the first text query.
        encoder_kwargs: passed to ``hylex.engine.Encoder`` when it is loaded here (device, threads, progress).
    """

    def __init__(self, index: Index | str | os.PathLike, encoder: TextEncoder | None = None, **encoder_kwargs):
        self.index = index if isinstance(index, Index) else Index.open(index)
        self._encoder = encoder
        self._encoder_kwargs = encoder_kwargs
        if encoder is not None:
            self._check_encoder(encoder)

    def _check_encoder(self, encoder: TextEncoder) -> None:
        info = self.index.encoder_info
        if encoder.dim != self.index.dim or encoder.vocab_size != self.index.vocab_size:
            raise HylexError(f"encoder gives dim {encoder.dim} / vocab {encoder.vocab_size}, the index was built "
                             f"with dim {self.index.dim} / vocab {self.index.vocab_size} ({info['model_id']}): use "
                             f"the index's model")
        from hylex.engine.settings import same_encoding

        mine = encoder.describe()
        if not same_encoding(mine, info):
            logger.warning("query encoder %s/%s differs from the index's %s/%s: scores may be off",
                           mine.get("model_id"), mine.get("settings"), info.get("model_id"), info.get("settings"))

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            from hylex.engine.encoder import Encoder, EncoderConfig

            info = self.index.encoder_info
            cfg = EncoderConfig.from_dict(info["settings"])
            kwargs = {"progress": False, **self._encoder_kwargs}
            self._encoder = Encoder(config=cfg, **kwargs)
            self._check_encoder(self._encoder)
        return self._encoder

    # -- arms --------------------------------------------------------------------------------------------
    def allowed(self, filter: dict | str | None = None) -> list[np.ndarray | None]:
        """Per segment, the documents a search may return: live ones passing ``filter`` (bool (n_docs,)), or
        None where every document may."""
        masks = FilterEvaluator(self.index).masks(filter)
        return [seg.allowed(None if masks is None else masks[i]) for i, seg in enumerate(self.index.segments)]

    def search_dense(self, queries: np.ndarray, k: int, *, filter: dict | str | None = None,
                     allowed: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Dense top-k over all segments: float32 (nq, dim) -> (D float32 (nq, k), I int64 global rows).

        ``filter``: a metadata filter (:mod:`hylex.retrieval.filters`); deleted documents never hit. ``allowed``:
        the result of :meth:`allowed`, when the caller has it.
        """
        k = self._cap(k)
        allowed = self.allowed(filter) if allowed is None else allowed
        parts_D, parts_I = [], []
        for seg, ok in zip(self.index.segments, allowed):
            if ok is not None and not ok.any():
                continue
            if seg.dense_owner is None:
                D, I = seg.dense.search(queries, min(k, max(seg.n_docs, 1)), ok)
            else:
                D, I = self._dense_maxsim(seg, queries, k, seg.vector_mask(ok))
            parts_D.append(D)
            parts_I.append(np.where(I >= 0, I + seg.row_offset, -1))
        return self._merge(parts_D, parts_I, len(queries), k)

    @staticmethod
    def _dense_maxsim(seg, queries: np.ndarray, k: int,
                      vec_ok: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Documents scored by their best chunk: search chunk vectors, keep each document's first (best) hit.

        Exact with an exact FAISS index: once k distinct documents are among the top-k' chunks, no unseen
        document can beat them (all its chunks score below the k'-th). k' grows until that holds.
        """
        owner = np.asarray(seg.dense_owner)
        total = len(owner) if vec_ok is None else int(vec_ok.sum())
        nq = len(queries)
        D_out = np.full((nq, k), -np.inf, np.float32)
        I_out = np.full((nq, k), -1, np.int64)
        todo = np.arange(nq)
        kk = min(total, k * 4)
        while len(todo) and kk > 0:
            D, I = seg.dense.search(queries[todo], kk, vec_ok)
            again = []
            for r, q in enumerate(todo):
                valid = I[r] >= 0
                docs = owner[I[r][valid]]
                _, first = np.unique(docs, return_index=True)
                first.sort()
                if len(first) < k and kk < total:
                    again.append(q)
                    continue
                first = first[:k]
                D_out[q, :len(first)] = D[r][valid][first]
                I_out[q, :len(first)] = docs[first]
            todo = np.asarray(again, dtype=np.int64)
            kk = min(total, kk * 4)
        return D_out, I_out

    def search_sparse(self, queries: sp.csr_matrix, k: int, *, query_cut: int | None = None,
                      heap_factor: float = 1.0, candidates: int | None = None, filter: dict | str | None = None,
                      allowed: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sparse top-k over all segments: float32 csr (nq, V) >= 0 -> (D float32 (nq, k), I int64 global rows).

        Exact by default (block-max MaxScore over the quantized postings). ``query_cut`` (search only each
        query's heaviest terms), ``heap_factor`` (>= 1, prune bounds within that factor of the k-th score) and
        ``candidates`` (docs collected per query, then rescored with the whole query) make it approximate and
        faster: see :mod:`hylex.kernels.blockmax`. ``filter`` / ``allowed`` as in :meth:`search_dense`.
        """
        k = self._cap(k)
        # beyond every term / every document they change nothing (and must not size an allocation)
        query_cut = None if query_cut is None else min(int(query_cut), max(1, self.index.vocab_size))
        candidates = None if candidates is None else min(int(candidates), max(1, self.index.n_docs))
        allowed = self.allowed(filter) if allowed is None else allowed
        parts_D, parts_I = [], []
        for seg, ok in zip(self.index.segments, allowed):
            if ok is not None and not ok.any():
                continue
            _check_sparse_bound(queries, seg.sparse)
            D, I = seg.sparse.search(queries, k, ok, query_cut=query_cut, heap_factor=heap_factor,
                                     candidates=candidates)
            parts_D.append(D)
            parts_I.append(np.where(I >= 0, I + seg.row_offset, -1))
        return self._merge(parts_D, parts_I, queries.shape[0], k)

    def search_bm25(self, query_texts: Sequence[str], k: int, k1: float | None = None,
                    b: float | None = None, *, filter: dict | str | None = None,
                    allowed: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top-k over all segments with global statistics -> (D float32 (nq, k), I int64 global rows).

        Queries are analyzed like the documents (the index's analyzer); ``k1``/``b`` default to the index's.
        Only documents sharing a term with the query are hits. Statistics are those of all live documents
        (a filter narrows the hits, not the statistics).
        """
        texts = self._texts(query_texts, "query_texts")
        k = self._cap(k)
        k1 = self.index.bm25_k1 if k1 is None else check_k1(k1)
        b = self.index.bm25_b if b is None else check_b(b)
        allowed = self.allowed(filter) if allowed is None else allowed
        terms = self.index.bm25_analyzer.analyze(texts)
        return bm25_search([(seg.row_offset, seg.bm25, ok, seg.bm25_deleted)
                            for seg, ok in zip(self.index.segments, allowed)], terms, k, k1, b)

    def _cap(self, k) -> int:
        """``k`` checked and capped at the live document count (never below 1), before anything is allocated."""
        return min(check_k(k), max(1, self.index.n_docs))

    @staticmethod
    def _texts(texts, name: str) -> list[str]:
        if isinstance(texts, str):
            texts = [texts]
        if texts is None or not hasattr(texts, "__iter__"):
            raise HylexError(f"{name} must be a list of query texts, got {texts!r}")
        texts = list(texts)
        for i, q in enumerate(texts):
            if not isinstance(q, str) or not q.strip():
                raise HylexError(f"query {i} is empty or not a string: pass non-empty query texts")
        return [clean_text(q) for q in texts]  # lone surrogates -> U+FFFD, as for documents

    @staticmethod
    def _merge(parts_D, parts_I, nq, k):
        if not parts_D:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        if len(parts_D) == 1 and parts_D[0].shape[1] == k:
            return parts_D[0], parts_I[0]
        return merge_topk(np.concatenate(parts_D, 1), np.concatenate(parts_I, 1), k)

    # -- public search -----------------------------------------------------------------------------------
    @property
    def default_fusion(self) -> dict:
        """The fusion a plain hybrid search uses: the index's stored choice, else its model's, else the built-in
        one (:func:`hylex.retrieval.fusion.stored_fusion`): ``{"method", "arms", "weights", "source", ...}``."""
        from hylex.retrieval.fusion import stored_fusion

        return stored_fusion(self.index.manifest)

    def resolve_fusion(self, mode: str = "hybrid", arms: Sequence[str] | None = None,
                       weights: Sequence[float] | None = None, alpha: float | None = None,
                       fusion: str | None = None, inputs: set[str] | None = None
                       ) -> tuple[tuple[str, ...], list[float] | None, str]:
        """``(arms, weights, method)`` a search with these arguments runs (see :meth:`search`); weights are None
        for a single-arm mode. ``inputs``: the arms pre-encoded queries were given for (None: query texts)."""
        if fusion is not None and fusion not in FUSIONS:
            raise HylexError(f"fusion {fusion!r} is unknown: choose one of {', '.join(FUSIONS)}")
        alpha = check_alpha(alpha)
        if mode != "hybrid":
            return (mode,), None, fusion or "convex"
        if arms is None:
            stored = self.default_fusion
            if alpha is not None:
                arms = DEFAULT_ARMS  # alpha weighs dense against sparse
            elif inputs is not None and not set(stored["arms"]) <= inputs and set(DEFAULT_ARMS) <= inputs:
                arms = DEFAULT_ARMS  # vectors without bm25 texts: the arms they can search (as before)
            else:
                arms = tuple(stored["arms"])
                if weights is None and fusion in (None, "convex"):
                    return arms, list(stored["weights"]), "convex"
        arms = check_arms(arms)
        if weights is not None:
            weights = check_weights(weights, arms)
        method = fusion or "convex"
        return arms, fusion_weights(arms, weights, method, alpha), method

    def search(self, queries: Sequence[str] | str | None = None, *, k: int = 10, mode: str = "hybrid",
               fusion: str | None = None, alpha: float | None = None, rrf_k: float = 60.0,
               depth: int = DEFAULT_DEPTH, dense: np.ndarray | None = None, sparse: sp.spmatrix | None = None,
               bm25_queries: Sequence[str] | None = None, arms: Sequence[str] | None = None,
               weights: Sequence[float] | None = None, k1: float | None = None, b: float | None = None,
               query_cut: int | None = None, heap_factor: float = 1.0, candidates: int | None = None,
               filter: dict | str | None = None, with_documents: bool = False, explain: bool = False,
               max_document_bytes: int | None = None) -> Results:
        """Search by query texts or by pre-encoded queries.

        Args:
            queries: one text or a list of texts (encoded with the index's model when a dense or sparse arm is
                searched; analyzed for BM25), or None with ``dense``/``sparse``/``bm25_queries``.
            k: hits per query (>= 1).
            mode: ``dense``, ``sparse``, ``bm25`` (one arm) or ``hybrid`` (the ``arms`` fused).
            fusion: ``convex`` (weighted sum of min-max normalised scores) or ``rrf`` (weighted reciprocal rank);
                default convex.
            alpha: dense weight of the convex fusion of the arms dense and sparse (sparse gets ``1 - alpha``), in
                [0, 1]; with alpha alone the arms are dense and sparse. For other arms, use ``weights``.
            rrf_k: the constant of reciprocal rank fusion.
            depth: candidates each arm contributes to fusion (at least k); default DEFAULT_DEPTH (1000).
            dense: pre-encoded float32 (nq, dim) queries, L2-normalised like the documents.
            sparse: pre-encoded float32 csr (nq, vocab_size) queries.
            bm25_queries: the query texts for the bm25 arm when the queries are passed pre-encoded.
            arms: for ``hybrid``, the arms to fuse: any of ``dense``, ``sparse``, ``bm25``, each at most once.
                Default: the stored fusion's (:attr:`default_fusion`: the index's choice made on training queries,
                else its model's, else the built-in one); with neither arms, weights, alpha nor ``rrf``, its
                weights too. Pre-encoded ``dense`` and ``sparse`` queries without the input of a stored arm (no
                ``bm25_queries``) fuse dense and sparse, as ``alpha`` alone does.
            weights: for ``hybrid``, one weight >= 0 per arm (per default arm when ``arms`` is not given).
                Default: the stored fusion's when no arms, alpha or ``rrf`` are given; for arms given, convex
                ``[alpha, 1 - alpha]`` (alpha default DEFAULT_ALPHA) for dense and sparse, else equal weights summing
                to 1; rrf all 1.0.
            k1, b: BM25 parameters (default: the index's, set when it was built).
            query_cut, heap_factor, candidates: approximate sparse search (see :meth:`search_sparse`); the
                defaults are exact.
            filter: a metadata filter (:mod:`hylex.retrieval.filters`), applied before top-k selection in every
                arm; a filter matching nothing gives empty results.
            with_documents: attach the stored documents of the hits.
            explain: attach each hit's explanation (every searched arm's score of it, the sparse and BM25 terms
                behind them: :mod:`hylex.retrieval.explain`) as ``Results.explanations``.
            max_document_bytes: with ``with_documents``, the most bytes (UTF-8 text, title and JSON metadata) the
                hits' documents may hold together: past it, reading stops and :class:`ResultTooLargeError` is
                raised (None: no limit).
        Returns:
            :class:`Results` with arrays of shape (nq, k).
        """
        k = check_k(k)
        if mode not in MODES:
            raise HylexError(f"mode {mode!r} is unknown: choose one of {', '.join(MODES)}")
        if fusion is not None and fusion not in FUSIONS:
            raise HylexError(f"fusion {fusion!r} is unknown: choose one of {', '.join(FUSIONS)}")
        alpha = check_alpha(alpha)
        rrf_k = check_rrf_k(rrf_k)
        depth = max(check_k(depth, "depth"), k)
        # Results hold at most one slot per live document: k = 10**9 on 150 documents allocates 150 per query.
        cap = max(1, self.index.n_docs)
        k, depth = min(k, cap), min(depth, cap)
        if arms is not None:
            arms = check_arms(arms)
        if weights is not None and arms is not None:
            weights = check_weights(weights, arms)
        k1 = None if k1 is None else check_k1(k1)
        b = None if b is None else check_b(b)
        check_approx_knobs(query_cut, heap_factor, candidates)
        if max_document_bytes is not None and (isinstance(max_document_bytes, bool) or
                                               not isinstance(max_document_bytes, (int, np.integer))):
            raise HylexError(f"max_document_bytes must be an integer or None, got {max_document_bytes!r}")
        inputs = None if queries is not None else \
            {a for a, x in (("dense", dense), ("sparse", sparse), ("bm25", bm25_queries)) if x is not None}
        used, weights, fusion = self.resolve_fusion(mode, arms, weights, alpha, fusion, inputs)
        if filter is not None:
            filter = check_filter(filter)
        q_dense, q_sparse, q_texts = self._queries(queries, mode, used, dense, sparse, bm25_queries)
        allowed = self.allowed(filter)

        def arm(name: str, depth_: int) -> tuple[np.ndarray, np.ndarray]:
            if name == "dense":
                return self.search_dense(q_dense, depth_, allowed=allowed)
            if name == "sparse":
                return self.search_sparse(q_sparse, depth_, query_cut=query_cut, heap_factor=heap_factor,
                                          candidates=candidates, allowed=allowed)
            return self.search_bm25(q_texts, depth_, k1=k1, b=b, allowed=allowed)

        if mode != "hybrid":
            D, I = arm(mode, k)
        elif len(used) == 1:  # a fusion of one arm (e.g. a stored choice of BM25 alone): that arm's own scores
            D, I = arm(used[0], k)
        else:
            D, I = fuse_arms([arm(a, depth) for a in used], weights, fusion, k, rrf_k)
        id_list, docs = self._fetch(I.ravel(), keep=with_documents or explain,
                                    max_bytes=max_document_bytes if with_documents else None)
        ids = np.array(id_list, dtype=object).reshape(I.shape)
        res = Results(ids=ids, scores=D.astype(np.float32, copy=False), rows=I, mode=mode)
        if with_documents:
            res.documents = [docs[q * k:(q + 1) * k] for q in range(I.shape[0])]
        if explain:
            from hylex.retrieval.explain import explain_hits

            doc_texts = [[None if d is None else Document(d["id"], d["text"], d.get("title") or "").full_text
                          for d in docs[q * k:(q + 1) * k]] for q in range(I.shape[0])]
            res.explanations = explain_hits(
                self.index, I, res.scores, dense=q_dense if "dense" in used else None,
                sparse=q_sparse if "sparse" in used else None, bm25_texts=q_texts if "bm25" in used else None,
                k1=k1, b=b, encoder=self._encoder, query_texts=q_texts, doc_texts=doc_texts)
        return res

    def _fetch(self, rows: np.ndarray, keep: bool, max_bytes: int | None) -> tuple[list, list | None]:
        """The ids of the hits' documents (None where no hit), and the documents themselves when ``keep``: read
        FETCH_CHUNK at a time, so that documents not kept never pile up, and stopped once those counted pass
        ``max_bytes`` (:class:`ResultTooLargeError`)."""
        rows = rows.tolist()
        ids: list = []
        kept: list | None = [] if keep else None
        size = 0
        for start in range(0, len(rows), FETCH_CHUNK):
            part = self.index.documents(rows[start:start + FETCH_CHUNK])
            ids.extend(None if d is None else d["id"] for d in part)
            if max_bytes is not None:
                size += sum(document_bytes(d) for d in part if d is not None)
                if size > max_bytes:
                    n = sum(r >= 0 for r in rows)
                    raise ResultTooLargeError(
                        f"the documents of {sum(r >= 0 for r in rows[:start + FETCH_CHUNK])} of {n} hits already "
                        f"take {size:,} bytes, over the limit of {max_bytes:,}: ask for fewer hits (k, queries), "
                        f"or search without the documents and read the ones you need by id")
            if kept is not None:
                kept.extend(part)
        return ids, kept

    def _queries(self, queries, mode, used, dense, sparse, bm25_queries):
        need_dense, need_sparse, need_bm25 = ("dense" in used), ("sparse" in used), ("bm25" in used)
        texts = None
        if queries is not None:
            if dense is not None or sparse is not None:
                raise HylexError("pass query texts or pre-encoded vectors, not both")
            if bm25_queries is not None:
                raise HylexError("pass bm25_queries only with pre-encoded vectors: query texts serve the bm25 arm "
                                 "too")
            texts = self._texts(queries, "queries")
            if need_dense or need_sparse:
                # The TextEncoder protocol promises a (dense, sparse) pair: unpack it rather than use attributes.
                dense, sparse = self.encoder.encode_queries(texts)
                dense = np.asarray(dense, dtype=np.float32)
                sparse = sp.csr_matrix(sparse, dtype=np.float32)
        elif bm25_queries is not None:
            texts = self._texts(bm25_queries, "bm25_queries")
        vectors = [a for a in used if a in ("dense", "sparse")]
        if (need_dense and dense is None) or (need_sparse and sparse is None):
            raise HylexError(f"mode {mode!r} needs {' and '.join(vectors)} query vectors (or query texts)")
        if need_bm25 and texts is None:
            raise HylexError("the bm25 arm needs query texts: pass queries=[texts], or bm25_queries=[texts] along "
                             "with pre-encoded vectors")
        if dense is not None:
            dense = np.asarray(dense, dtype=np.float32)
            if dense.ndim == 1:
                dense = dense[None]
            if dense.ndim != 2 or dense.shape[1] != self.index.dim:
                raise HylexError(f"dense queries have shape {dense.shape}, the index needs (n, {self.index.dim})")
            if not np.isfinite(dense).all():
                raise HylexError("dense queries contain NaN or infinity")
            norms = np.linalg.norm(dense.astype(np.float64), axis=1)
            if len(norms) and norms.max() > MAX_DENSE_NORM:
                # documents are unit vectors: a query this long overflows float32 inner products into infinity
                i = int(np.argmax(norms))
                raise HylexError(f"dense query {i} has norm {norms[i]:.3g}: send L2-normalised vectors (norm 1, as "
                                 f"the encoder gives), at most {MAX_DENSE_NORM:g}")
        if sparse is not None:
            if not sp.issparse(sparse):
                raise HylexError("sparse queries must be a scipy.sparse matrix (n, vocab_size)")
            sparse = sp.csr_matrix(sparse, dtype=np.float32)
            if sparse.nnz and (not np.isfinite(sparse.data).all() or sparse.data.min() < 0):
                raise HylexError("sparse queries must have finite weights >= 0 (the encoder's log(1 + relu) "
                                 "weights are)")
            if sparse.shape[1] != self.index.vocab_size:
                raise HylexError(f"sparse queries have {sparse.shape[1]} columns, the index's vocabulary has "
                                 f"{self.index.vocab_size}")
        if dense is not None and sparse is not None and dense.shape[0] != sparse.shape[0]:
            raise HylexError(f"{dense.shape[0]} dense but {sparse.shape[0]} sparse queries: pass the same number")
        if texts is not None and need_bm25:
            for name, arr in (("dense", dense), ("sparse", sparse)):
                if arr is not None and (name in used) and arr.shape[0] != len(texts):
                    raise HylexError(f"{arr.shape[0]} {name} queries but {len(texts)} bm25 query texts: pass the "
                                     f"same number")
        return dense, sparse, texts
