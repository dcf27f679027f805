"""Dense, sparse and hybrid search over a hylex index, by query text or by pre-encoded query vectors."""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from hylex.errors import HylexError
from hylex.indexing.index import Index
from hylex.indexing.protocols import TextEncoder
from hylex.kernels import fuse, merge_topk
from hylex.retrieval.results import Results

logger = logging.getLogger(__name__)

MODES = ("dense", "sparse", "hybrid")
FUSIONS = ("convex", "rrf")


def check_k(k, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise HylexError(f"{name} must be a positive integer, got {k!r}: ask for at least 1 hit")
    return int(k)


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
    return fuse(I_all, D_all, np.asarray(weights, np.float32), method, k, rrf_k)


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
        mine = encoder.describe()
        if mine.get("fingerprint") != info.get("fingerprint") or mine.get("settings") != info.get("settings"):
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
    def search_dense(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense top-k over all segments: float32 (nq, dim) -> (D float32 (nq, k), I int64 global rows)."""
        parts_D, parts_I = [], []
        for seg in self.index.segments:
            D, I = seg.dense.search(queries, min(k, max(seg.n_docs, 1)))
            parts_D.append(D)
            parts_I.append(np.where(I >= 0, I + seg.row_offset, -1))
        return self._merge(parts_D, parts_I, len(queries), k)

    def search_sparse(self, queries: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Sparse top-k over all segments: float32 csr (nq, V) -> (D float32 (nq, k), I int64 global rows)."""
        parts_D, parts_I = [], []
        for seg in self.index.segments:
            D, I = seg.sparse.search(queries, k)
            parts_D.append(D)
            parts_I.append(np.where(I >= 0, I + seg.row_offset, -1))
        return self._merge(parts_D, parts_I, queries.shape[0], k)

    @staticmethod
    def _merge(parts_D, parts_I, nq, k):
        if not parts_D:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        if len(parts_D) == 1 and parts_D[0].shape[1] == k:
            return parts_D[0], parts_I[0]
        return merge_topk(np.concatenate(parts_D, 1), np.concatenate(parts_I, 1), k)

    # -- public search -----------------------------------------------------------------------------------
    def search(self, queries: Sequence[str] | str | None = None, *, k: int = 10, mode: str = "hybrid",
               fusion: str = "convex", alpha: float = 0.5, rrf_k: float = 60.0, depth: int = 100,
               dense: np.ndarray | None = None, sparse: sp.spmatrix | None = None,
               with_documents: bool = False) -> Results:
        """Search by query texts or by pre-encoded queries.

        Args:
            queries: one text or a list of texts (encoded with the index's model), or None with ``dense``/``sparse``.
            k: hits per query (>= 1).
            mode: ``dense``, ``sparse`` or ``hybrid`` (both arms fused).
            fusion: ``convex`` (min-max normalised scores, ``alpha * dense + (1 - alpha) * sparse``) or ``rrf``.
            alpha: dense weight of the convex combination, in [0, 1].
            rrf_k: the constant of reciprocal rank fusion.
            depth: candidates each arm contributes to fusion (at least k).
            dense: pre-encoded float32 (nq, dim) queries, L2-normalised like the documents.
            sparse: pre-encoded float32 csr (nq, vocab_size) queries.
            with_documents: attach the stored documents of the hits.
        Returns:
            :class:`Results` with arrays of shape (nq, k).
        """
        k = check_k(k)
        if mode not in MODES:
            raise HylexError(f"mode {mode!r} is unknown: choose one of {', '.join(MODES)}")
        if fusion not in FUSIONS:
            raise HylexError(f"fusion {fusion!r} is unknown: choose one of {', '.join(FUSIONS)}")
        if not (0.0 <= float(alpha) <= 1.0):
            raise HylexError(f"alpha must be in [0, 1], got {alpha}: it is the dense arm's weight")
        depth = max(check_k(depth, "depth"), k)
        q_dense, q_sparse = self._queries(queries, mode, dense, sparse)
        if mode == "dense":
            D, I = self.search_dense(q_dense, k)
        elif mode == "sparse":
            D, I = self.search_sparse(q_sparse, k)
        else:
            arms = [self.search_dense(q_dense, depth), self.search_sparse(q_sparse, depth)]
            weights = [alpha, 1.0 - alpha] if fusion == "convex" else [1.0, 1.0]
            D, I = fuse_arms(arms, weights, fusion, k, rrf_k)
        flat = I.ravel()
        docs = self.index.documents(flat.tolist())
        ids = np.array([None if d is None else d["id"] for d in docs], dtype=object).reshape(I.shape)
        res = Results(ids=ids, scores=D.astype(np.float32, copy=False), rows=I, mode=mode)
        if with_documents:
            res.documents = [docs[q * k:(q + 1) * k] for q in range(I.shape[0])]
        return res

    def _queries(self, queries, mode, dense, sparse):
        if queries is not None:
            if dense is not None or sparse is not None:
                raise HylexError("pass query texts or pre-encoded vectors, not both")
            if isinstance(queries, str):
                queries = [queries]
            queries = list(queries)
            for i, q in enumerate(queries):
                if not isinstance(q, str) or not q.strip():
                    raise HylexError(f"query {i} is empty or not a string: pass non-empty query texts")
            # The TextEncoder protocol promises a (dense, sparse) pair: unpack it rather than use attributes.
            dense, sparse = self.encoder.encode_queries(queries)
            dense = np.asarray(dense, dtype=np.float32)
            sparse = sp.csr_matrix(sparse, dtype=np.float32)
        need_dense, need_sparse = mode in ("dense", "hybrid"), mode in ("sparse", "hybrid")
        if (need_dense and dense is None) or (need_sparse and sparse is None):
            raise HylexError(f"mode {mode!r} needs {'dense and sparse' if mode == 'hybrid' else mode} query "
                             f"vectors (or query texts)")
        if dense is not None:
            dense = np.asarray(dense, dtype=np.float32)
            if dense.ndim == 1:
                dense = dense[None]
            if dense.ndim != 2 or dense.shape[1] != self.index.dim:
                raise HylexError(f"dense queries have shape {dense.shape}, the index needs (n, {self.index.dim})")
            if not np.isfinite(dense).all():
                raise HylexError("dense queries contain NaN or infinity")
        if sparse is not None:
            if not sp.issparse(sparse):
                raise HylexError("sparse queries must be a scipy.sparse matrix (n, vocab_size)")
            sparse = sp.csr_matrix(sparse, dtype=np.float32)
            if sparse.shape[1] != self.index.vocab_size:
                raise HylexError(f"sparse queries have {sparse.shape[1]} columns, the index's vocabulary has "
                                 f"{self.index.vocab_size}")
        if dense is not None and sparse is not None and dense.shape[0] != sparse.shape[0]:
            raise HylexError(f"{dense.shape[0]} dense but {sparse.shape[0]} sparse queries: pass the same number")
        return dense, sparse
