"""The cost of deletes and filters: query time with 0%, 10% and 50% of documents deleted, and with a 1% and a
50% selective metadata filter, against the plain search of the same index, in one process.

Index: the issue-4 synthetic law (:mod:`synthetic`: 200,000 documents, ~120 sparse terms each over 32,000, 384-d
dense vectors, FAISS Flat) in two segments, each document with metadata ``{"bucket": i % 100}``; automatic
merges off. Searches: sparse exact, dense, and hybrid RRF (top-100 of each arm fused to 10), pre-encoded queries,
median of ``--reps`` timed runs after a warm-up. Also timed: the delete commits, the first filtered search (it
reads the field's column from the document store) and the merge that drops the deleted documents.

    python benchmarks/living.py --docs 200000 --queries 300 --out benchmarks/results/living.jsonl
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", default="benchmarks/.work/living")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import numba

    from hylex.corpus import Document
    from hylex.indexing import Index
    from hylex.retrieval import Searcher

    sink = open(args.out, "a") if args.out else None

    def emit(row: dict) -> None:
        row = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "docs": args.docs,
               "threads": numba.get_num_threads(), **row}
        print(json.dumps(row), flush=True)
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()

    path = Path(args.work)
    shutil.rmtree(path, ignore_errors=True)
    V, dim, n = 32_000, 384, args.docs
    desc = {"model_id": "synthetic", "fingerprint": "synthetic", "dim": dim, "vocab_size": V, "settings": {}}
    ix = Index.create(path, desc, "Flat", sparse={"max_weight": None}, merge={"auto": False})
    half = n // 2
    for s, lo in enumerate((0, half)):
        m = half if s == 0 else n - half
        X = synthetic.sparse_rows(m, 120, V, seed=1000 + s)
        E = synthetic.dense_rows(m, 1, dim, seed=2000 + s)[0]
        ix.add([Document(id=str(lo + i), text=f"doc {lo + i}", metadata={"bucket": (lo + i) % 100})
                for i in range(m)], E, X)
    Q = synthetic.sparse_rows(args.queries, 30, V, seed=1)
    Qd = synthetic.dense_rows(args.queries, args.queries, dim, seed=2)[1]
    s = Searcher(ix)
    searches = {
        "sparse exact": lambda f: s.search(None, k=10, mode="sparse", sparse=Q, filter=f),
        "dense Flat": lambda f: s.search(None, k=10, mode="dense", dense=Qd, filter=f),
        "hybrid rrf depth 100": lambda f: s.search(None, k=10, mode="hybrid", fusion="rrf", depth=100, dense=Qd,
                                                   sparse=Q, filter=f),
    }
    plain: dict[str, float] = {}

    def measure(setting: str, flt=None) -> None:
        for name, fn in searches.items():
            fn(flt)  # warm-up (and the column read, for a filter)
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                fn(flt)
                times.append(time.perf_counter() - t)
            qps = args.queries / statistics.median(times)
            if setting == "plain":
                plain[name] = qps
            emit({"setting": setting, "search": name, "qps": round(qps, 1),
                  "time_vs_plain": round(plain[name] / qps, 3), "live": ix.n_docs})

    measure("plain")
    for label, flt in (("filter 1%", {"bucket": {"$lt": 1}}), ("filter 50%", {"bucket": {"$lt": 50}})):
        ix.columns_cache.clear()
        t = time.perf_counter()
        s.search(None, k=10, mode="sparse", sparse=Q[:1], filter=flt)
        emit({"setting": label, "first_filtered_search_s": round(time.perf_counter() - t, 3)})
        measure(label, flt)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    done = 0
    for frac in (0.1, 0.5):
        ids = [str(i) for i in order[done:int(frac * n)]]
        t = time.perf_counter()
        ix.delete(ids)
        emit({"setting": f"deleted {frac:.0%}", "delete_commit_s": round(time.perf_counter() - t, 2),
              "deleted_now": len(ids)})
        done = int(frac * n)
        measure(f"deleted {frac:.0%}")
    t = time.perf_counter()
    ix.merge()
    emit({"setting": "merged after 50% deleted", "merge_s": round(time.perf_counter() - t, 1)})
    measure("merged after 50% deleted")
    ix.close()


if __name__ == "__main__":
    main()
