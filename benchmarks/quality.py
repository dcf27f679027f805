"""Retrieval quality on BEIR-layout datasets: hylex's arms and fusions against BM25 (bm25s), in one run.

For each model and dataset it builds (or reuses) a hylex index of the corpus with the given encoder settings
(encodings come from the encoding cache when present), encodes the queries once, retrieves the top DEFAULT_DEPTH (1000)
of each arm (LLM dense, LLM sparse, hylex BM25), fuses them into a top 100 and evaluates, with ir_measures on the test qrels:

- ``bm25s``: the peer, bm25s with k1=0.9, b=0.4, English stemming (PyStemmer) and stopwords, same process;
- each arm alone, and the fusions at their defaults (convex alpha DEFAULT_ALPHA = ``hybrid``, and 0.5 as in
  PromptReps; RRF k=60);
- the fusions with weights chosen on SciFact's **train** qrels only (grid search: convex weights on a 0.1
  simplex grid, RRF k in {10, 30, 60, 100}), then applied unchanged to every test set.

Prints one JSON line per (model, dataset, system). Test qrels are never used for a choice.

    python benchmarks/quality.py --datasets ../shared/data/beir/scifact ../shared/data/beir/vaswani
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from hylex.corpus import load_beir, read_corpus, read_qrels, read_queries
from hylex.retrieval.evaluation import evaluate_run, run_from_results
from hylex.retrieval.searcher import DEFAULT_ALPHA, DEFAULT_DEPTH

ARMS = ("dense", "sparse", "bm25")
COMBOS = {"dense+sparse": ("dense", "sparse"), "dense+bm25": ("dense", "bm25"), "sparse+bm25": ("sparse", "bm25"),
          "dense+sparse+bm25": ("dense", "sparse", "bm25")}


def complete(index_dir: Path, n_docs: int, encoder=None) -> bool:
    """An index built to the end (a killed build leaves a manifest with fewer documents), in this hylex's format,
    with this encoder's weights (fingerprint) and settings (a changed default must not reuse an index of the old
    one; the same weights under another name, a tuned folder and the shipped copy of it, may)."""
    from hylex.indexing import FORMAT_VERSION

    mf = Path(index_dir) / "manifest.json"
    if not mf.exists():
        return False
    m = json.loads(mf.read_text())
    if m.get("n_docs") != n_docs or m.get("format_version") != FORMAT_VERSION:
        return False
    if encoder is not None:
        from hylex.engine.settings import same_encoding

        return same_encoding(m["encoder"], encoder.describe())
    return True


def bm25s_run(corpus_path: Path, queries: dict[str, str], qids: list[str], k: int = 100):
    import bm25s
    import Stemmer

    docs = list(read_corpus(corpus_path))
    stemmer = Stemmer.Stemmer("english")
    t = time.perf_counter()
    tokens = bm25s.tokenize([d.full_text for d in docs], stopwords="en", stemmer=stemmer, show_progress=False)
    model = bm25s.BM25(k1=0.9, b=0.4)
    model.index(tokens, show_progress=False)
    build = time.perf_counter() - t
    qt = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    res, scores = model.retrieve(qt, k=min(k, len(docs)), show_progress=False, n_threads=1)
    ids = np.array([[docs[j].id for j in row] for row in res], dtype=object)
    return ids, scores, build


class Arms:
    """Top-100 (D, I) of each arm for one query set, and evaluation of any fusion of them."""

    def __init__(self, searcher, qids, texts, qrels, depth=DEFAULT_DEPTH, k=100):
        from hylex.retrieval.searcher import fuse_arms

        self.searcher, self.qids, self.qrels, self.depth, self.k = searcher, qids, qrels, depth, k
        self._fuse = fuse_arms
        t = time.perf_counter()
        q_dense, q_sparse = searcher.encoder.encode_queries(texts)
        self.encode_seconds = time.perf_counter() - t
        self.top = {"dense": searcher.search_dense(q_dense, depth), "sparse": searcher.search_sparse(q_sparse, depth),
                    "bm25": searcher.search_bm25(texts, depth)}

    def run(self, D, I) -> dict[str, dict[str, float]]:
        """The run (query id -> {doc id: score}) of the top ``k`` of ``(D, I)``, one row per query."""
        D, I = D[:, :self.k], I[:, :self.k]
        docs = self.searcher.index.documents(I.ravel().tolist())
        ids = np.array([None if d is None else d["id"] for d in docs], dtype=object).reshape(I.shape)
        return run_from_results(self.qids, ids, D)

    def evaluate(self, D, I) -> dict:
        return evaluate_run(self.run(D, I), self.qrels)

    def fused_top(self, arms, method, weights=None, rrf_k=60.0):
        """``(D, I)`` of the top ``k`` of ``arms`` fused by ``method`` (equal weights unless given)."""
        if weights is None:
            weights = [1.0 / len(arms)] * len(arms) if method == "convex" else [1.0] * len(arms)
        return self._fuse([self.top[a] for a in arms], weights, method, self.k, rrf_k)

    def fused(self, arms, method, weights=None, rrf_k=60.0) -> dict:
        return self.evaluate(*self.fused_top(arms, method, weights, rrf_k))


def emitter(out: str | None, **fixed):
    """A function that prints one JSON line per record (date, machine, ``fixed`` fields, then the record's) and,
    with ``out``, appends it to that file too."""
    sink = open(out, "a") if out else None

    def emit(d: dict) -> None:
        line = json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.node()}",
                           **fixed, **d})
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()

    return emit


def simplex(n: int, step: float = 0.1):
    ticks = int(round(1 / step))
    for c in itertools.product(range(ticks + 1), repeat=n):
        if sum(c) == ticks and all(c):
            yield [x / ticks for x in c]


def tune(arms: Arms) -> dict:
    """Best settings on a training query set (nDCG@10), per combination and method."""
    best = {}
    for name, combo in COMBOS.items():
        scored = [(arms.fused(combo, "convex", w)["ndcg@10"], w) for w in simplex(len(combo))]
        s, w = max(scored, key=lambda x: x[0])
        best[(name, "convex")] = {"weights": w, "train_ndcg@10": round(s, 4)}
        scored = [(arms.fused(combo, "rrf", rrf_k=rk)["ndcg@10"], rk) for rk in (10.0, 30.0, 60.0, 100.0)]
        s, rk = max(scored, key=lambda x: x[0])
        best[(name, "rrf")] = {"rrf_k": rk, "train_ndcg@10": round(s, 4)}
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["../shared/data/beir/scifact", "../shared/data/beir/vaswani"])
    ap.add_argument("--train", default="../shared/data/beir/scifact", help="dataset whose train qrels pick weights")
    ap.add_argument("--work", default="benchmarks/.work", help="where indexes are built (git-ignored)")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()

    from hylex.engine import Encoder
    from hylex.indexing import build_index
    from hylex.retrieval import Searcher

    emit = emitter(args.out)

    peers_done = set()
    for model in args.models:
        enc = Encoder(model, progress=False, max_length=args.max_length)
        searchers = {}

        def searcher_for(ds: str):
            name = Path(ds).name
            if name not in searchers:
                corpus = Path(ds) / "corpus.jsonl"
                index_dir = Path(args.work) / f"{name}-{enc.resolved.model_id}-{args.max_length}"
                if not complete(index_dir, sum(1 for _ in read_corpus(corpus)), enc):
                    shutil.rmtree(index_dir, ignore_errors=True)  # an interrupted build leaves a partial index
                    rep = build_index(corpus, index_dir, enc, progress=False)
                    emit({"model": model, "dataset": name, "event": "indexed", "documents": rep.documents,
                          "seconds": round(rep.seconds, 1), "encode_seconds": round(rep.encode_seconds, 1),
                          "tokens": rep.tokens, "cache_hits": rep.cache_hits, "settings": enc.config.to_dict()})
                searchers[name] = Searcher(index_dir, encoder=enc)
            return searchers[name]

        # weights chosen on the training split only
        train_q = read_queries(Path(args.train) / "queries.jsonl")
        train_qrels = read_qrels(Path(args.train) / "qrels" / "train.tsv")
        tq = sorted(q for q in train_qrels if q in train_q)
        best = tune(Arms(searcher_for(args.train), tq, [train_q[q] for q in tq], train_qrels))
        for (name, method), v in best.items():
            emit({"model": model, "dataset": Path(args.train).name + "-train", "system": f"{name} {method}", **v})

        for ds in args.datasets:
            name = Path(ds).name
            corpus, queries, qrels = load_beir(ds, "test")
            qids = sorted(queries)
            if name not in peers_done:
                ids, scores, build_s = bm25s_run(corpus, queries, qids)
                m = evaluate_run(run_from_results(qids, ids, scores), qrels)
                emit({"dataset": name, "system": "bm25s", **{k: round(v, 4) for k, v in m.items()},
                      "index_seconds": round(build_s, 2)})
                peers_done.add(name)
            arms = Arms(searcher_for(ds), qids, [queries[q] for q in qids], qrels)
            rows = [(a, arms.evaluate(*arms.top[a])) for a in ARMS]
            rows.append((f"dense+sparse convex a={DEFAULT_ALPHA} depth 1000 (default hybrid)",
                         arms.fused(("dense", "sparse"), "convex", [DEFAULT_ALPHA, 1 - DEFAULT_ALPHA])))
            rows.append(("dense+sparse convex a=0.5 (PromptReps)", arms.fused(("dense", "sparse"), "convex")))
            rows.append(("dense+sparse rrf k=60", arms.fused(("dense", "sparse"), "rrf")))
            rows.append(("dense+sparse+bm25 rrf k=60", arms.fused(("dense", "sparse", "bm25"), "rrf")))
            for (combo, method), v in best.items():
                label = f"{combo} {method} tuned ({'w=' + str(v['weights']) if 'weights' in v else 'k=' + str(v['rrf_k'])})"
                rows.append((label, arms.fused(COMBOS[combo], method, v.get("weights"), v.get("rrf_k", 60.0))))
            for label, m in rows:
                emit({"model": model, "dataset": name, "system": f"hylex {label}",
                      **{k: round(v, 4) for k, v in m.items()}, "query_encode_seconds": round(arms.encode_seconds, 2)})


if __name__ == "__main__":
    main()
