"""A default-model candidate's card fusion, chosen on several collections' train queries, and its dev gate.

For a candidate model (a tuned folder) this script

1. builds (or reuses) a bf16/float32 index of each ``--choose-on`` collection's corpus with the candidate (the
   folder ``benchmarks/tuning.py`` uses, so its test run reuses them), encodes each collection's **train** queries
   and scores every point of the 0.1 convex weight grid (:func:`hylex.retrieval.fusion.choose_fusion`) by
   nDCG@10 there;
2. takes the grid point with the best **mean** nDCG@10 over the collections (ties within 1e-4 broken towards fewer
   arms, as ``hylex fuse`` breaks them) and writes it into the candidate's card (``hylex-model.json``, the fusion a
   plain search with the model uses; the card's earlier fusion is kept as ``fusion_on_dev``);
3. scores the candidate with that fusion and the shipped model with its own stored fusion on the ``--gate``
   collection's **dev** split (queries no choice above used), each over an index of that corpus built with it.

One JSON line per collection choice, one for the chosen fusion, one for the gate (with the per-query difference,
``paired.compare``). Exits 0 when the candidate's gate score is above the shipped model's by more than ``--margin``
(default 0: above at all), 3 when it is not (so ``tuning_runs.sh`` stops before any test number). Test qrels are
never read.

    python benchmarks/default_gate.py --candidate runs/default-v3 --tag default-v3 --shipped smollm2-135m-hylex \\
        --choose-on ../shared/data/beir/scifact ../shared/data/beir/nfcorpus --gate ../shared/data/beir/nfcorpus
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired import compare, per_query  # noqa: E402  (benchmarks/ is not a package)
from quality import Arms, emitter  # noqa: E402
from tuning import corpus_index  # noqa: E402
from tuning_table import set_card_fusion  # noqa: E402

from hylex.corpus import load_beir  # noqa: E402


def split_arms(searcher, ds: str, split: str) -> Arms:
    """Every arm's top lists for ``ds``'s ``split`` queries that have judgments."""
    _, queries, qrels = load_beir(ds, split)
    qids = sorted(q for q in qrels if q in queries)
    return Arms(searcher, qids, [queries[q] for q in qids], qrels)


def mean_choice(tables: list[dict[tuple, float]], tolerance: float = 1e-4) -> tuple[tuple, dict[tuple, float]]:
    """The grid point with the best mean score over several collections' grids.

    Args:
        tables: per collection, ``{(arms tuple, weights tuple): score}`` over the same grid points, in the grid's
            order (as :func:`hylex.retrieval.fusion.choose_fusion` scores them).
        tolerance: means within this of the best count as ties, broken towards fewer arms and then the first
            table's order (``choose_fusion``'s rule).

    Returns:
        ``(best key, {key: mean score})``.
    """
    keys = list(tables[0])
    if not keys or any(set(t) != set(keys) for t in tables):
        raise ValueError("every collection must score the same grid points")
    mean = {k: float(np.mean([t[k] for t in tables])) for k in keys}
    top = max(mean.values())
    return min((k for k in keys if mean[k] >= top - tolerance), key=lambda k: len(k[0])), mean


def gate_passed(paired: dict, margin: float = 0.0) -> bool:
    """Whether the candidate (``paired``'s ``mean_b``) is above the shipped model (``mean_a``) by more than
    ``margin`` nDCG@10 on the gate's queries."""
    if not (margin >= 0.0):
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    return paired["mean_b"] - paired["mean_a"] > margin


def fused_run(arms: Arms, fusion: dict) -> dict[str, dict[str, float]]:
    """The run (query id -> {doc id: score}, top ``arms.k``) of ``fusion`` (one arm or a convex fusion) over
    ``arms``."""
    names = fusion["arms"]
    if len(names) == 1:
        return arms.run(*arms.top[names[0]])
    return arms.run(*arms.fused_top(names, "convex", fusion["weights"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidate", required=True, help="the candidate's tuned model folder")
    ap.add_argument("--tag", required=True, help="its name in the output and in index folder names")
    ap.add_argument("--shipped", required=True, help="the shipped default it must beat (a packaged name)")
    ap.add_argument("--choose-on", nargs="+", required=True, help="BEIR folders whose train queries choose the fusion")
    ap.add_argument("--gate", required=True, help="BEIR folder whose dev queries decide")
    ap.add_argument("--margin", type=float, default=0.0,
                    help="nDCG@10 the candidate must be above the shipped model by on the gate's dev queries [0]")
    ap.add_argument("--dtype", default="bfloat16", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--work", default="benchmarks/.work/tuning", help="where indexes are built (git-ignored)")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()
    if not (args.margin >= 0.0):
        ap.error(f"--margin must be a number >= 0, got {args.margin}")

    from hylex.engine import Encoder
    from hylex.retrieval import Searcher
    from hylex.retrieval.fusion import choose_fusion, stored_fusion

    emit = emitter(args.out, model=args.tag)

    def searcher(enc, ds: str, slug: str):
        index_dir, info = corpus_index(Path(ds) / "corpus.jsonl", Path(args.work), Path(ds).name, slug, enc)
        return Searcher(index_dir, encoder=enc), {"index": index_dir.name, **info}

    cand = Encoder(args.candidate, progress=False, dtype=args.dtype)
    searchers, tables, where = {}, [], []
    for ds in args.choose_on:
        name = Path(ds).name
        s, info = searcher(cand, ds, args.tag.replace("/", "_"))
        searchers[name] = s
        arms = split_arms(s, ds, "train")

        def score(D, I, arms=arms) -> float:
            return arms.evaluate(D, I)["ndcg@10"]

        best, table = choose_fusion(arms.top, score, k=arms.k, step=0.1)
        tables.append({(tuple(r["arms"]), tuple(r["weights"])): r["score"] for r in table})
        where.append(f"{name} train ({len(arms.qids)} queries)")
        emit({"event": "train grid", "dataset": name, "queries": len(arms.qids), "best": best,
              "arms alone": {a: round(tables[-1][((a,), (1.0,))], 4) for a in ("dense", "sparse", "bm25")},
              **info})
    arms_w, mean = mean_choice(tables)
    chosen = {"method": "convex", "arms": list(arms_w[0]), "weights": list(arms_w[1]), "metric": "nDCG@10",
              "train": round(mean[arms_w], 4), "chosen_on": "mean of " + " and ".join(where),
              "per_collection": [round(t[arms_w], 4) for t in tables],
              "note": "chosen by benchmarks/default_gate.py: the 0.1 grid point with the best mean nDCG@10 over the "
                      "collections' train queries; the dev choice is fusion_on_dev"}
    emit({"event": "chosen", "fusion": chosen,
          "runner_up": sorted(({"arms": list(k[0]), "weights": list(k[1]), "mean": round(v, 4)}
                               for k, v in mean.items() if k != arms_w), key=lambda r: -r["mean"])[:3]})
    set_card_fusion(args.candidate, chosen)

    # the gate: the gate collection's dev queries, the candidate's chosen fusion against the shipped model's stored one
    name = Path(args.gate).name
    c_search = searchers.get(name) or searcher(cand, args.gate, args.tag.replace("/", "_"))[0]
    c_arms = split_arms(c_search, args.gate, "dev")
    c_scores = per_query(fused_run(c_arms, chosen), c_arms.qrels, "nDCG@10")
    shipped = Encoder(args.shipped, progress=False, dtype=args.dtype)
    s_search, s_info = searcher(shipped, args.gate, args.shipped.replace("/", "_"))
    s_fusion = stored_fusion({"encoder": shipped.describe()})
    s_arms = split_arms(s_search, args.gate, "dev")
    s_scores = per_query(fused_run(s_arms, s_fusion), s_arms.qrels, "nDCG@10")
    qids = sorted(c_scores)
    paired = compare(np.array([s_scores[q] for q in qids]), np.array([c_scores[q] for q in qids]))
    passed = gate_passed(paired, args.margin)
    emit({"event": "gate", "dataset": name, "split": "dev", "queries": len(qids),
          "candidate": {"ndcg@10": paired["mean_b"], "arms": chosen["arms"], "weights": chosen["weights"],
                        "arms alone": {a: round(c_arms.evaluate(*c_arms.top[a])["ndcg@10"], 4) for a in c_arms.top}},
          "shipped": {"model": args.shipped, "ndcg@10": paired["mean_a"], "arms": s_fusion["arms"],
                      "weights": s_fusion["weights"],
                      "arms alone": {a: round(s_arms.evaluate(*s_arms.top[a])["ndcg@10"], 4) for a in s_arms.top},
                      **s_info},
          "candidate - shipped": paired, "margin": args.margin, "passed": passed})
    if not passed:
        sys.exit(3)


if __name__ == "__main__":
    main()
