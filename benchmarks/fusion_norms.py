"""Would another score normalisation move a fusion? Min-max (hylex's convex fusion) against distribution-based
score fusion (Qdrant's DBSF), plain z-scores and reciprocal rank, each with weights chosen on a train split and
scored on a dev split.

For one model's index of a BEIR corpus, every arm's top ``--depth`` list is retrieved once per split
(:class:`quality.Arms`); per query and arm the scores are normalised by one of

* ``minmax``: ``(s - min) / (max - min)`` over the arm's list (hylex's ``convex``; checked against the kernel);
* ``dbsf``: ``(s - (mean - 3 sd)) / (6 sd)`` clipped to [0, 1] (Qdrant's distribution-based score fusion);
* ``zscore``: ``(s - mean) / sd``, shifted so the arm's last listed hit is 0 (what a missing document gets);
* ``rrf``: ``1 / (60 + rank)`` (hylex's ``rrf``);

a document missing from an arm's list gets 0 from it. For each normalisation the 0.1 weight grid of ``hylex fuse``
(every non-empty subset of the arms; ``choose_fusion`` with this normalisation's fusion, a single arm
being its own list) is scored by nDCG@10 on the **train** queries, the best point taken (ties
within 1e-4 to fewer arms), and that point scored on the **dev** queries. One JSON line per normalisation. Test
qrels are never read.

    python benchmarks/fusion_norms.py --index benchmarks/.work/tuning/nfcorpus-smollm2-135m-hylex-bfloat16 \\
        --data ../shared/data/beir/nfcorpus --tag smollm2-135m-hylex
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from default_gate import split_arms  # noqa: E402  (benchmarks/ is not a package)
from quality import emitter  # noqa: E402

NORMS = ("minmax", "dbsf", "zscore", "rrf")


def normalise(D: np.ndarray, I: np.ndarray, how: str, rrf_k: float = 60.0) -> np.ndarray:
    """Per-query normalised scores of one arm.

    Args:
        D: float32 (nq, depth) scores, I: int64 (nq, depth) doc ids (-1 = no hit; ids unique within a row).
        how: one of :data:`NORMS`.

    Returns:
        float64 (nq, depth), 0 where ``I < 0``.
    """
    if how not in NORMS:
        raise ValueError(f"how must be one of {NORMS}, got {how!r}")
    valid = I >= 0
    S = np.where(valid, D.astype(np.float64), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a query an arm found nothing for: an all-NaN row
        if how == "rrf":
            out = 1.0 / (rrf_k + np.cumsum(valid, axis=1))
        elif how == "minmax":
            lo, hi = np.nanmin(S, axis=1, keepdims=True), np.nanmax(S, axis=1, keepdims=True)
            out = np.where(hi > lo, (S - lo) / (hi - lo), 1.0)
        else:
            mu, sd = np.nanmean(S, axis=1, keepdims=True), np.nanstd(S, axis=1, keepdims=True)
            if how == "dbsf":
                out = np.where(sd > 0, np.clip((S - (mu - 3 * sd)) / (6 * sd), 0.0, 1.0), 1.0)
            else:
                z = np.where(sd > 0, (S - mu) / sd, 0.0)
                out = z - np.nanmin(np.where(valid, z, np.nan), axis=1, keepdims=True)
    return np.where(valid, out, 0.0)


class Fuser:
    """Every query's union of the arms' hits with each arm's normalised contribution, so that a weight vector's
    fusion is one small product per query."""

    def __init__(self, top: dict[str, tuple[np.ndarray, np.ndarray]], arms: tuple[str, ...], how: str):
        self.arms = arms
        nq = top[arms[0]][1].shape[0]
        norm = {a: normalise(*top[a], how) for a in arms}
        self.docs, self.contrib = [], []
        for q in range(nq):
            ids = np.concatenate([top[a][1][q] for a in arms])
            docs, inv = np.unique(ids, return_inverse=True)
            M = np.zeros((len(arms), len(docs)))
            for i, a in enumerate(arms):
                d = top[a][1].shape[1]
                np.add.at(M[i], inv[i * d:(i + 1) * d], norm[a][q])
            keep = docs >= 0
            self.docs.append(docs[keep])
            self.contrib.append(M[:, keep])

    def top(self, weights, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)``: float32 / int64 (nq, k) of the fusion with ``weights`` (one per arm in ``self.arms``);
        ties go to the lower doc id (the kernels' rule)."""
        w = np.asarray(weights, np.float64)
        D = np.full((len(self.docs), k), -np.inf, np.float32)
        I = np.full((len(self.docs), k), -1, np.int64)
        for q, (docs, M) in enumerate(zip(self.docs, self.contrib)):
            s = (w @ M).astype(np.float32)
            order = np.lexsort((docs, -s))[:k]
            D[q, :len(order)], I[q, :len(order)] = s[order], docs[order]
        return D, I


