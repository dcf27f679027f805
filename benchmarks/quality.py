"""Retrieval quality on BEIR-layout datasets: hylex dense / sparse / hybrid against BM25 (bm25s), one run.

For each dataset it builds (or reuses) a hylex index of the corpus with the default encoder settings (encodings
come from the encoding cache when present), encodes the test queries once, and prints one JSON line per system:
nDCG@10 and Recall@100 computed by ir_measures on the test qrels. BM25 is bm25s with k1=0.9, b=0.4, English
stemming (PyStemmer) and stopwords, run in the same process.

    python benchmarks/quality.py --datasets ../shared/data/beir/scifact ../shared/data/beir/vaswani
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hylex.corpus import load_beir, read_corpus
from hylex.retrieval.evaluation import evaluate_run, run_from_results


def bm25_run(corpus_path: Path, queries: dict[str, str], k: int = 100):
    import bm25s
    import Stemmer

    docs = list(read_corpus(corpus_path))
    stemmer = Stemmer.Stemmer("english")
    t = time.perf_counter()
    tokens = bm25s.tokenize([d.full_text for d in docs], stopwords="en", stemmer=stemmer, show_progress=False)
    model = bm25s.BM25(k1=0.9, b=0.4)
    model.index(tokens, show_progress=False)
    build = time.perf_counter() - t
    qids = sorted(queries)
    qt = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    res, scores = model.retrieve(qt, k=min(k, len(docs)), show_progress=False, n_threads=1)
    ids = np.array([[docs[j].id for j in row] for row in res], dtype=object)
    return qids, ids, scores, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["../shared/data/beir/scifact", "../shared/data/beir/vaswani"])
    ap.add_argument("--work", default="benchmarks/.work", help="where indexes are built (git-ignored)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()

    from hylex.engine import Encoder
    from hylex.indexing import build_index
    from hylex.indexing.index import MANIFEST
    from hylex.retrieval import Searcher

    enc = Encoder(args.model, progress=False)
    for ds in args.datasets:
        name = Path(ds).name
        corpus, queries, qrels = load_beir(ds, args.split)
        qids, ids, scores, build_s = bm25_run(corpus, queries)
        m = evaluate_run(run_from_results(qids, ids, scores), qrels)
        print(json.dumps({"dataset": name, "system": "bm25s", **{k: round(v, 4) for k, v in m.items()},
                          "index_seconds": round(build_s, 2)}), flush=True)

        index_dir = Path(args.work) / f"{name}-{enc.resolved.model_id}"
        if not (index_dir / MANIFEST).exists():
            rep = build_index(corpus, index_dir, enc, progress=False)
            print(json.dumps({"dataset": name, "event": "indexed", "documents": rep.documents,
                              "seconds": round(rep.seconds, 1), "encode_seconds": round(rep.encode_seconds, 1),
                              "tokens": rep.tokens, "cache_hits": rep.cache_hits}), flush=True)
        s = Searcher(index_dir, encoder=enc)
        q = enc.encode_queries([queries[i] for i in qids])
        settings = [("dense", "dense", {}), ("sparse", "sparse", {}),
                    ("hybrid-convex-a0.5", "hybrid", {"fusion": "convex", "alpha": 0.5}),
                    ("hybrid-rrf", "hybrid", {"fusion": "rrf"})]
        for label, mode, kw in settings:
            res = s.search(None, k=100, mode=mode, dense=q.dense, sparse=q.sparse, **kw)
            m = evaluate_run(run_from_results(qids, res.ids, res.scores), qrels)
            print(json.dumps({"dataset": name, "system": f"hylex-{enc.resolved.model_id}-{label}",
                              **{k: round(v, 4) for k, v in m.items()}}), flush=True)


if __name__ == "__main__":
    main()
