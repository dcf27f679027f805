"""Thin adapters around the peer engines that ``benchmarks/speed.py`` times beside hylex.

Each has ``name``, ``__init__(**params)``, ``build(...)``, ``search(queries, k) -> (D, I)`` (D float32 (nq, k)
scores, I int64 (nq, k) document ROW numbers, rows in query order, each by score descending, padded with -inf /
-1), ``index_bytes()`` and ``params``. Inputs: sparse = CSR float32 (n, V), non-negative; dense = float32
(n, dim), L2-normalised. Disk sizes are *allocated* bytes (st_blocks * 512): Qdrant preallocates 32 MiB mmap
pages that are mostly holes. Threads: Seismic's rayon pool is sized at import (RAYON_NUM_THREADS, see
``set_thread_env``); ``faiss.omp_set_num_threads`` is per calling thread; Qdrant Edge calls hold the GIL.

    python benchmarks/peers.py --selftest [--threads N]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def set_thread_env(threads: int) -> None:
    """Size Seismic's rayon pool; works only before the first ``import seismic`` in this process."""
    if "seismic" not in sys.modules:
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))


def _alloc_bytes(path: str | Path, skip: Sequence[str] = ()) -> int:
    """Allocated bytes of a file, or of the files under a folder minus its top-level entries ``skip``."""
    path = Path(path)
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.relative_to(path).parts[0] not in skip]
    return sum(f.lstat().st_blocks * 512 for f in files if f.is_file())


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Native prints (Seismic's Rust println!) go to stderr, so speed.py's stdout holds only its JSON lines."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _empty(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)


def _csr(X: sp.spmatrix) -> sp.csr_matrix:
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    X.sum_duplicates()  # also sorts indices: Seismic needs strictly increasing components per row
    X.eliminate_zeros()  # then every stored product is > 0, and "stored" means "hit"
    return X


class ScipySparse:
    """Exact sparse inner product ``Q @ X.T`` (scipy's single-threaded SpGEMM): the sparse ground truth.

    X is kept as CSR (V, n), one row per term (an inverted index): CSR x CSR walks only the query terms'
    postings. Queries go in chunks of ``chunk``. Order: score desc, then row asc (also at the k-th place).
    No shared term = no hit. ``index_bytes``: in-memory bytes of the CSR arrays.
    """

    name = "scipy-sparse"

    def __init__(self, threads: int = 1, chunk: int = 256) -> None:
        self.chunk = chunk
        self.params = {"exact": True, "threads": 1, "chunk": chunk, "call": "batched (query chunks)"}

    def build(self, X: sp.spmatrix) -> None:
        """X: CSR float32 (n, V)."""
        self.XT = _csr(X).T.tocsr()

    def search(self, Q: sp.spmatrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Q: CSR float32 (nq, V) -> D float32 (nq, k), I int64 (nq, k)."""
        Q = _csr(Q)
        D, I = _empty(Q.shape[0], k)
        for s in range(0, Q.shape[0], self.chunk):
            S = (Q[s:s + self.chunk] @ self.XT).tocsr()
            for r in range(S.shape[0]):
                a, b = S.indptr[r], S.indptr[r + 1]
                d, j = S.data[a:b], S.indices[a:b]
                if b - a > k:  # keep all scores >= the k-th, so that ties at the cut resolve by row
                    kth = d[np.argpartition(d, b - a - k)[b - a - k]]
                    d, j = d[d >= kth], j[d >= kth]
                o = np.lexsort((j, -d))[:k]
                D[s + r, :len(o)], I[s + r, :len(o)] = d[o], j[o]
        return D, I

    def index_bytes(self) -> int:
        return int(self.XT.data.nbytes + self.XT.indices.nbytes + self.XT.indptr.nbytes)


class FaissDense:
    """Raw FAISS: ``index_factory(dim, factory, METRIC_INNER_PRODUCT)``, one batched ``index.search``.

    ``nprobe`` (IVF; FAISS default 1), ``efSearch`` (HNSW; 16), ``efConstruction`` (40) are set only when
    given; ``params`` records the values in force. IVF/PQ train on up to ``train_size`` rows sampled with
    ``seed``. Written with ``faiss.write_index`` to ``workdir/faiss.index``, whose size is ``index_bytes``.
    """

    def __init__(self, factory: str = "Flat", workdir: str | Path | None = None, threads: int = 1,
                 nprobe: int | None = None, efSearch: int | None = None, efConstruction: int | None = None,
                 train_size: int = 100_000, seed: int = 0) -> None:
        import faiss

        self.faiss, self.factory, self.threads, self.name = faiss, factory, threads, f"faiss-{factory}"
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="peer-faiss-"))
        self.nprobe, self.efSearch, self.efConstruction = nprobe, efSearch, efConstruction
        self.train_size, self.seed = train_size, seed
        self.params: dict = {"factory": factory, "exact": factory == "Flat", "threads": threads, "call": "batched"}

    def build(self, E: np.ndarray) -> None:
        """E: float32 (n, dim), L2-normalised."""
        faiss = self.faiss
        faiss.omp_set_num_threads(self.threads)
        E = np.ascontiguousarray(E, dtype=np.float32)
        index = faiss.index_factory(E.shape[1], self.factory, faiss.METRIC_INNER_PRODUCT)
        hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
        if hnsw is not None and self.efConstruction is not None:
            hnsw.efConstruction = self.efConstruction
        if not index.is_trained:
            pick = np.random.default_rng(self.seed).choice(len(E), min(len(E), self.train_size), replace=False)
            index.train(E[np.sort(pick)])
        index.add(E)
        for key, val in (("nprobe", self.nprobe), ("efSearch", self.efSearch)):
            if val is not None:
                faiss.ParameterSpace().set_index_parameter(index, key, val)
        ivf = faiss.try_extract_index_ivf(index)
        self.params.update(nprobe=ivf.nprobe if ivf is not None else None,
                           **{p: getattr(hnsw, p, None) for p in ("efSearch", "efConstruction")})
        self.index = index
        self.workdir.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(self.workdir / "faiss.index"))

    def search(self, Qd: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Qd: float32 (nq, dim) -> D float32 (nq, k), I int64 (nq, k)."""
        self.faiss.omp_set_num_threads(self.threads)  # per calling thread: set it where the search runs
        D, I = self.index.search(np.ascontiguousarray(Qd, dtype=np.float32), k)
        D[I < 0] = -np.inf  # FAISS pads inner-product results with -FLT_MAX
        return D, I.astype(np.int64)

    def index_bytes(self) -> int:
        return _alloc_bytes(self.workdir / "faiss.index")


class Seismic:
    """pyseismic-lsr; approximate (pruned postings, block summaries, query_cut / heap_factor; the forward
    index holds values in half precision, so scores differ from exact ones by ~1e-5 relative).

    Build: ``SeismicDataset(dim=V).add_documents_by_id`` from the CSR arrays (integer components, doc ids
    ``str(row)``), ``SeismicIndex.build_from_dataset`` (``...LV``, u32 components, when V > 65536),
    ``index.save``; ``index_bytes`` = ``workdir/seismic.index.seismic``. Search: one ``batch_search``
    (components as id strings, "42"), results placed by query id. Build knobs: API defaults; query_cut=10,
    heap_factor=0.8 from Seismic's docs/Guidelines.md (the API has none); sorted=True (API default).
    """

    name = "seismic"

    def __init__(self, workdir: str | Path | None = None, threads: int = 1, n_postings: int = 3500,
                 centroid_fraction: float = 0.1, min_cluster_size: int = 2, summary_energy: float = 0.4,
                 max_fraction: float = 1.5, doc_cut: int = 15, nknn: int = 0, batched_indexing: int | None = None,
                 query_cut: int = 10, heap_factor: float = 0.8, n_knn: int = 0, sorted: bool = True,
                 large_vocab: bool | None = None) -> None:
        import seismic

        self.seismic, self.threads, self.large_vocab = seismic, threads, large_vocab
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="peer-seismic-"))
        self.build_kw = {"n_postings": n_postings, "centroid_fraction": centroid_fraction, "doc_cut": doc_cut,
                         "min_cluster_size": min_cluster_size, "summary_energy": summary_energy,
                         "max_fraction": max_fraction, "nknn": nknn, "batched_indexing": batched_indexing}
        self.query_kw = {"query_cut": query_cut, "heap_factor": heap_factor, "n_knn": n_knn, "sorted": sorted}
        self.params: dict = {"exact": False, "threads": threads, "call": "batched (batch_search)",
                             "RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS"), **self.build_kw, **self.query_kw}

    def build(self, X: sp.spmatrix) -> None:
        """X: CSR float32 (n, V)."""
        s, X = self.seismic, _csr(X)
        lv = self.large_vocab if self.large_vocab is not None else X.shape[1] > 65536
        ds = (s.SeismicDatasetLV if lv else s.SeismicDataset)(dim=X.shape[1])
        ds.add_documents_by_id([str(i) for i in range(X.shape[0])], X.indices.astype(np.int64), X.data,
                               X.indptr.astype(np.int64))  # rows without terms are skipped by Seismic
        with _stdout_to_stderr():
            self.index = (s.SeismicIndexLV if lv else s.SeismicIndex).build_from_dataset(
                ds, num_threads=self.threads, **self.build_kw)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.index.save(str(self.workdir / "seismic"))
        self.params["large_vocab"] = lv

    def search(self, Q: sp.spmatrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Q: CSR float32 (nq, V) -> D float32 (nq, k), I int64 (nq, k)."""
        st, Q = self.seismic.get_seismic_string(), _csr(Q)
        D, I = _empty(Q.shape[0], k)
        rows = np.flatnonzero(np.diff(Q.indptr))  # an empty query has no hits: Seismic is not asked
        if len(rows) == 0:
            return D, I
        comps, p = Q.indices.astype(st), Q.indptr  # one vectorised int -> str conversion; slices are views
        res = self.index.batch_search(rows.astype(st), [comps[p[r]:p[r + 1]] for r in rows],
                                      [Q.data[p[r]:p[r + 1]] for r in rows], k, num_threads=self.threads,
                                      **self.query_kw)
        for hits in filter(None, res):
            q = int(hits[0][0])  # out of query order: place by query id
            sc = np.array([h[1] for h in hits], np.float32)
            o = np.argsort(-sc, kind="stable")[:k]
            D[q, :len(o)], I[q, :len(o)] = sc[o], np.array([int(h[2]) for h in hits], np.int64)[o]
        return D, I

    def index_bytes(self) -> int:
        return _alloc_bytes(self.workdir / "seismic.index.seismic")


class _QdrantBase:
    """Qdrant Edge (qdrant-edge-py) ``EdgeShard`` in ``workdir`` (missing or empty); point ids = rows.

    Build: ``update(upsert_points)`` in batches, ``flush``, ``optimize`` with ``indexing_threshold_kb=1`` (so
    even a small set ends in indexed immutable segments). Search: ``query_batch(QueryBatchRequest)``, answered
    in request order; building the request objects is timed, as for any user. ``threads`` ->
    ``EdgeConfig(max_search_threads)``, a pool that runs *segments* in parallel, not queries.
    ``index_bytes``: allocated bytes of ``workdir`` less the write-ahead log ``wal/`` (``wal_bytes``).
    """

    kind = ""

    def __init__(self, workdir: str | Path | None = None, threads: int = 1, upsert_batch: int = 1000,
                 query_batch: int = 1024, indexing_threshold_kb: int = 1, exact: bool = False, m: int = 16,
                 ef_construct: int = 100, full_scan_threshold_kb: int = 10_000, hnsw_ef: int | None = None,
                 distance: str = "Dot", prefetch_limit: int = 100, rrf_k: int = 60) -> None:
        import qdrant_edge as qe

        self.qe, self.threads, self.workdir = qe, threads, Path(workdir or tempfile.mkdtemp(prefix="peer-qdrant-"))
        self.upsert_batch, self.query_batch, self.exact, self.hnsw_ef = upsert_batch, query_batch, exact, hnsw_ef
        self.hnsw = {"m": m, "ef_construct": ef_construct, "full_scan_threshold": full_scan_threshold_kb}
        self.distance, self.prefetch_limit, self.rrf_k = distance, prefetch_limit, rrf_k
        self.indexing_threshold_kb = indexing_threshold_kb
        self.params: dict = {"threads": threads, "call": f"batched (query_batch, {query_batch} per call)",
                             "indexing_threshold_kb": indexing_threshold_kb, "exact_param": exact}

    def _create(self, dim: int | None, sparse: bool) -> None:
        qe = self.qe
        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise FileExistsError(f"{self.workdir} is not empty")
        vectors = None
        if dim is not None:
            self.params.update(distance=self.distance, hnsw_ef=self.hnsw_ef,
                               **{f"hnsw_{k}": v for k, v in self.hnsw.items()})
            vectors = {"dense": qe.EdgeVectorParams(size=dim, distance=getattr(qe.Distance, self.distance),
                                                    hnsw_config=qe.HnswIndexConfig(**self.hnsw))}
        cfg = qe.EdgeConfig(vectors=vectors, sparse_vectors={"sparse": qe.EdgeSparseVectorParams()} if sparse else None,
                            max_search_threads=self.threads,
                            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb))
        self.shard = qe.EdgeShard.create(str(self.workdir), cfg)

    def _upsert(self, n: int, vector_of: Callable[[int], dict]) -> None:
        qe = self.qe
        for s in range(0, n, self.upsert_batch):
            pts = [qe.Point(i, vector_of(i)) for i in range(s, min(n, s + self.upsert_batch))]
            self.shard.update(qe.UpdateOperation.upsert_points(pts))
        self.shard.flush()
        self.shard.optimize()
        self.shard.flush()
        info = self.shard.info()
        self.params.update(segments=info.segments_count, points=info.points_count)

    def _sparse_vec(self, M: sp.csr_matrix, i: int):
        a, b = M.indptr[i], M.indptr[i + 1]
        return self.qe.SparseVector(M.indices[a:b].tolist(), M.data[a:b].tolist())

    def _req(self, limit: int, vector, using: str, prefetch: bool = False):
        qe = self.qe
        params = qe.SearchParams(exact=self.exact, hnsw_ef=self.hnsw_ef if using == "dense" else None)
        q = qe.Query.Nearest(vector, using=using)
        if prefetch:
            return qe.Prefetch(limit=limit, query=q, params=params)
        return qe.QueryRequest(limit=limit, query=q, params=params, with_payload=False, with_vector=False)

    def _run(self, requests: list, k: int) -> tuple[np.ndarray, np.ndarray]:
        D, I = _empty(len(requests), k)
        for s in range(0, len(requests), self.query_batch):
            out = self.shard.query_batch(self.qe.QueryBatchRequest(requests[s:s + self.query_batch]))
            for r, hits in enumerate(out, start=s):
                hits = hits[:k]
                D[r, :len(hits)], I[r, :len(hits)] = [h.score for h in hits], [h.id for h in hits]
        return D, I

    def index_bytes(self) -> int:
        return _alloc_bytes(self.workdir, skip=("wal",))

    def wal_bytes(self) -> int:
        return _alloc_bytes(self.workdir / "wal")

    def close(self) -> None:
        self.shard.close()


class QdrantSparse(_QdrantBase):
    """One sparse vector ``sparse`` (dot product, float32, no IDF modifier). Exact: "A sparse vector index in
    Qdrant is exact, meaning it does not use any approximation algorithms"
    (https://qdrant.tech/documentation/concepts/indexing/#sparse-vector-index), and the self-test finds recall
    1.0 with the exact scores. ``exact=True`` makes it full-scan instead of using the inverted index."""

    name, kind = "qdrant-sparse", "sparse"

    def build(self, X: sp.spmatrix) -> None:
        """X: CSR float32 (n, V)."""
        X = _csr(X)
        self._create(None, True)
        self.params["exact"] = True
        self._upsert(X.shape[0], lambda i: {"sparse": self._sparse_vec(X, i)})

    def search(self, Q: sp.spmatrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Q: CSR float32 (nq, V) -> D float32 (nq, k), I int64 (nq, k)."""
        Q = _csr(Q)
        return self._run([self._req(k, self._sparse_vec(Q, i), "sparse") for i in range(Q.shape[0])], k)


class QdrantDense(_QdrantBase):
    """One dense vector ``dense`` (``distance`` "Dot" or "Cosine"), HNSW at Qdrant's defaults m=16,
    ef_construct=100, full_scan_threshold=10000 KB; ``hnsw_ef=None`` = ef_construct. Approximate, except that a
    segment with less than ``full_scan_threshold_kb`` KiB of vectors (10 MB: 40k 64-d, ~4.4k 576-d vectors)
    is brute-forced whatever its graph: exact at small scale. ``exact=True``: brute force everywhere."""

    name, kind = "qdrant-dense", "dense"

    def build(self, E: np.ndarray) -> None:
        """E: float32 (n, dim), L2-normalised."""
        self._create(E.shape[1], False)
        self.params["exact"] = self.exact
        self._upsert(len(E), lambda i: {"dense": E[i].tolist()})

    def search(self, Qd: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Qd: float32 (nq, dim) -> D float32 (nq, k), I int64 (nq, k)."""
        return self._run([self._req(k, q.tolist(), "dense") for q in np.asarray(Qd, np.float32)], k)


class QdrantHybrid(_QdrantBase):
    """Named vectors ``dense`` + ``sparse`` and Qdrant's standard hybrid query: two ``Prefetch`` (sparse and
    dense, each top ``prefetch_limit``) fused by ``Fusion.Rrf(k=rrf_k)`` (Qdrant's default 60) to the top k.
    D holds RRF scores; observed: the sum over lists of 1 / (rrf_k + rank), rank counted from 0."""

    name, kind = "qdrant-hybrid", "hybrid"

    def build(self, X: sp.spmatrix, E: np.ndarray) -> None:
        """X: CSR float32 (n, V); E: float32 (n, dim), L2-normalised; same rows."""
        X = _csr(X)
        self._create(E.shape[1], True)
        self.params.update(exact=False, prefetch_limit=self.prefetch_limit, rrf_k=self.rrf_k)
        self._upsert(X.shape[0], lambda i: {"dense": E[i].tolist(), "sparse": self._sparse_vec(X, i)})

    def search(self, Q: sp.spmatrix, Qd: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Q: CSR float32 (nq, V); Qd: float32 (nq, dim) -> D float32 (nq, k) RRF scores, I int64 (nq, k)."""
        qe, Q, L = self.qe, _csr(Q), self.prefetch_limit
        reqs = [qe.QueryRequest(limit=k, query=qe.Fusion.Rrf(k=self.rrf_k), with_payload=False, with_vector=False,
                                prefetches=[self._req(L, self._sparse_vec(Q, i), "sparse", prefetch=True),
                                            self._req(L, Qd[i].tolist(), "dense", prefetch=True)])
                for i in range(Q.shape[0])]
        return self._run(reqs, k)


class Bm25s:
    """bm25s with its own tokenizer (English stopwords) and PyStemmer stemmer, one pipeline for corpus and
    queries; defaults are hylex's BM25 settings (k1=0.9, b=0.4, Lucene). ``backend="numba"``: the query batch
    is one jitted call, serial at threads=1, numba-parallel over queries above (compiled in ``build``);
    ``params["backend"]`` records what ran. Exact; zero-score documents (no query term) are not hits.
    ``index_bytes``: in-memory bytes of its score CSC arrays.
    """

    name = "bm25s"

    def __init__(self, threads: int = 1, k1: float = 0.9, b: float = 0.4, method: str = "lucene",
                 stopwords: str = "en", stemmer: str | None = "english", backend: str = "numba") -> None:
        import bm25s
        import Stemmer

        self.bm25s, self.threads, self.stopwords = bm25s, threads, stopwords
        self.stemmer = Stemmer.Stemmer(stemmer) if stemmer else None
        self.kw = {"k1": k1, "b": b, "method": method, "backend": backend}
        self.params: dict = {"exact": True, "threads": threads, "stopwords": stopwords, "stemmer": stemmer,
                             "call": "batched (retrieve)", **self.kw}

    def _tok(self, texts: list[str], ids: bool):
        return self.bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stemmer, return_ids=ids,
                                   show_progress=False)

    def build(self, corpus: Sequence[str] | Sequence[Sequence[str]]) -> None:
        """corpus: texts, or token lists (joined with spaces, then tokenised like the queries)."""
        texts = [t if isinstance(t, str) else " ".join(t) for t in corpus]
        self.n, self.model = len(texts), self.bm25s.BM25(**self.kw)
        self.model.index(self._tok(texts, True), show_progress=False)
        self.params["backend"] = self.model.backend
        self.search(texts[:2], 1)  # JIT-compile now, not in the first timed call

    def search(self, query_texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """query_texts: nq strings -> D float32 (nq, k), I int64 (nq, k)."""
        D, I = _empty(len(query_texts), k)
        kk = min(k, self.n)  # bm25s refuses k > n_docs
        # numba backend: n_threads=1 is its serial kernel; numpy backend: 0 = serial, N = a thread pool
        nt = self.threads if self.model.backend == "numba" else (0 if self.threads == 1 else self.threads)
        docs, scores = self.model.retrieve(self._tok(list(query_texts), False), k=kk, n_threads=nt,
                                           show_progress=False)
        D[:, :kk], I[:, :kk] = np.where(scores > 0, scores, -np.inf), np.where(scores > 0, docs, -1)
        return D, I

    def index_bytes(self) -> int:
        sc, extra = self.model.scores, getattr(self.model, "nonoccurrence_array", None)
        return int(sum(a.nbytes for a in (sc["data"], sc["indices"], sc["indptr"], extra) if a is not None))


# --------------------------------------------------------------------------------------------- self-test

def _synthetic(seed: int = 0, n: int = 3000, nq: int = 50, V: int = 5000, dim: int = 64):
    """Zipf-ish sparse docs (~60 nnz) and queries (~15 nnz, the last one empty); 64-d normalised dense."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, V + 1) ** 0.9

    def mat(rows: int, draws: int) -> sp.csr_matrix:  # repeated draws of a frequent term merge: draw more
        r, c = np.repeat(np.arange(rows), draws), rng.choice(V, size=rows * draws, p=p / p.sum())
        return _csr(sp.csr_matrix((rng.gamma(2.0, 0.5, rows * draws).astype(np.float32), (r, c)), shape=(rows, V)))

    X, Q = mat(n, 73), mat(nq, 16)
    Q.data[Q.indptr[-2]:] = 0  # an empty query: every sparse adapter must pad its whole row
    E = rng.standard_normal((n, dim)).astype(np.float32)
    Qd = E[rng.integers(0, n, nq)] + 1.5 * rng.standard_normal((nq, dim)).astype(np.float32)
    return X, _csr(Q), E / np.linalg.norm(E, axis=1, keepdims=True), Qd / np.linalg.norm(Qd, axis=1, keepdims=True)


def _truths(X: sp.csr_matrix, Q: sp.csr_matrix, E: np.ndarray, Qd: np.ndarray, k1: float = 0.9, b: float = 0.4):
    """Exact scores (nq, n), -inf = no hit: sparse dot, dense dot, Qdrant-style RRF of their top 100s, and
    Lucene BM25 (bm25s's idf) of texts holding ceil(2 * weight) copies of the word "x<term>"."""
    Ss = (Q @ X.T).toarray()
    Ss[Ss <= 0] = -np.inf
    Sd, C, Qb = Qd @ E.T, X.copy(), Q.copy()
    Sr = np.full_like(Sd, -np.inf)
    for q in range(len(Sd)):
        for S in (Ss[q], Sd[q]):
            top = np.lexsort((np.arange(len(S)), -S))[:100]
            top = top[np.isfinite(S[top])]
            Sr[q, top] = np.where(np.isfinite(Sr[q, top]), Sr[q, top], 0) + 1.0 / (60 + np.arange(len(top)))
    C.data = np.ceil(C.data * 2)
    texts = [" ".join(f"x{t} " * int(c) for t, c in zip(C.indices[C.indptr[i]:C.indptr[i + 1]],
                                                       C.data[C.indptr[i]:C.indptr[i + 1]])) for i in range(C.shape[0])]
    qtexts = [" ".join(f"x{t}" for t in Q.indices[Q.indptr[i]:Q.indptr[i + 1]]) or "zzz" for i in range(Q.shape[0])]
    df, dl = np.bincount(C.indices, minlength=C.shape[1]), np.asarray(C.sum(axis=1)).ravel()
    norm = k1 * (1 - b + b * np.repeat(dl, np.diff(C.indptr)) / dl.mean())
    C.data = C.data / (C.data + norm) * np.log1p((C.shape[0] - df + 0.5) / (df + 0.5))[C.indices]
    Qb.data[:] = 1.0
    Sb = (Qb @ C.T).toarray()
    Sb[Sb <= 0] = -np.inf
    return Ss, Sd, Sr, Sb, texts, qtexts


def _recall(I: np.ndarray, S: np.ndarray, k: int) -> float:
    """Tie-aware recall@k: a returned row counts if its true score S[q, row] reaches the true k-th score."""
    hits = tot = 0
    for q in range(len(I)):
        m = min(k, int(np.isfinite(S[q]).sum()))
        kth = np.sort(S[q])[::-1][max(m - 1, 0)]
        hits += min(m, int((S[q][I[q][I[q] >= 0]] >= kth - 1e-5 * max(1.0, abs(kth))).sum()))
        tot += m
    return hits / max(tot, 1)


def selftest(threads: int = 1, k: int = 10) -> int:
    """Build every adapter on the synthetic set; print build s, size, recall@k, ms/query; 1 on any failure."""
    X, Q, E, Qd = _synthetic()
    Ss, Sd, Sr, Sb, texts, qtexts = _truths(X, Q, E, Qd)
    root, t = Path(tempfile.mkdtemp(prefix="peers-selftest-")), threads
    cases = [  # (label, adapter factory, build args, search args, true scores, must be exact)
        ("scipy-sparse", lambda: ScipySparse(t), (X,), (Q,), Ss, True),
        ("faiss Flat", lambda: FaissDense("Flat", root / "f1", t), (E,), (Qd,), Sd, True),
        ("faiss HNSW32 (efSearch 16)", lambda: FaissDense("HNSW32", root / "f2", t), (E,), (Qd,), Sd, False),
        ("faiss HNSW32 efSearch=128", lambda: FaissDense("HNSW32", root / "f3", t, efSearch=128), (E,), (Qd,), Sd, 0),
        ("faiss IVF32,Flat nprobe=4", lambda: FaissDense("IVF32,Flat", root / "f4", t, nprobe=4), (E,), (Qd,), Sd, 0),
        ("faiss IVF32,PQ16x4 nprobe=32", lambda: FaissDense("IVF32,PQ16x4", root / "f5", t, nprobe=32),
         (E,), (Qd,), Sd, 0),
        ("seismic (defaults)", lambda: Seismic(root / "s1", t), (X,), (Q,), Ss, False),
        ("seismic n_postings=300 query_cut=3", lambda: Seismic(root / "s2", t, n_postings=300, query_cut=3),
         (X,), (Q,), Ss, 0),
        ("qdrant-sparse", lambda: QdrantSparse(root / "q1", t), (X,), (Q,), Ss, True),
        ("qdrant-dense (defaults: plain under 10 MB)", lambda: QdrantDense(root / "q2", t), (E,), (Qd,), Sd, True),
        ("qdrant-dense exact=True", lambda: QdrantDense(root / "q3", t, exact=True), (E,), (Qd,), Sd, True),
        ("qdrant-dense graph forced (fst 1 KB)", lambda: QdrantDense(root / "q4", t, full_scan_threshold_kb=1),
         (E,), (Qd,), Sd, False),
        ("qdrant-hybrid RRF(sparse 100, dense 100)", lambda: QdrantHybrid(root / "q5", t), (X, E), (Q, Qd), Sr, True),
        ("bm25s", lambda: Bm25s(t), (texts,), (qtexts,), Sb, True),
    ]
    print(f"self-test: {X.shape[0]} docs x {X.nnz / X.shape[0]:.1f} nnz, V={X.shape[1]}, {Q.shape[0]} queries x "
          f"{Q.nnz / Q.shape[0]:.1f} nnz (1 empty), dim={E.shape[1]}, threads={threads}, "
          f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS')}\n"
          f"{'adapter':44s} {'build s':>7s} {'index KiB':>9s} {f'recall@{k}':>9s} {'ms/query':>8s}  notes")
    failed = 0
    for label, make, bargs, sargs, truth, exact in cases:
        t0 = time.perf_counter()
        a = make()
        a.build(*bargs)
        tb, t0 = time.perf_counter() - t0, time.perf_counter()
        D, I = a.search(*sargs, k)  # the first call: its results are checked
        tq, t0 = (time.perf_counter() - t0) / len(I) * 1e3, time.perf_counter()
        a.search(*sargs, k)  # warm
        tw = (time.perf_counter() - t0) / len(I) * 1e3
        ok = (D.shape == I.shape == (len(I), k) and D.dtype == np.float32 and I.dtype == np.int64
              and bool(np.all(np.diff(np.where(np.isfinite(D), D, -1e30), axis=1) <= 1e-6))
              and bool(np.all((I >= 0) == np.isfinite(D))) and not (I[~np.isfinite(truth).any(1)] >= 0).any())
        r = _recall(I, truth, k)
        note = ("" if ok else "BAD OUTPUT ") + ("EXACT ADAPTER BELOW 1.0 " if exact and r < 1.0 else "")
        failed += bool(note)
        note += f"backend={a.params['backend']}" if "backend" in a.params else ""
        if "segments" in a.params:
            note += f"segments={a.params['segments']} wal={a.wal_bytes() // 1024}KiB"
            a.close()
        print(f"{label:44s} {tb:7.2f} {a.index_bytes() / 1024:9.0f} {r:9.3f} {tw:8.3f}  (1st call {tq:.3f}) {note}")
    print("FAIL" if failed else "PASS", f"({failed} problem(s)); indexes left under {root}")
    return 1 if failed else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--selftest", action="store_true", help="build every adapter on a small synthetic set")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_thread_env(args.threads)
    if not args.selftest:
        ap.error("nothing to do: pass --selftest")
    sys.exit(selftest(args.threads))
