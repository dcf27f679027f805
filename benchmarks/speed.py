"""Search speed: hylex against Seismic, Qdrant Edge, bm25s, scipy.sparse and raw FAISS, in ONE process and run.

Workloads:

* ``synthetic``: 200,000 docs x ~120 non-zeros over a 32,000-term Zipf-like vocabulary, 1,000 queries x ~30
  non-zeros, 384-d clustered dense vectors (:mod:`synthetic`, seeded);
* ``scifact`` / ``vaswani``: the default model's (smollm2-135m, default settings) sparse and dense encodings of
  the corpus and of the test queries, read through the encoding cache (encoded once if missing), plus the texts
  for the BM25 systems.

For each workload every system is built once (build seconds, index bytes on disk, RSS growth), then each query
setting is timed over the whole query batch ``--reps`` times at each thread count (median queries/s). Recall@10
is measured against the exact top-10: float brute force (scipy) for sparse systems, numpy inner products for
dense ones, and the exact RRF fusion of exact arms for hybrid ones. One JSON line per (workload, system,
setting, threads) on stdout; ``--png`` draws recall@10 against queries/s (1 thread) for the sparse systems.

Systems and the call timed:

* ``hylex-sparse`` exact / approximate: ``Searcher.search_sparse(Q, 10, query_cut=, heap_factor=,
  candidates=)`` over a hylex index (16-bit impacts, per-term scales; a second index with static pruning
  ``keep_top``); bytes = the sparse postings' files (impact_*.npy, forward index included);
* ``seismic`` (pyseismic-lsr ``batch_search``), ``qdrant-sparse`` (exact), ``scipy`` (exact ``Q @ X.T``);
* ``hylex-dense`` ``Searcher.search_dense`` vs ``faiss`` (the raw ``index.search`` on the same FAISS index) and
  ``qdrant-dense``;
* ``hylex-hybrid`` ``Searcher.search(mode="hybrid", fusion="rrf", depth=100)`` with ids (LMDB lookups included),
  dense arm FAISS Flat (exact) or HNSW32 (efSearch 64), vs ``qdrant-hybrid`` (two prefetches of 100, sparse
  exact and dense HNSW m16, fused by RRF);
* real workloads only: ``hylex-bm25`` ``Searcher.search_bm25`` vs ``bm25s`` (numba backend), from query texts.

    python benchmarks/speed.py --workloads synthetic scifact vaswani --reps 3 --threads 1 2 \\
        --out benchmarks/results/speed.jsonl --png benchmarks/speed.png
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
import synthetic  # noqa: E402

K = 10


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def dir_bytes(path: Path, prefix: str = "") -> int:
    return sum(f.lstat().st_blocks * 512 for f in Path(path).rglob(prefix + "*") if f.is_file())


def recall(I: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |returned ∩ true top-k| / |true top-k| (queries without true hits skipped)."""
    vals = []
    for a, b in zip(I, truth):
        t = set(b[b >= 0].tolist())
        if t:
            vals.append(len(set(a[a >= 0].tolist()) & t) / len(t))
    return float(np.mean(vals)) if vals else float("nan")


def set_threads(n: int) -> None:
    import faiss
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    faiss.omp_set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")  # NumPy's BLAS (hylex's Flat batches) too


def timed(fn, reps: int) -> tuple[float, object]:
    fn()  # warm-up (numba compilation, page cache)
    times, out = [], None
    for _ in range(reps):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


# -------------------------------------------------------------------------------------------------------------
# workloads
# -------------------------------------------------------------------------------------------------------------


