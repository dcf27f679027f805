"""Where the NumPy twins of hylex's search kernels stop paying: per kernel and workload size, the time of one call
on the NumPy twin against the warm (compiled, already run) numba kernel, in one process.

Workloads are shaped like the real ones (seeded): sparse documents of ~60 distinct terms over a 49,152-term
Zipf-like vocabulary (16-bit impacts, blocks of 64, forward index) and queries of ~20 terms; BM25 documents of
~100 tokens over a 20,000-word Zipf vocabulary and queries of 5 words; fusion of three arms of ``min(n_docs,
1000)`` hits each (a hybrid search's default depth); the masked exact dense top-k (``flat_topk``, 576-d, half of
the rows allowed). Sizes: ``--docs`` x ``--queries``. For every call both paths return the same arrays (checked).
``work`` is the element count :func:`hylex.kernels.topk.use_numba` compares with ``SMALL_WORK``.

The fresh-process side (what a one-shot command saves by not importing numba) is not measured here: see
``benchmarks/service.py --one-shot`` (its last line: the in-process parts of a one-shot hybrid search).

    python benchmarks/kernel_crossover.py --out benchmarks/results/kernel_crossover.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import scipy.sparse as sp

from hylex.kernels import bm25_topk, fuse, kernel_backend
from hylex.kernels.dense import flat_topk
from hylex.kernels.topk import SMALL_WORK

VOCAB = 49152
BM25_VOCAB = 20000


def zipf_ids(rng, n, vocab, a=1.1):
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = ranks ** -a
    return rng.choice(vocab, size=n, p=p / p.sum())


def sparse_matrix(rng, rows, nnz_per_row, vocab):
    ids = zipf_ids(rng, rows * nnz_per_row, vocab).reshape(rows, nnz_per_row)
    indptr, cols = [0], []
    for r in range(rows):
        c = np.unique(ids[r])
        cols.append(c)
        indptr.append(indptr[-1] + len(c))
    cols = np.concatenate(cols)
    data = rng.uniform(0.05, 4.0, len(cols)).astype(np.float32)
    return sp.csr_matrix((data, cols, np.asarray(indptr)), shape=(rows, vocab))


def timed(fn, reps):
    fn()  # warm: compiled (numba) and cached pages
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def compare(name, n_docs, nq, work, fn, reps):
    with kernel_backend("numpy"):
        t_np, a = timed(fn, reps)
    with kernel_backend("numba"):
        t_nb, b = timed(fn, reps)
    same = all(np.array_equal(x, y) for x, y in zip(a, b))
    return {"kernel": name, "n_docs": n_docs, "nq": nq, "work": int(work), "small": work <= SMALL_WORK,
            "numpy_ms": round(t_np * 1e3, 3), "numba_ms": round(t_nb * 1e3, 3),
            "ratio": round(t_np / t_nb, 2) if t_nb else None, "same": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[300, 1000, 3000, 10000, 30000])
    ap.add_argument("--queries", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1],
                    help="numba thread counts to time the kernels at")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import numba

    from hylex.indexing.bm25 import Bm25Postings, global_stats
    from hylex.indexing.impact import ImpactIndex
    from hylex.text import term_hashes

    sink = open(args.out, "a") if args.out else None
    rng = np.random.default_rng(12)
    max_docs, max_q = max(args.docs), max(args.queries)
    X = sparse_matrix(rng, max_docs, 80, VOCAB)
    Q = sparse_matrix(rng, max_q, 25, VOCAB)
    words = [f"w{i}" for i in range(BM25_VOCAB)]
    lengths = rng.integers(40, 160, max_docs)
    ids = zipf_ids(rng, int(lengths.sum()), BM25_VOCAB)
    doc_tokens = [[words[i] for i in part] for part in np.split(ids, np.cumsum(lengths)[:-1])]
    query_tokens = [[words[i] for i in zipf_ids(rng, 5, BM25_VOCAB, a=0.9)] for _ in range(max_q)]
    vectors = rng.standard_normal((max_docs, 576)).astype(np.float32)
    qvec = rng.standard_normal((max_q, 576)).astype(np.float32)

    for n_docs in args.docs:
        ix = ImpactIndex.from_csr(X[:n_docs], bits=16, block_size=64, forward=True, max_weight=16.0)
        post = Bm25Postings.from_tokens(doc_tokens[:n_docs])
        allowed = rng.random(n_docs) < 0.5
        depth = min(n_docs, 1000)
        for nq in args.queries:
            q = Q[:nq]
            qt = query_tokens[:nq]
            hashes = term_hashes(t for x in qt for t in x)
            rows, idf, avgdl = global_stats([(0, post, None, None)], hashes)
            q_indptr = np.zeros(nq + 1, dtype=np.int64)
            np.cumsum([len(x) for x in qt], out=q_indptr[1:])
            t = q.indices[q.indices < VOCAB]
            ind = np.asarray(ix.indptr)
            sparse_work = nq * n_docs + int((ind[t + 1] - ind[t]).sum())
            lens = np.asarray(post.indptr)[rows[0][rows[0] >= 0] + 1] - np.asarray(post.indptr)[rows[0][rows[0] >= 0]]
            bm25_work = nq * n_docs + int(lens.sum())
            arms_I = np.stack([np.stack([rng.permutation(n_docs)[:depth] for _ in range(nq)]) for _ in range(3)])
            arms_D = -np.sort(-rng.random(arms_I.shape).astype(np.float32), axis=2)
            cases = [
                ("impact exact", sparse_work, lambda: ix.search(q, 10)),
                ("bm25", bm25_work, lambda: bm25_topk(q_indptr, rows[0], idf, post.indptr, post.docs, post.tf,
                                                     post.doc_len, 0.9, 0.4, avgdl, n_docs, 10)),
                ("fuse convex", arms_I.size, lambda: fuse(arms_I, arms_D, np.array([0.2, 0.2, 0.6], np.float32),
                                                          "convex", 10)),
                ("flat masked", nq * int(allowed.sum()), lambda: flat_topk(qvec[:nq], vectors[:n_docs], 10,
                                                                           allowed)),
            ]
            for threads in args.threads:
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
                for name, work, fn in cases:
                    row = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                           "threads": threads, "loadavg_1m": round(os.getloadavg()[0], 2),
                           **compare(name, n_docs, nq, work, fn, args.reps)}
                    print(json.dumps(row), flush=True)
                    if sink:
                        sink.write(json.dumps(row) + "\n")
                        sink.flush()


if __name__ == "__main__":
    main()
