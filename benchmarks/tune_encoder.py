"""Choose encoder settings (prompt, pooling, sparse options) on SciFact's train queries only.

Encoding the whole corpus once per setting costs ~20 min on this CPU, so settings are compared on a fixed
sub-corpus: every document judged for a train query plus a seeded random sample of the others (``--docs`` in
all). Train queries only; test qrels are never read. For each setting it prints one JSON line with dense,
sparse and BM25 nDCG@10 / Recall@100, and the best convex dense+sparse fusion (weights on a 0.1 grid).

    python benchmarks/tune_encoder.py --docs 1500 --out benchmarks/results/tune_encoder.jsonl
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import time
from pathlib import Path

from hylex.corpus import read_corpus, read_qrels, read_queries

SETTINGS = [
    {"prompt": "promptreps", "pooling": "last"},
    {"prompt": "promptreps", "pooling": "mean"},
    {"prompt": "promptreps", "pooling": "weighted_mean"},
    {"prompt": "prompteol", "pooling": "last"},
    {"prompt": "echo", "pooling": "mean"},
    {"prompt": "none", "pooling": "mean"},
    {"prompt": "promptreps", "pooling": "last", "expansion": 16},
    {"prompt": "promptreps", "pooling": "last", "long_docs": "chunk", "dense_agg": "mean"},
    {"prompt": "promptreps", "pooling": "last", "sparse_topk": 64},
    {"prompt": "promptreps", "pooling": "last", "sparse_topk": 256},
    {"prompt": "promptreps", "pooling": "last", "word_forms": "both"},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/beir/scifact")
    ap.add_argument("--docs", type=int, default=1500)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-length", type=int, default=None, help="encoder max_length (default: the encoder's)")
    ap.add_argument("--work", default="benchmarks/.work/tune")
    ap.add_argument("--only", type=int, nargs="*", default=None, help="indexes into SETTINGS")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from hylex.engine import Encoder
    from hylex.indexing import build_index
    from hylex.retrieval import Searcher

    from quality import Arms, complete, tune  # noqa: E402  (benchmarks/ is the script's directory)

    queries = read_queries(Path(args.data) / "queries.jsonl")
    qrels = read_qrels(Path(args.data) / "qrels" / "train.tsv")
    qids = sorted(q for q in qrels if q in queries)
    docs = list(read_corpus(Path(args.data) / "corpus.jsonl"))
    judged = {d for q in qids for d in qrels[q]}
    rest = [d for d in docs if d.id not in judged]
    random.Random(0).shuffle(rest)
    sub = [d for d in docs if d.id in judged] + rest[:max(0, args.docs - len(judged))]
    sink = open(args.out, "a") if args.out else None
    for i, setting in enumerate(SETTINGS):
        if args.only is not None and i not in args.only:
            continue
        extra = {} if args.max_length is None else {"max_length": args.max_length}
        enc = Encoder(args.model, progress=False, **extra, **setting)
        name = "-".join(f"{k}={v}" for k, v in sorted(setting.items()))
        index_dir = Path(args.work) / f"{enc.resolved.model_id}-{len(sub)}-{name}"
        t = time.perf_counter()
        if not complete(index_dir, len(sub), enc):
            shutil.rmtree(index_dir, ignore_errors=True)  # an interrupted build leaves a partial index
            build_index(sub, index_dir, enc, progress=False)
        build_s = time.perf_counter() - t
        arms = Arms(Searcher(index_dir, encoder=enc), qids, [queries[q] for q in qids], qrels)
        row = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "model": args.model,
               "setting": setting, "max_length": enc.config.max_length, "docs": len(sub), "train_queries": len(qids), "build_seconds": round(build_s, 1)}
        for a in ("dense", "sparse", "bm25"):
            m = arms.evaluate(*arms.top[a])
            row[a] = {k: round(v, 4) for k, v in m.items()}
        best = tune(arms)
        row["dense+sparse convex best"] = best[("dense+sparse", "convex")]
        row["dense+sparse+bm25 convex best"] = best[("dense+sparse+bm25", "convex")]
        print(json.dumps(row), flush=True)
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()


if __name__ == "__main__":
    main()