def load_workload(name: str, args) -> dict:
    if name == "synthetic":
        w = synthetic.workload(n_docs=args.docs, n_queries=args.queries)
        return {**w, "doc_texts": None, "query_texts": None}
    from hylex.corpus import read_corpus, read_qrels, read_queries
    from hylex.engine import Encoder

    d = Path(args.beir) / name
    docs = list(read_corpus(d / "corpus.jsonl"))
    queries = read_queries(d / "queries.jsonl")
    qrels = read_qrels(d / "qrels" / "test.tsv")
    qids = [q for q in queries if q in qrels]
    enc = Encoder(progress=False)
    de = enc.encode_documents([x.full_text for x in docs])
    qe = enc.encode_queries([queries[q] for q in qids])
    return {"docs_sparse": sp.csr_matrix(de.sparse, dtype=np.float32), "docs_dense": np.asarray(de.dense, np.float32),
            "queries_sparse": sp.csr_matrix(qe.sparse, dtype=np.float32),
            "queries_dense": np.asarray(qe.dense, np.float32), "doc_texts": [x.full_text for x in docs],
            "query_texts": [queries[q] for q in qids], "encoder": enc.describe()}


def build_hylex(path: Path, w: dict, dense_factory: str, sparse_cfg: dict) -> tuple[object, float]:
    """A hylex index of the workload's vectors (one segment), opened for search; returns (Searcher, seconds)."""
    from hylex.corpus import Document
    from hylex.indexing import Index
    from hylex.retrieval import Searcher

    shutil.rmtree(path, ignore_errors=True)
    X, E = w["docs_sparse"], w["docs_dense"]
    n = X.shape[0]
    texts = w["doc_texts"] or [f"doc {i}" for i in range(n)]
    desc = w.get("encoder") or {"model_id": "synthetic", "fingerprint": "synthetic", "dim": E.shape[1],
                                "vocab_size": X.shape[1], "settings": {}}
    t = time.perf_counter()
    ix = Index.create(path, desc, dense_factory, sparse=sparse_cfg)
    ix.add([Document(id=str(i), text=texts[i]) for i in range(n)], E, X)
    secs = time.perf_counter() - t
    ix.close()
    return Searcher(path), secs


