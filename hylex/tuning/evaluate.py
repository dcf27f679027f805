"""Dev evaluation during training: nDCG@10 of each arm and of fusions on held-out training queries.

The dev queries are scored against a candidate pool (their positives, their negatives, and optionally extra
corpus passages), not the whole corpus: encoding a full corpus at every evaluation is what a CPU cannot afford.
The pool's BM25 arm does not change with training; the dense and sparse arms are re-encoded each time through
:meth:`Encoder.encode` (the inference path, top-k pruning included) with the encoding cache off (its keys name the
base model, whose encodings training changes).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from hylex.tuning.data import TrainingData, TrainingDataError

logger = logging.getLogger(__name__)

# the fusions compared on dev (arms, weights); convex fusion of min-max normalised scores, as hylex search
FUSIONS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "dense+sparse": (("dense", "sparse"), (0.5, 0.5)),
    "dense+bm25": (("dense", "bm25"), (0.5, 0.5)),
    "sparse+bm25": (("sparse", "bm25"), (0.5, 0.5)),
    "dense+sparse+bm25": (("dense", "sparse", "bm25"), (1 / 3, 1 / 3, 1 / 3)),
}


@dataclass
class DevEvaluator:
    """Callable ``evaluator(encoder) -> {"dense": nDCG@10, "sparse": ..., "bm25": ..., "<fusion>": ...}``.

    Args:
        dev: the dev groups (each query's positives are its relevant passages).
        extra: more candidate passages (e.g. a sample of the corpus), as distractors.
        depth: per-arm candidates fused.
        metric: an ir-measures metric name.
        autocast: encode under bfloat16 autocast (None: where the hardware runs it fast, as inference does).
    """

    dev: TrainingData
    extra: Sequence[str] = ()
    depth: int = 100
    metric: str = "nDCG@10"
    autocast: bool | None = None  # bfloat16 autocast while encoding (None: where fast)
    grid_step: float = 0.1
    last_fusion: dict | None = field(init=False, default=None)
    pool: list[str] = field(init=False)
    qrels: dict = field(init=False)

    def __post_init__(self) -> None:
        if not self.dev.groups:
            raise TrainingDataError("the dev set is empty: carve some training queries out with --dev")
        index: dict[str, int] = {}
        qrels: dict[str, dict[str, int]] = {}
        for i, g in enumerate(self.dev.groups):
            for t in g.pos:
                qrels.setdefault(f"q{i}", {})[f"p{index.setdefault(t, len(index))}"] = 1
            for t in g.neg:
                index.setdefault(t, len(index))
        for t in self.extra:
            index.setdefault(t, len(index))
        self.pool = list(index)
        self.qrels = qrels
        self.queries = [g.query for g in self.dev.groups]
        self._bm25 = self._bm25_arm()

    def _bm25_arm(self):
        from hylex.indexing.bm25 import Bm25Postings, bm25_search
        from hylex.text import Bm25Analyzer

        an = Bm25Analyzer()
        postings = Bm25Postings.from_tokens(an.analyze(self.pool))
        return bm25_search([(0, postings)], an.analyze(self.queries), min(self.depth, len(self.pool)))

    def arms(self, encoder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per arm ``(D float32 (nq, depth), I int64 (nq, depth))`` over the pool."""
        import torch

        from hylex.engine.encoder import bf16_is_fast

        saved, encoder.encoding_cache = encoder.encoding_cache, None
        was_training = encoder.lm.training
        encoder.lm.eval()
        # the trainer keeps the model in float32; bfloat16 autocast (where the hardware runs it fast, as inference
        # does) makes each evaluation ~1.8x cheaper here, at the precision the index will be encoded with
        fast = self.autocast if self.autocast is not None else bf16_is_fast(encoder.device)
        try:
            with torch.autocast(encoder.device.type, dtype=torch.bfloat16, enabled=fast):
                q = encoder.encode_queries(self.queries)
                p = encoder.encode_documents(self.pool)
        finally:
            encoder.encoding_cache = saved
            encoder.lm.train(was_training)
        depth = min(self.depth, len(self.pool))
        dense = _topk((q.dense @ p.dense.T).astype(np.float32), depth)
        sparse = _topk((q.sparse @ p.sparse.T).toarray().astype(np.float32), depth, positive_only=True)
        return {"dense": dense, "sparse": sparse, "bm25": self._bm25}

    def run(self, D: np.ndarray, I: np.ndarray) -> dict[str, dict[str, float]]:
        """The ir-measures run of top lists ``(D, I)`` over the pool (ids ``q<i>`` / ``p<j>``, as :attr:`qrels`)."""
        from hylex.retrieval.evaluation import run_from_results

        ids = np.where(I >= 0, np.char.add("p", I.astype(str)), None).astype(object)
        return run_from_results([f"q{i}" for i in range(len(self.queries))], ids, D)

    def _score(self, D: np.ndarray, I: np.ndarray) -> float:
        from hylex.retrieval.evaluation import evaluate_run

        return float(next(iter(evaluate_run(self.run(D, I), self.qrels, (self.metric,)).values())))

    def __call__(self, encoder) -> dict[str, float]:
        """Scores of each arm, of the fixed :data:`FUSIONS`, and under ``"best"`` of the best convex fusion on a
        0.1 weight grid over the three arms (:func:`hylex.retrieval.fusion.choose_fusion`); that fusion is kept
        in :attr:`last_fusion` (``{"arms", "weights", "score"}``)."""
        from hylex.retrieval.fusion import choose_fusion
        from hylex.retrieval.searcher import fuse_arms

        arms = self.arms(encoder)
        k = min(10, len(self.pool))
        out = {name: round(self._score(*arm), 4) for name, arm in arms.items()}
        for name, (which, weights) in FUSIONS.items():
            D, I = fuse_arms([arms[a] for a in which], weights, "convex", k)
            out[name] = round(self._score(D, I), 4)
        best, _ = choose_fusion(arms, self._score, k=k, step=self.grid_step)
        self.last_fusion = {"arms": best["arms"], "weights": best["weights"], "score": round(best["score"], 4)}
        out["best"] = round(best["score"], 4)
        return out


def _topk(scores: np.ndarray, k: int, positive_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a score matrix float32 (nq, n): ``(D (nq, k), I int64 (nq, k))``, ties by index ascending;
    with ``positive_only`` a zero score is no hit (``I == -1``, ``D == -inf``), as in the sparse arm."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    D = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    I = order.astype(np.int64)
    if positive_only:
        miss = D <= 0
        D[miss], I[miss] = -np.inf, -1
    return D, I


def best_fusion(scores: dict[str, float]) -> tuple[str, tuple[str, ...], tuple[float, ...]]:
    """The best arm or fixed fusion in a :class:`DevEvaluator` result: ``(name, arms, weights)`` (the grid's
    ``"best"`` is not a name: its arms and weights are the evaluator's ``last_fusion``)."""
    scores = {k: v for k, v in scores.items() if k != "best"}
    name = max(scores, key=lambda k: (scores[k], -len(k)))
    if name in FUSIONS:
        return (name, *FUSIONS[name])
    return name, (name,), (1.0,)


__all__ = ["FUSIONS", "DevEvaluator", "best_fusion"]