def grid_fuse(top: dict[str, tuple[np.ndarray, np.ndarray]], how: str):
    """``choose_fusion``'s ``fuse`` for normalisation ``how``: one :class:`Fuser` per arm subset, built on first use
    and reused for every weight vector of that subset."""
    fusers: dict[tuple[str, ...], Fuser] = {}

    def fuse(used: tuple[str, ...], weights, k: int) -> tuple[np.ndarray, np.ndarray]:
        if used not in fusers:
            fusers[used] = Fuser(top, used, how)
        return fusers[used].top(weights, k)

    fuse.fusers = fusers  # which subsets were fused (the tests look)
    return fuse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True, help="a hylex index of the collection's corpus")
    ap.add_argument("--data", required=True, help="the BEIR folder (queries.jsonl, qrels/<split>.tsv)")
    ap.add_argument("--tag", required=True, help="the model's name in the output")
    ap.add_argument("--choose-split", default="train", help="qrels split the weights are chosen on [train]")
    ap.add_argument("--eval-split", default="dev", help="qrels split the chosen weights are scored on [dev]")
    ap.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    ap.add_argument("--dtype", default="bfloat16", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()
    if "test" in (args.choose_split, args.eval_split):
        ap.error("test qrels are for final numbers only: choose on train and score on dev")

    from hylex.retrieval import Searcher
    from hylex.retrieval.fusion import choose_fusion

    emit = emitter(args.out, model=args.tag, dataset=Path(args.data).name)
    searcher = Searcher(args.index, dtype=args.dtype, progress=False)
    choose, held = split_arms(searcher, args.data, args.choose_split), split_arms(searcher, args.data, args.eval_split)
    for how in args.norms:
        t = time.perf_counter()
        # hylex fuse's grid and tie rule, with this normalisation's fusion
        best, _ = choose_fusion(choose.top, lambda D, I: choose.evaluate(D, I)["ndcg@10"], k=choose.k,
                                fuse=grid_fuse(choose.top, how))
        arms, weights = tuple(best["arms"]), tuple(best["weights"])
        dev = held.evaluate(*(Fuser(held.top, arms, how).top(weights, held.k) if len(arms) > 1 else
                              tuple(a[:, :held.k] for a in held.top[arms[0]])))["ndcg@10"]
        rec = {"norm": how, "chosen_on": f"{args.choose_split} ({len(choose.qids)} queries)",
               "arms": list(arms), "weights": list(weights), "chosen_score": round(best["score"], 4),
               "scored_on": f"{args.eval_split} ({len(held.qids)} queries)", "ndcg@10": round(dev, 4),
               "depth": choose.depth, "seconds": round(time.perf_counter() - t, 1)}
        if how in ("minmax", "rrf") and len(arms) > 1:  # the same fusion through hylex's kernel
            kernel = held.fused(list(arms), "convex" if how == "minmax" else "rrf", list(weights))["ndcg@10"]
            rec["kernel_ndcg@10"] = round(kernel, 4)
        emit(rec)


if __name__ == "__main__":
    main()
