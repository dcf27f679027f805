"""Fine-tuned models against the zero-shot model and BM25 (bm25s), on BEIR test sets: every arm and fusion, one run.

For one model (a packaged name or a tuned folder) and each dataset it builds (or reuses) a hylex index of the
corpus (encodings come from the encoding cache when present), encodes the test queries once, retrieves the top
1,000 of each arm (dense, sparse, BM25) and evaluates with ir_measures on the **test** qrels:

- ``dense``, ``sparse``, ``bm25`` (hylex's arm), and the peer ``bm25s`` (k1 0.9, b 0.4, stemmed, same process);
- ``dense+sparse``: the convex dense/sparse weights (both > 0) chosen on ``--choose-on``;
- ``with bm25``: the best convex fusion that gives BM25 a weight, chosen the same way;
- ``default``: what a plain ``hylex search`` fuses: with ``--choose-on train``, the overall best on the train
  split (what ``hylex fuse IDX DATA --split train`` stores); with ``--choose-on card``, the stored fusion the index
  has without ``hylex fuse`` (a tuned model's card, chosen on its dev queries; the registry or built-in fusion of
  an untuned model); with ``--choose-on base``, the one a tuned model's base carries (what ``hylex tune
  --fusion-from base`` stores: the default for a ``--from-corpus`` tune).

``--choose-on train`` encodes the train split's queries and chooses every weight on their qrels (a 0.1 grid,
:func:`hylex.retrieval.fusion.choose_fusion`); ``card`` (``base``) takes the model card's (its base's) weights and
never looks at qrels (for a collection without training labels, Vaswani). Test qrels are only used for the numbers.

One JSON line per (model, dataset): each system's nDCG@10 and R@100, the chosen weights, the index's encoding
time, the model card's training summary.

    python benchmarks/tuning.py --model runs/scifact-tuned --datasets ../shared/data/beir/scifact --choose-on train
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import Arms, bm25s_run, complete, emitter  # noqa: E402  (benchmarks/ is not a package)

from hylex.corpus import load_beir, read_corpus  # noqa: E402

ARMS = ("dense", "sparse", "bm25")


def round_metrics(m: dict) -> dict:
    return {k: round(v, 4) for k, v in m.items()}


def corpus_index(corpus, work: Path, name: str, slug: str, enc) -> tuple[Path, dict]:
    """An index of ``corpus`` built with ``enc`` under ``work``: ``(folder, build info)``. One per dtype (a
    float32 index is kept when a bfloat16 run is asked for, and the other way round); a complete one is reused,
    also under another tag when it holds the same weights (the shipped default is a copy of runs/default-tuned;
    :func:`complete` checks fingerprint and settings, dtype among them); a partial one is rebuilt."""
    from hylex.indexing import build_index

    suffix = "" if enc.config.dtype == "float32" else f"-{enc.config.dtype}"
    index_dir = work / f"{name}-{slug}{suffix}"
    n_docs = sum(1 for _ in read_corpus(corpus))
    if complete(index_dir, n_docs, enc):
        return index_dir, {}
    same = next((d for d in sorted(work.glob(f"{name}-*")) if complete(d, n_docs, enc)), None)
    if same is not None:
        return same, {"reused": same.name}
    shutil.rmtree(index_dir, ignore_errors=True)
    rep = build_index(corpus, index_dir, enc, progress=False)
    return index_dir, {"documents": rep.documents, "index_seconds": round(rep.seconds, 1),
                       "encode_seconds": round(rep.encode_seconds, 1), "cache_hits": rep.cache_hits}


def choose(arms: Arms) -> dict:
    """The dense+sparse, with-bm25 and overall best convex fusions on ``arms``' queries and qrels (nDCG@10)."""
    from hylex.retrieval.fusion import choose_fusion

    top = {a: arms.top[a] for a in ARMS}

    def score(D, I) -> float:
        return arms.evaluate(D, I)["ndcg@10"]

    overall, table = choose_fusion(top, score, k=arms.k, step=0.1)
    # the best with both LLM arms weighted (a hybrid, not one arm), and the best that gives BM25 a share
    ds = next(r for r in table if r["arms"] == ["dense", "sparse"])
    with_bm25 = next(r for r in table if "bm25" in r["arms"] and len(r["arms"]) > 1)
    return {"dense+sparse": ds, "with bm25": with_bm25, "default": overall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="packaged model name or tuned model folder")
    ap.add_argument("--datasets", nargs="+", required=True)
    ap.add_argument("--choose-on", choices=["train", "card", "base"], default="train",
                    help="where fusion weights come from: the dataset's train qrels, the model's stored fusion, or "
                         "its base's (a tuned folder)")
    ap.add_argument("--work", default="benchmarks/.work/tuning", help="where indexes are built (git-ignored)")
    ap.add_argument("--tag", default=None, help="a name for the model in the output [the model]")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="the encoder's dtype for documents and queries [auto: the encoder's own choice]")
    args = ap.parse_args()

    from hylex.engine import Encoder
    from hylex.retrieval import Searcher

    emit = emitter(args.out)

    enc = Encoder(args.model, progress=False, threads=args.threads, dtype=args.dtype)
    card = enc.resolved.card or {}
    base_fusion = None  # --choose-on base: what `--fusion-from base` keeps over the base (read once)
    if args.choose_on == "base":
        from hylex.engine.models import base_spec
        from hylex.tuning.tune import kept_fusion

        if not card.get("base"):
            sys.exit(f"tuning.py: --choose-on base needs a tuned model folder with a base; {args.model} has none")
        base_fusion = kept_fusion(base_spec(args.model, card))[1]
    tag = args.tag or Path(args.model).name
    slug = tag.replace("/", "_")
    for ds in args.datasets:
        name = Path(ds).name
        corpus, queries, qrels = load_beir(ds, "test")
        index_dir, index_info = corpus_index(corpus, Path(args.work), name, slug, enc)
        s = Searcher(index_dir, encoder=enc)
        qids = sorted(queries)
        test = Arms(s, qids, [queries[q] for q in qids], qrels)
        systems = {a: round_metrics(test.evaluate(*test.top[a])) for a in ARMS}
        ids, scores, _ = bm25s_run(corpus, queries, qids)
        from hylex.retrieval.evaluation import evaluate_run, run_from_results

        systems["bm25s"] = round_metrics(evaluate_run(run_from_results(qids, ids, scores), qrels))
        if args.choose_on == "train":
            _, tq, tqrels = load_beir(ds, "train")
            tids = sorted(q for q in tqrels if q in tq)
            chosen = choose(Arms(s, tids, [tq[q] for q in tids], tqrels))
            chosen_on = f"{name} train ({len(tids)} queries)"
        else:  # what a plain search over an index this model built uses (the index may carry another name's)
            from hylex.retrieval.fusion import stored_fusion

            f = base_fusion or (s.default_fusion if s.index.manifest.get("fusion")
                                else stored_fusion({"encoder": enc.describe()}))
            chosen = {"default": {"arms": f["arms"], "weights": f["weights"], "source": f.get("source"),
                                  "score": f.get("dev")}}
            chosen_on = f.get("chosen_on") or f.get("source")
            if base_fusion:
                chosen_on = f"the base's fusion ({chosen_on})"
        for label, c in chosen.items():
            if len(c["arms"]) == 1:
                m = test.evaluate(*test.top[c["arms"][0]])
            else:
                m = test.fused(tuple(c["arms"]), "convex", list(c["weights"]))
            systems[label] = {**round_metrics(m), "arms": c["arms"], "weights": c["weights"],
                              "chosen_score": None if c.get("score") is None else round(c["score"], 4)}
        emit({"model": tag, "model_path": str(args.model), "dataset": name, "queries": len(qids),
              "dtype": enc.config.dtype,
              "fusion_chosen_on": chosen_on, "fusion_source": args.choose_on, "systems": systems, "index": index_info,
              "query_encode_seconds": round(test.encode_seconds, 2),
              "training": {k: card.get(k) for k in ("base", "steps", "hyperparameters")} | {
                  "data": (card.get("training") or {}).get("sources"),
                  "cost": (card.get("training") or {}).get("cost"),
                  "dev": {k: (card.get("dev") or {}).get(k) for k in ("before", "after", "selected_step")}}
              if card else None})


if __name__ == "__main__":
    main()
