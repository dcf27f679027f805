"""Indexing on a Ray cluster: Ray Data reads the corpus, an actor pool encodes it, write tasks build complete
segments, and the driver commits them into the index one at a time with the ordinary commit protocol.

    from hylex.indexing.distributed import index_with_ray
    report = index_with_ray("corpus.jsonl.gz", "my-index", encoder_factory, actors=4, gpus_per_actor=1)

The stages (``pip install hylex[ray]``):

1. **read**: JSONL (plain, gzip, zstd) with ``ray.data.read_text`` (each line is parsed and validated in the
   actors exactly as :class:`hylex.corpus.CorpusReader` does), Parquet with ``ray.data.read_parquet``. The path
   must be readable from every node (local for a one-machine cluster, shared storage otherwise).
2. **encode**: ``map_batches`` over an actor pool (``ActorPoolStrategy(size=actors)``): each actor calls
   ``encoder_factory()`` once (one model per actor, ``num_gpus=gpus_per_actor`` each where GPUs exist) and
   encodes ``batch_size`` documents per call. The encoder's cache works in actors (an LMDB folder per node, shared
   by that node's actors): a job run again on the same nodes skips the encodings already made.
3. **write**: ``map_batches`` tasks of ``segment_size`` documents, each writing a complete segment (FAISS,
   impacts, BM25 postings, the documents' JSON) under ``INDEX/staging/`` with
   :func:`hylex.indexing.index.write_segment_files`. The index directory must therefore be on storage every node
   can write (a shared filesystem), or the cluster one machine.
4. **commit**: the driver holds the index's writer lock for the whole job and commits each staged segment as it
   arrives (:meth:`hylex.indexing.Index.add_staged`): ids are checked against the index at commit time, so an
   id repeated in the corpus is refused; one manifest commit per segment. Only the segments the write stage
   *returns* are committed: a task Ray retried after a worker died leaves an orphan directory that is never
   committed and is removed at the end (and by any later run).

If the driver dies, the index stays at its last commit; run again with ``existing="resume"`` (``--resume``): the
corpus is read and encoded again (the encoding cache makes that cheap on the same nodes) and documents already
committed unchanged replace themselves, so nothing is lost or duplicated.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from hylex.corpus import _parse_document, _parse_json_line, file_format
from hylex.errors import CorpusError, HylexError
from hylex.indexing.bm25 import Bm25Postings
from hylex.indexing.builder import EXISTING, BuildReport, _open_existing, _remove_new_index
from hylex.indexing.dense import DEFAULT_FACTORY
from hylex.indexing.index import MANIFEST, Index, write_segment_files
from hylex.indexing.store import doc_json

logger = logging.getLogger(__name__)

STAGING = "staging"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise HylexError("indexing on Ray needs ray[data]: pip install 'hylex[ray]'") from None
    return ray


class _Encode:
    """Ray actor: one encoder, loaded once; a batch of corpus rows in, documents and encodings out."""

    def __init__(self, factory: Callable[[], Any], source: str, kind: str) -> None:
        self.encoder = factory()
        if hasattr(self.encoder, "progress"):
            self.encoder.progress = False
        self.source, self.kind = source, kind

    def _documents(self, batch: dict) -> list:
        name = Path(self.source).name
        docs = []
        if self.kind == "lines":
            for line in batch["text"]:
                try:  # no line numbers in a distributed read: the error quotes the line's start instead
                    docs.append(_parse_document(_parse_json_line(name, 0, str(line)), name, 0))
                except CorpusError as e:
                    raise CorpusError(f"{str(e).split(': ', 1)[-1]} (line starting {str(line)[:80]!r})") from None
        else:
            keys = list(batch)
            for i in range(len(batch[keys[0]])):
                row = {k: _plain(batch[k][i]) for k in keys}
                if row.get("title") is None:
                    row.pop("title", None)
                docs.append(_parse_document(row, name, 0, "row"))
        return docs

    def __call__(self, batch: dict) -> dict:
        docs = self._documents(batch)
        dense, sparse = self.encoder.encode_documents([d.full_text for d in docs])
        sparse = sp.csr_matrix(sparse, dtype=np.float32)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: this actor's peak so far
        return {"doc": np.array([doc_json(d) for d in docs], dtype=object),
                "full_text": np.array([d.full_text for d in docs], dtype=object),  # BM25's input, as encoded
                "actor_rss_kb": np.full(len(docs), rss, dtype=np.int64),
                "dense": np.asarray(dense, np.float32),
                "sp_idx": _ragged([sparse.indices[sparse.indptr[i]:sparse.indptr[i + 1]].astype(np.int32)
                                   for i in range(len(docs))]),
                "sp_val": _ragged([sparse.data[sparse.indptr[i]:sparse.indptr[i + 1]].astype(np.float32)
                                   for i in range(len(docs))])}


def _ragged(parts: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(parts), dtype=object)
    for i, p in enumerate(parts):
        out[i] = p
    return out


def _plain(v: Any) -> Any:
    """numpy scalars and arrays from a Parquet batch as plain JSON values."""
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _write(batch: dict, staging: str, factory: str, sparse_cfg: dict, analyzer_cfg: dict, vocab_size: int) -> dict:
    """Ray task: one complete staged segment from a batch of encoded documents."""
    from hylex.text import Bm25Analyzer

    blobs = [bytes(b) for b in batch["doc"]]
    n = len(blobs)
    dense = np.stack([np.asarray(v, np.float32) for v in batch["dense"]]) if n else np.zeros((0, 0), np.float32)
    idx = [np.asarray(x, np.int32) for x in batch["sp_idx"]]
    val = [np.asarray(x, np.float32) for x in batch["sp_val"]]
    indptr = np.zeros(n + 1, np.int64)
    indptr[1:] = np.cumsum([len(x) for x in idx])
    sparse = sp.csr_matrix((np.concatenate(val) if n else np.zeros(0, np.float32),
                            np.concatenate(idx) if n else np.zeros(0, np.int32), indptr), shape=(n, vocab_size))
    analyzer = Bm25Analyzer.from_dict(analyzer_cfg)
    bm25 = Bm25Postings.from_tokens(analyzer.analyze([str(t) for t in batch["full_text"]]))
    name = uuid.uuid4().hex
    target = Path(staging) / name
    part = write_segment_files(target, dense, None, sparse_csr=sparse, bm25=bm25, factory=factory,
                               sparse_cfg=sparse_cfg)
    _write_synced(target.with_name(name + ".documents.jsonl"), b"".join(b + b"\n" for b in blobs))
    _write_synced(target.with_name(name + ".json"), json.dumps(part).encode())  # last: marks it complete
    actor_rss = int(np.max(batch["actor_rss_kb"])) if n else 0
    return {"staged": np.array([name], dtype=object), "n": np.array([n], dtype=np.int64),
            "actor_rss_kb": np.array([actor_rss], dtype=np.int64),
            "writer_rss_kb": np.array([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss], dtype=np.int64)}


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def index_with_ray(corpus: str | os.PathLike, index_dir: str | os.PathLike, encoder_factory: Callable[[], Any], *,
                   address: str | None = None, actors: int = 1, gpus_per_actor: float = 0, cpus_per_actor: float = 1,
                   batch_size: int = 64, segment_size: int = 100_000, dense_factory: str = DEFAULT_FACTORY,
                   bm25: dict | None = None, sparse: dict | None = None, merge: dict | None = None,
                   existing: str = "error", on_commit=None, wait: float = 0.0) -> BuildReport:
    """Index ``corpus`` into ``index_dir`` on a Ray cluster (the module docstring gives the stages).

    ``encoder_factory``: a picklable callable returning the encoder (a ``hylex.indexing.TextEncoder``); the
    driver calls it once for the encoder's description, every actor once. ``address``: the cluster to join
    (``ray.init(address)``; None starts or joins a local one). Other options as :func:`build_index`;
    ``dense_agg='maxsim'`` encoders are not supported here; ``wait``: seconds to wait for another writer of an
    existing index. Returns the :class:`BuildReport`
    (``extra``: ``staged`` segments committed, ``orphans`` staged directories left by retried tasks,
    ``actor_peak_rss_gib`` / ``writer_peak_rss_gib`` the largest peak RSS of an encoder actor / a write task's
    worker, ``commit_seconds`` the driver's time in commits and the merges they start).
    """
    ray = _ray()
    for name, v in (("actors", actors), ("batch_size", batch_size), ("segment_size", segment_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise HylexError(f"{name} must be a positive integer, got {v!r}")
    if existing not in EXISTING:
        raise HylexError(f"existing must be one of {', '.join(EXISTING)}, got {existing!r}")
    src = Path(corpus)
    if not src.is_file():
        raise CorpusError(f"corpus file {src} does not exist. Pass the path of a JSONL or Parquet corpus file.")
    fmt = file_format(src)
    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, logging_level=logging.WARNING)
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < actors * cpus_per_actor + 1:  # else the write tasks never get a CPU and the job hangs
        raise HylexError(f"the Ray cluster has {cpus:g} CPUs: {actors} encoder actor(s) x {cpus_per_actor:g} CPU "
                         f"plus 1 for the segment writers need {actors * cpus_per_actor + 1:g}; use fewer actors "
                         f"or a bigger cluster")
    encoder = encoder_factory()
    desc = encoder.describe()
    if (desc.get("settings") or {}).get("dense_agg") == "maxsim":
        raise HylexError("dense_agg 'maxsim' is not supported on Ray: index single-process, or use first/mean")
    path = Path(index_dir)
    if path.exists() and not path.is_dir():
        raise HylexError(f"index path {path} is a file, not a directory: pass a new or an existing index directory")
    if (path / MANIFEST).exists():
        from hylex.indexing.bm25 import bm25_settings
        from hylex.indexing.index import sparse_settings

        index = _open_existing(path, encoder, bm25_settings(bm25) if bm25 is not None else None,
                               sparse_settings(sparse) if sparse is not None else None, wait)
        created = None
    else:
        created = "dir" if path.exists() else "path"
        index = Index.create(path, desc, dense_factory, bm25=bm25, sparse=sparse, merge=merge)
    del encoder  # the driver only needed its description
    report = BuildReport(index_dir=str(path))
    staging = path / STAGING
    try:
        shutil.rmtree(staging, ignore_errors=True)  # what an earlier, killed job left
        staging.mkdir()
        if fmt == "parquet":
            ds, kind = ray.data.read_parquet(str(src.resolve())), "rows"
        else:
            comp = {"gzip": "gzip", "zstd": "zstd"}.get(fmt)
            ds = ray.data.read_text(str(src.resolve()), drop_empty_lines=True,
                                    arrow_open_stream_args={"compression": comp} if comp else None)
            kind = "lines"
        encoded = ds.map_batches(
            _Encode, fn_constructor_kwargs={"factory": encoder_factory, "source": str(src), "kind": kind},
            compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size, batch_format="numpy",
            num_gpus=gpus_per_actor or None, num_cpus=cpus_per_actor)
        m = index.manifest
        # whole blocks of segment_size rows (the last one smaller): Ray's batches otherwise follow its block
        # boundaries, and segments came out at half the size asked (19 instead of 10 for 1,000,000 documents)
        encoded = encoded.repartition(target_num_rows_per_block=segment_size, strict=True)
        staged = encoded.map_batches(
            _write, fn_kwargs={"staging": str(staging.resolve()), "factory": m["dense"]["factory"],
                               "sparse_cfg": dict(m["sparse"]), "analyzer_cfg": dict(m["bm25"]["analyzer"]),
                               "vocab_size": int(m["sparse"]["vocab_size"])},
            batch_size=segment_size, batch_format="numpy")
        committed = set()
        actor_kb = writer_kb = 0
        commit_s = 0.0
        for row in staged.iter_rows():
            name, n = str(row["staged"]), int(row["n"])
            actor_kb, writer_kb = max(actor_kb, int(row["actor_rss_kb"])), max(writer_kb, int(row["writer_rss_kb"]))
            if name in committed:
                continue
            if n:
                tc = time.perf_counter()
                index.add_staged(staging / name, existing=existing)
                commit_s += time.perf_counter() - tc
                report.segments += 1
                report.documents += n
                if on_commit is not None:
                    on_commit(report.documents, None)
            committed.add(name)
        orphans = [p.name for p in staging.iterdir() if p.is_dir()]
        report.extra["staged"] = len(committed)
        # what each kind of process peaked at (the largest seen), and the driver's time in commits and merges
        report.extra["actor_peak_rss_gib"] = round(actor_kb / 2**20, 3)
        report.extra["writer_peak_rss_gib"] = round(writer_kb / 2**20, 3)
        report.extra["commit_seconds"] = round(commit_s, 2)
        report.extra["orphans"] = len(orphans)
        if orphans:
            logger.info("removing %d staged segments no task returned (retried tasks)", len(orphans))
    except BaseException:
        if created and not report.documents:  # nothing committed: leave no empty index behind
            index.close()
            _remove_new_index(path, created == "path")
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        index.close()
    report.seconds = time.perf_counter() - t0
    return report
