"""Does a fusion chosen on pseudo-queries built from a corpus transfer to real queries? One JSON line per run.

`hylex tune --from-corpus` has no real queries: it stores the fusion (arms, weights) that scores best on dev
pairs it built from the documents themselves (a title and its abstract, a document's opening words and the rest,
two crops). On Vaswani that choice weighted the LLM arms more than its test queries repaid, three times
(benchmarks/README.md, "Vaswani"). This script measures the same thing where it may be measured, on a collection
with real **training** queries (never test): for one model and one index of the collection's corpus built with it,

- ``pseudo``: the fusion the tune's dev evaluation picks on pairs built from the corpus (the same construction,
  dev size and distractors as ``hylex tune --from-corpus``; nothing is trained);
- ``real``: the fusion ``hylex fuse --split train`` picks on the collection's train queries and qrels;
- each one's nDCG@10 on those train queries, and ``regret`` = real's - pseudo's there (0: the pseudo-queries chose
  as well as real ones would have);
- ``stored``: the fusion a plain search of the model uses (a tuned folder's card: for a ``--from-corpus`` tune
  with ``--fusion-from dev``, the one its own dev chose), and ``base``: for a tuned folder, the one its base model
  carries (chosen on some collection's real queries; what ``--fusion-from base`` keeps), each scored on the same
  train queries.

Use an untuned model or one tuned without these train queries (a model tuned on them fits them).

    python benchmarks/pseudo_fusion.py --data ../shared/data/beir/scifact --model smollm2-135m --pairs title lead
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import Arms, complete  # noqa: E402  (benchmarks/ is not a package)
from tuning import corpus_index  # noqa: E402

ARMS = ("dense", "sparse", "bm25")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="BEIR folder with corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    ap.add_argument("--model", required=True, help="packaged model name or tuned model folder")
    ap.add_argument("--pairs", nargs="+", default=["title", "lead"], help="pair constructions (hylex tune "
                    "--pairs-from): title, lead, crop")
    ap.add_argument("--split", default="train", help="the real queries' split (never test) [train]")
    ap.add_argument("--max-dev", type=int, default=200, help="pseudo dev pairs, as hylex tune's --max-dev [200]")
    ap.add_argument("--distractors", type=int, default=300, help="random corpus passages in the dev pool [300]")
    ap.add_argument("--index", default=None, help="an index of the corpus built with --model (built under --work "
                    "when missing)")
    ap.add_argument("--work", default="benchmarks/.work/tuning", help="where the index is built (git-ignored)")
    ap.add_argument("--tag", default=None, help="a name for the model in the output [the model]")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()
    if args.split.lower().startswith("test"):
        sys.exit("pseudo_fusion.py: --split test would choose a fusion on test queries; use a training split")

    from hylex.corpus import load_beir, read_corpus
    from hylex.engine import Encoder
    from hylex.engine.models import base_spec, read_card
    from hylex.retrieval.fusion import choose_fusion, stored_fusion
    from hylex.retrieval.searcher import Searcher
    from hylex.tuning.evaluate import DevEvaluator
    from hylex.tuning.data import TrainingDataError
    from hylex.tuning.tune import DataArgs, kept_fusion, load_data

    data = Path(args.data)
    tag = args.tag or Path(args.model).name
    enc = Encoder(args.model, progress=False, dtype=args.dtype)
    if args.index:
        index_dir, index_info = Path(args.index), {}
        if not complete(index_dir, sum(1 for _ in read_corpus(data / "corpus.jsonl")), enc):
            sys.exit(f"pseudo_fusion.py: {index_dir} is not a complete index of {data} built with {args.model}")
    else:  # tuning.py's index of this corpus and model when there is one
        index_dir, index_info = corpus_index(data / "corpus.jsonl", Path(args.work), data.name,
                                             tag.replace("/", "_"), enc)

    # the real queries: every arm's top lists once, the grid's best, and any fusion's score on them
    _, queries, qrels = load_beir(data, args.split)
    qids = sorted(q for q in qrels if q in queries)
    real_arms = Arms(Searcher(index_dir, encoder=enc), qids, [queries[q] for q in qids], qrels)
    real, table = choose_fusion({a: real_arms.top[a] for a in ARMS},
                                lambda D, I: real_arms.evaluate(D, I)["ndcg@10"], k=real_arms.k, step=0.1)
    on_real = {(tuple(r["arms"]), tuple(round(w, 4) for w in r["weights"])): r["score"] for r in table}

    def scored(f: dict) -> dict:  # a stored fusion (any weights, not only the grid's) on the real queries
        used = [(a, w) for a, w in zip(f["arms"], f["weights"]) if w > 0]
        m = real_arms.fused(tuple(a for a, _ in used), "convex", [w for _, w in used])
        return {"arms": f["arms"], "weights": f["weights"], "chosen_on": f.get("chosen_on"),
                "on_real": round(m["ndcg@10"], 4)}

    card = read_card(args.model) if Path(args.model).is_dir() else None
    # as a plain search fuses: the model's card or registry entry, else the built-in fusion
    stored = scored(stored_fusion({"encoder": {"model_id": args.model}}))
    # what `--fusion-from base` keeps over the base (past fusions its pseudo-query devs chose, down the chain)
    base = scored(kept_fusion(base_spec(args.model, card))[1]) if card else None

    sink = open(args.out, "a") if args.out else None
    for method in args.pairs:
        t = time.perf_counter()
        try:
            _, dev, distractors = load_data(DataArgs(from_corpus=str(data / "corpus.jsonl"), pair_method=method,
                                                     mine=False, max_dev=args.max_dev,
                                                     dev_distractors=args.distractors))
        except TrainingDataError as e:  # e.g. title pairs from a corpus without titles (NFCorpus's release)
            print(f"pseudo_fusion.py: {data.name}, {method} pairs skipped: {e}", file=sys.stderr)
            continue
        ev = DevEvaluator(dev, extra=distractors)
        scores = ev(enc)
        pseudo = ev.last_fusion
        key = (tuple(pseudo["arms"]), tuple(round(w, 4) for w in pseudo["weights"]))
        pseudo_real = on_real[key]
        line = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} vm", "model": tag,
                "dataset": data.name, "dtype": args.dtype, "pairs": method, "dev_pairs": len(dev.groups),
                "pool": len(ev.pool), "split": args.split, "queries": len(qids),
                "pseudo": {"arms": pseudo["arms"], "weights": pseudo["weights"], "dev": pseudo["score"],
                           "on_real": round(pseudo_real, 4)},
                "real": {"arms": real["arms"], "weights": real["weights"], "on_real": round(real["score"], 4)},
                "regret": round(real["score"] - pseudo_real, 4), "stored": stored, "base": base,
                "arms_on_real": {a: round(on_real[((a,), (1.0,))], 4) for a in ARMS},
                "arms_on_pseudo": {a: round(scores[a], 4) for a in ARMS},
                "index": index_info, "seconds": round(time.perf_counter() - t, 1)}
        if sink:  # the file first: a closed stdout (a pipe into head) must not lose the saved line
            sink.write(json.dumps(line) + "\n")
            sink.flush()
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