# -------------------------------------------------------------------------------------------------------------
# the run
# -------------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", default=["synthetic", "scifact", "vaswani"])
    ap.add_argument("--beir", default="../shared/data/beir")
    ap.add_argument("--docs", type=int, default=200_000, help="synthetic documents")
    ap.add_argument("--queries", type=int, default=1000, help="synthetic queries")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", default="benchmarks/.work/speed")
    ap.add_argument("--out", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("--skip", nargs="*", default=[], help="systems to leave out (e.g. seismic)")
    args = ap.parse_args()

    peers.set_thread_env(max(args.threads))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sink = open(args.out, "a") if args.out else None
    stamp = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cpus"}
    rows = []

    def emit(row: dict) -> None:
        row = {**stamp, **row}
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()

    for wname in args.workloads:
        w = load_workload(wname, args)
        X, Q, E, Qd = w["docs_sparse"], w["queries_sparse"], w["docs_dense"], w["queries_dense"]
        base = {"workload": wname, "docs": X.shape[0], "queries": Q.shape[0], "vocab": X.shape[1],
                "doc_nnz": round(X.nnz / X.shape[0], 1), "query_nnz": round(Q.nnz / Q.shape[0], 1),
                "dim": E.shape[1]}
        print(json.dumps({"loaded": base}), file=sys.stderr, flush=True)
        set_threads(1)

        # exact references
        ref = peers.ScipySparse()
        ref.build(X)
        truth_sparse = ref.search(Q, K)[1]
        truth_dense = np.argsort(-(Qd @ E.T), axis=1, kind="stable")[:, :K]  # exact inner products

        def run(system: str, setting: dict, search, truth, build_s=None, nbytes=None, rss=None, threads=None,
                adapters=()):
            """Time ``search`` at each thread count (``adapters``: peers whose ``threads`` follow it)."""
            for n in threads or args.threads:
                set_threads(n)
                for obj in adapters:
                    obj.threads = n
                secs, (D, I) = timed(search, args.reps)
                emit({**base, "system": system, "setting": setting, "threads": n,
                      "qps": round(Q.shape[0] / secs, 1), "ms_per_query": round(1000 * secs / Q.shape[0], 4),
                      "recall@10": round(recall(I, truth), 4), "build_s": build_s, "index_bytes": nbytes,
                      "rss_growth_mb": rss})
            set_threads(1)

        # --- scipy (exact sparse)
        run("scipy", {"exact": True}, lambda: ref.search(Q, K), truth_sparse, 0.0, ref.index_bytes(), None,
            threads=[1])

        # --- hylex: one index without pruning, one with static pruning
        hy = {}
        for label, cfg in (("full", {"max_weight": None}), ("keep_top=2000", {"max_weight": None, "keep_top": 2000})):
            r0 = rss_mb()
            s, secs = build_hylex(work / f"{wname}-hylex-{label.replace('=', '')}", w, "Flat", cfg)
            s.search_sparse(Q[:2], K)  # map the files
            hy[label] = (s, secs, dir_bytes(s.index.path / "segments", "impact_"), round(rss_mb() - r0, 1))
        s, secs, nb, rss = hy["full"]
        run("hylex-sparse", {"exact": True, "index": "full"}, lambda: s.search_sparse(Q, K), truth_sparse, secs, nb,
            rss)
        for label, (s2, secs2, nb2, rss2) in hy.items():
            for qc, cand in ((6, 30), (8, 50), (10, 50), (10, 100), (12, 100), (16, 100)):
                run("hylex-sparse", {"exact": False, "index": label, "query_cut": qc, "candidates": cand},
                    lambda s2=s2, qc=qc, cand=cand: s2.search_sparse(Q, K, query_cut=qc, candidates=cand),
                    truth_sparse, secs2, nb2, rss2)

        # --- Seismic
        if "seismic" not in args.skip:
            r0 = rss_mb()
            se = peers.Seismic(workdir=work / f"{wname}-seismic", threads=1)
            t = time.perf_counter()
            se.build(X)
            secs = time.perf_counter() - t
            rss = round(rss_mb() - r0, 1)
            for qc, hf in ((5, 0.9), (10, 0.8), (10, 0.9), (15, 0.9), (20, 1.0)):
                se.query_kw.update(query_cut=qc, heap_factor=hf)
                run("seismic", {"exact": False, "query_cut": qc, "heap_factor": hf}, lambda: se.search(Q, K),
                    truth_sparse, round(secs, 1), se.index_bytes(), rss, adapters=[se])
            del se
            gc.collect()

        # --- Qdrant Edge sparse (exact)
        if "qdrant" not in args.skip:
            r0 = rss_mb()
            qs = peers.QdrantSparse(workdir=work / f"{wname}-qdrant-sparse", threads=max(args.threads))
            shutil.rmtree(qs.workdir, ignore_errors=True)
            t = time.perf_counter()
            qs.build(X)
            secs = time.perf_counter() - t
            run("qdrant-sparse", {"exact": True}, lambda: qs.search(Q, K), truth_sparse, round(secs, 1),
                qs.index_bytes(), round(rss_mb() - r0, 1))
            qs.close()

        # --- dense: hylex vs raw FAISS on the same index, and Qdrant
        s, secs, _, _ = hy["full"]
        raw = s.index.segments[0].dense.index
        dense_bytes = dir_bytes(s.index.path / "segments", "dense")
        run("faiss", {"factory": "Flat"}, lambda: raw.search(Qd, K), truth_dense, None, dense_bytes)
        run("hylex-dense", {"factory": "Flat"}, lambda: s.search_dense(Qd, K), truth_dense, None, dense_bytes)
        for factory, ef in (("HNSW32", 64),):
            fd = peers.FaissDense(factory, workdir=work / f"{wname}-faiss-{factory}", efSearch=ef)
            t = time.perf_counter()
            fd.build(E)
            fsecs = time.perf_counter() - t
            run("faiss", {"factory": factory, "efSearch": ef}, lambda: fd.search(Qd, K), truth_dense,
                round(fsecs, 1), fd.index_bytes(), adapters=[fd])
        if "qdrant" not in args.skip:
            qdd = peers.QdrantDense(workdir=work / f"{wname}-qdrant-dense", threads=max(args.threads))
            shutil.rmtree(qdd.workdir, ignore_errors=True)
            t = time.perf_counter()
            qdd.build(E)
            qsecs = time.perf_counter() - t
            run("qdrant-dense", {"hnsw": "m16 ef_construct100"}, lambda: qdd.search(Qd, K), truth_dense,
                round(qsecs, 1), qdd.index_bytes())
            qdd.close()

        # --- hybrid: sparse top-100 + dense top-100, RRF (k=60) to the top 10
        from hylex.kernels import fuse

        Ds, Is = s.search_sparse(Q, 100)
        full = Qd @ E.T
        Id = np.argsort(-full, axis=1, kind="stable")[:, :100]
        Dd = np.take_along_axis(full, Id, axis=1).astype(np.float32)
        del full
        truth_hybrid = fuse(np.stack([Is, Id]), np.stack([Ds, Dd]), np.ones(2, np.float32), "rrf", K, 60.0)[1]
        run("hylex-hybrid", {"dense": "Flat", "sparse": "exact", "depth": 100, "fusion": "rrf", "ids": True},
            lambda: _rows(s.search(None, k=K, mode="hybrid", fusion="rrf", depth=100, dense=Qd, sparse=Q)),
            truth_hybrid, None, None)
        # the same hybrid with an HNSW dense arm, as Qdrant's (FAISS HNSW32, efSearch 64 set on the loaded index)
        import faiss

        sh, hsecs = build_hylex(work / f"{wname}-hylex-hnsw", w, "HNSW32", {"max_weight": None})
        faiss.ParameterSpace().set_index_parameter(sh.index.segments[0].dense.index, "efSearch", 64)
        run("hylex-hybrid", {"dense": "HNSW32 efSearch 64", "sparse": "exact", "depth": 100, "fusion": "rrf",
                             "ids": True},
            lambda: _rows(sh.search(None, k=K, mode="hybrid", fusion="rrf", depth=100, dense=Qd, sparse=Q)),
            truth_hybrid, round(hsecs, 1), dir_bytes(sh.index.path / "segments"))
        sh.index.close()
        if "qdrant" not in args.skip:
            qh = peers.QdrantHybrid(workdir=work / f"{wname}-qdrant-hybrid", threads=max(args.threads))
            shutil.rmtree(qh.workdir, ignore_errors=True)
            t = time.perf_counter()
            qh.build(X, E)
            qsecs = time.perf_counter() - t
            run("qdrant-hybrid", {"dense": "HNSW m16", "sparse": "exact", "depth": 100, "fusion": "rrf"},
                lambda: qh.search(Q, Qd, K), truth_hybrid, round(qsecs, 1), qh.index_bytes())
            qh.close()

        # --- BM25 from texts (real workloads)
        if w["query_texts"] is not None:
            texts = w["query_texts"]
            bm = peers.Bm25s()
            t = time.perf_counter()
            bm.build(w["doc_texts"])
            bsecs = time.perf_counter() - t
            truth_bm25 = bm.search(texts, K)[1]
            run("bm25s", {"backend": bm.params.get("backend")}, lambda: bm.search(texts, K), truth_bm25,
                round(bsecs, 1), bm.index_bytes(), adapters=[bm])
            run("hylex-bm25", {}, lambda: s.search_bm25(texts, K), truth_bm25, None,
                dir_bytes(s.index.path / "segments", "bm25_"))
        for v in hy.values():
            v[0].index.close()
        del w
        gc.collect()

    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)
    if args.png:
        plot(rows, args.png)


def _rows(res) -> tuple[np.ndarray, np.ndarray]:
    return res.scores, res.rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wls = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(1, len(wls), figsize=(5.5 * len(wls), 4.2), squeeze=False)
    for ax, wl in zip(axes[0], wls):
        for system, marker in (("hylex-sparse", "o"), ("seismic", "s"), ("qdrant-sparse", "^"), ("scipy", "x")):
            pts = [(r["qps"], r["recall@10"]) for r in rows
                   if r["workload"] == wl and r["system"] == system and r["threads"] == 1]
            if pts:
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle="", label=system)
        ax.set_xscale("log")
        ax.set_xlabel("queries/s (1 thread, log)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(wl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
