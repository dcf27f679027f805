"""A 1,000,000-document synthetic hylex index, built and searched in one process, with its peak RSS.

The issue-4 synthetic law (:mod:`synthetic`: ~120 Zipf-drawn terms per document over 32,000 terms, 384-d
dense vectors) at 1,000,000 documents, committed as ``--segment`` sized segments (the way ``hylex index``
builds), then reopened (memory-mapped) and searched with 1,000 queries: sparse exact, sparse approximate, dense
(FAISS Flat) and hybrid. Prints one JSON line per phase with the process's peak RSS so far (``ru_maxrss``) and
the current RSS, then a summary line.

    python benchmarks/million.py --docs 1000000 --out benchmarks/results/million.jsonl
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic  # noqa: E402
from speed import dir_bytes, rss_mb  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--segment", type=int, default=250_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--work", default="benchmarks/.work/million")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from hylex.corpus import Document
    from hylex.indexing import Index
    from hylex.retrieval import Searcher

    sink = open(args.out, "a") if args.out else None

    def emit(row: dict) -> None:
        row = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "docs": args.docs, **row,
               "peak_rss_mb": round(peak_mb(), 1), "rss_mb": round(rss_mb(), 1)}
        print(json.dumps(row), flush=True)
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()

    path = Path(args.work)
    shutil.rmtree(path, ignore_errors=True)
    V, dim = 32_000, 384
    desc = {"model_id": "synthetic", "fingerprint": "synthetic", "dim": dim, "vocab_size": V, "settings": {}}
    t0 = time.perf_counter()
    with Index.create(path, desc, "Flat", sparse={"max_weight": None}) as ix:
        for s, lo in enumerate(range(0, args.docs, args.segment)):
            n = min(args.segment, args.docs - lo)
            X = synthetic.sparse_rows(n, 120, V, seed=1000 + s)
            E = synthetic.dense_rows(n, 1, dim, seed=2000 + s)[0]
            ix.add([Document(id=str(lo + i), text=f"doc {lo + i}") for i in range(n)], E, X)
            del X, E
            emit({"phase": "segment committed", "segment": s, "docs_so_far": lo + n,
                  "seconds": round(time.perf_counter() - t0, 1)})
    build_s = time.perf_counter() - t0
    emit({"phase": "built", "build_s": round(build_s, 1), "index_bytes": dir_bytes(path),
          "sparse_bytes": dir_bytes(path / "segments", "impact_")})

    Q = synthetic.sparse_rows(args.queries, 30, V, seed=1)
    Qd = synthetic.dense_rows(args.queries, args.queries, dim, seed=2)[1]
    s = Searcher(path)
    for label, fn in (("sparse exact", lambda: s.search_sparse(Q, 10)),
                      ("sparse approx query_cut=10 candidates=100",
                       lambda: s.search_sparse(Q, 10, query_cut=10, candidates=100)),
                      ("dense Flat", lambda: s.search_dense(Qd, 10)),
                      ("hybrid rrf depth 100 (ids)",
                       lambda: s.search(None, k=10, mode="hybrid", fusion="rrf", depth=100, dense=Qd, sparse=Q))):
        fn()
        t = time.perf_counter()
        fn()
        secs = time.perf_counter() - t
        emit({"phase": "search", "search": label, "qps": round(args.queries / secs, 1)})
    emit({"phase": "done", "limit_mb": 8192, "within_limit": peak_mb() <= 8192})


if __name__ == "__main__":
    main()
