"""Two tuned models on the dev pool `hylex tune` carves from a BEIR train split, compared per query.

Rebuilds the dev queries and candidate pool exactly as ``hylex tune DATA --split SPLIT`` does with its default dev
settings (``--dev 0.1 --max-dev 200 --dev-distractors 300``; ``--seed`` as the runs had it), encodes them with each
model as an index would (``dtype=auto``, the inference path), and prints one JSON line per system (dense, sparse,
the equal-weight fusions the dev log reports): per-query nDCG@10 of B - A with a bootstrap interval, p-values and
wins/losses (``paired.compare``). No test qrels are read.

    python benchmarks/paired_dev.py runs/scifact-acc4 runs/scifact-gc4 --data ../shared/data/beir/scifact
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paired import compare, per_query as metric_per_query  # noqa: E402  (benchmarks/ is not a package)

from hylex.tuning.evaluate import FUSIONS  # noqa: E402

SYSTEMS = {"dense": (("dense",), (1.0,)), "sparse": (("sparse",), (1.0,)),
           **{name: FUSIONS[name] for name in ("dense+sparse", "dense+sparse+bm25")}}


def per_query(evaluator, model: str) -> dict[str, np.ndarray]:
    """Per system, nDCG@10 of each dev query (float64 (Q,)) for ``model``."""
    from hylex.engine import Encoder
    from hylex.retrieval.searcher import fuse_arms

    arms = evaluator.arms(Encoder(model, progress=False, encoding_cache=False))
    out = {}
    for name, (which, weights) in SYSTEMS.items():
        D, I = arms[which[0]] if len(which) == 1 else fuse_arms([arms[a] for a in which], weights, "convex", 10)
        scores = metric_per_query(evaluator.run(D[:, :10], I[:, :10]), evaluator.qrels, "nDCG@10")
        out[name] = np.array([scores[f"q{i}"] for i in range(len(evaluator.queries))])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="model A (a tuned folder or packaged name)")
    ap.add_argument("b", help="model B")
    ap.add_argument("--data", required=True, help="the BEIR folder both were tuned on")
    ap.add_argument("--split", default="train")
    ap.add_argument("--seed", type=int, default=0, help="the seed both were tuned with (it carves the dev) [0]")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()

    from hylex.tuning.evaluate import DevEvaluator
    from hylex.tuning.tune import DataArgs, load_data

    _, dev, extra = load_data(DataArgs(beir=args.data, split=args.split, mine=False, seed=args.seed))
    evaluator = DevEvaluator(dev, extra=extra)
    a, b = per_query(evaluator, args.a), per_query(evaluator, args.b)
    for name in SYSTEMS:
        rec = {"date": time.strftime("%Y-%m-%d"), "dataset": Path(args.data).name, "dev_queries": len(dev.groups),
               "pool": len(evaluator.pool), "seed": args.seed, "system": name, "a": args.a, "b": args.b,
               **compare(a[name], b[name])}
        print(json.dumps(rec), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
