"""Indexing at scale: `hylex index` streaming a synthetic corpus through a stub encoder, peak memory per size.

``streaming``: writes a synthetic gzipped JSONL corpus of N documents (once, cached under ``--work``: ~80
Zipf-drawn words per document over a 50,000-word vocabulary, a title of 4 words), then runs the real command line
``hylex index CORPUS --index DIR --encoder scale:stub_encoder`` in a child process per size and reports its
wall time, documents/s and peak RSS (``ru_maxrss`` of that child alone, from ``wait4``). The stub encoder
(:class:`StubEncoder`: crc32 word hashing into 32,768 sparse ids, a fixed random projection to 64-d dense) takes
the LLM out, so what is measured is hylex's own reading, BM25 analysis, segment building, LMDB and commits.
With ``--merge off`` the index never merges (``--no-auto-merge``); with ``auto`` the default policy runs (ten
100,000-document segments are merged into one at 1,000,000: that merge holds the merged segment in memory).

    PYTHONPATH=. python benchmarks/scale.py streaming --docs 100000 1000000 --merge off auto \\
        --out benchmarks/results/scale.jsonl

``ray``: the same corpus through ``index_with_ray`` on a local Ray cluster (a child driver process; the stub
encoder in an actor pool, segments staged by write tasks and committed by the driver), optionally beside the
single-process run (``--single``): wall time, documents/s, the driver's peak RSS and the largest encoder-actor and
writer peaks the job reports, and the driver's time in commits and merges.

    PYTHONPATH=. python benchmarks/scale.py ray --docs 100000 1000000 --single --out benchmarks/results/scale.jsonl
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
WORDS = 50_000


class StubEncoder:
    """A fast deterministic stand-in for the LLM (a ``hylex.indexing.TextEncoder``): sparse ``log1p(count)`` of
    each word at ``crc32(word) % vocab_size``; dense the sparse row times a seeded Gaussian matrix, L2-normalised
    (a text without words gets a fixed unit vector)."""

    vocab_size = 32_768

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim  # 576 = the default model's hidden size: the vectors' bytes the driver commits
        rng = np.random.default_rng(0)
        self.projection = rng.standard_normal((self.vocab_size, self.dim)).astype(np.float32)

    def describe(self) -> dict:
        return {"model_id": "stub-hash", "fingerprint": "stub-hash-1" + ("" if self.dim == 64 else f"-{self.dim}"),
                "dim": self.dim,
                "vocab_size": self.vocab_size, "settings": {"stub": "crc32 words, log1p counts"}}

    def _encode(self, texts):
        indptr, cols = [0], []
        for t in texts:
            cols.extend(zlib.crc32(w.encode()) % self.vocab_size for w in t.lower().split())
            indptr.append(len(cols))
        m = sp.csr_matrix((np.ones(len(cols), np.float32), np.asarray(cols, np.int64), np.asarray(indptr)),
                          shape=(len(texts), self.vocab_size))
        m.sum_duplicates()
        m.data = np.log1p(m.data)
        dense = np.asarray(m @ self.projection, dtype=np.float32)
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        dense = np.where(norms > 0, dense / np.maximum(norms, 1e-12), 0).astype(np.float32)
        dense[norms[:, 0] == 0, 0] = 1.0
        return dense, m.astype(np.float32)

    def encode_documents(self, texts):
        return self._encode(texts)

    def encode_queries(self, texts):
        return self._encode(texts)


def stub_encoder(dim: int = 64) -> StubEncoder:
    """``--encoder scale:stub_encoder`` (with ``benchmarks`` on PYTHONPATH)."""
    return StubEncoder(dim)


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    """``n`` synthetic documents as gzipped JSONL (written to a temporary name, then renamed)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(WORDS)])
    p = 1.0 / np.arange(1, WORDS + 1)
    cdf = np.cumsum(p / p.sum())
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as f:
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            lengths = rng.integers(40, 120, m)
            words = vocab[np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), WORDS - 1)]
            titles = vocab[np.minimum(np.searchsorted(cdf, rng.random(m * 4)), WORDS - 1)].reshape(m, 4)
            ends = np.cumsum(lengths)
            for i in range(m):
                text = " ".join(words[ends[i] - lengths[i]:ends[i]])
                f.write(json.dumps({"_id": f"doc{start + i}", "title": " ".join(titles[i]), "text": text}) + "\n")
    os.replace(tmp, path)


def run_index(corpus: Path, index: Path, merge: str) -> dict:
    """``hylex index`` in a child process: wall seconds, its peak RSS and its summary line."""
    shutil.rmtree(index, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "hylex", "--no-progress", "index", str(corpus), "--index", str(index),
           "--encoder", "scale:stub_encoder"] + (["--no-auto-merge"] if merge == "off" else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"hylex index failed ({proc.returncode}): {err.strip()[-2000:]}")
    manifest = json.loads((index / "manifest.json").read_text())
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            "segments": len(manifest["segments"]), "n_docs": manifest["n_docs"],
            "summary": out.strip().splitlines()[-1]}


RAY_DRIVER = """
import functools, json, sys, time
import ray
from scale import stub_encoder
from hylex.indexing.distributed import index_with_ray
ray.init(num_cpus=int(sys.argv[3]), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
t0 = time.perf_counter()
factory = functools.partial(stub_encoder, int(sys.argv[7]))
rep = index_with_ray(sys.argv[1], sys.argv[2], factory, actors=int(sys.argv[4]), batch_size=int(sys.argv[5]),
                     segment_size=int(sys.argv[6]))
print(json.dumps({"seconds_in_job": round(time.perf_counter() - t0, 1), "segments": rep.segments, **rep.extra}))
"""


def run_ray(corpus: Path, index: Path, cpus: int, actors: int, batch: int, segment: int, dim: int = 64) -> dict:
    """index_with_ray with the stub encoder in a child driver process (a local cluster of ``cpus``): wall time,
    the driver's peak RSS, and the actors' and writers' peaks the job reports."""
    shutil.rmtree(index, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RAY_DRIVER, str(corpus), str(index), str(cpus), str(actors),
                             str(batch), str(segment), str(dim)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"the Ray job failed: {err.strip()[-3000:]}")
    manifest = json.loads((index / "manifest.json").read_text())
    return {"seconds": round(seconds, 1), "driver_peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            "n_docs": manifest["n_docs"], **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="bench", required=True)
    s = sub.add_parser("streaming", help="hylex index with a stub encoder: peak RSS against corpus size")
    s.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000])
    s.add_argument("--merge", nargs="+", choices=["off", "auto"], default=["off", "auto"])
    s.add_argument("--work", default=str(HERE / ".work" / "scale"))
    s.add_argument("--keep", action="store_true", help="keep the indexes (default: removed after each run)")
    s.add_argument("--out", default=None, help="also append the JSON lines to this file")
    r = sub.add_parser("ray", help="hylex index on a local Ray cluster with the stub encoder, against one process")
    r.add_argument("--docs", type=int, nargs="+", default=[100_000])
    r.add_argument("--cpus", type=int, default=2, help="the local cluster's CPUs")
    r.add_argument("--actors", type=int, default=1)
    r.add_argument("--batch", type=int, default=256, help="documents per encoder call")
    r.add_argument("--segment", type=int, default=100_000)
    r.add_argument("--dim", type=int, default=64, help="the stub's dense dimension (576: the default model's)")
    r.add_argument("--single", action="store_true", help="also run the single-process hylex index on each corpus")
    r.add_argument("--work", default=str(HERE / ".work" / "scale"))
    r.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.bench == "ray":
        return ray_main(args)

    work, sink = _setup(args)
    for n in args.docs:
        corpus = _corpus(work, n)
        for merge in args.merge:
            index = work / f"index-{n}-{merge}"
            r = run_index(corpus, index, merge)
            row = {"bench": "streaming", "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
                   "cpus": os.cpu_count(), "docs": n, "corpus": corpus.name,
                   "corpus_mib": round(corpus.stat().st_size / 2**20, 1), "encoder": "stub (crc32, 64-d)",
                   "auto_merge": merge == "auto", "docs_per_s": round(n / r["seconds"], 1), **r}
            _emit(sink, row)
            if not args.keep:
                shutil.rmtree(index, ignore_errors=True)



def _setup(args):
    """The work folder (created) and the --out file (or None)."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    return work, open(args.out, "a") if args.out else None


def _corpus(work: Path, n: int) -> Path:
    """The synthetic corpus of ``n`` documents, written once."""
    corpus = work / f"corpus-{n}.jsonl.gz"
    if not corpus.exists():
        t0 = time.perf_counter()
        write_corpus(corpus, n)
        print(f"wrote {corpus} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return corpus


def _emit(sink, row: dict) -> None:
    print(json.dumps(row), flush=True)
    if sink:
        sink.write(json.dumps(row) + "\n")
        sink.flush()


def ray_main(args) -> None:
    work, sink = _setup(args)
    for n in args.docs:
        corpus = _corpus(work, n)
        runs = [("ray", lambda: run_ray(corpus, work / f"ray-{n}", args.cpus, args.actors, args.batch, args.segment,
                                          args.dim))]
        if args.single:
            runs.insert(0, ("single", lambda: run_index(corpus, work / f"single-{n}", "auto")))
        for kind, fn in runs:
            r = fn()
            row = {"bench": f"{kind}-process" if kind == "single" else "ray", "date": time.strftime("%Y-%m-%d"),
                   "machine": platform.machine(), "cpus": os.cpu_count(), "docs": n, "corpus": corpus.name,
                   "encoder": f"stub (crc32, {args.dim if kind == 'ray' else 64}-d)",
                   "docs_per_s": round(n / r["seconds"], 1), **r}
            if kind == "ray":
                row.update({"ray_cpus": args.cpus, "actors": args.actors, "batch": args.batch,
                            "segment": args.segment})
            _emit(sink, row)
            shutil.rmtree(work / f"{kind}-{n}", ignore_errors=True)


if __name__ == "__main__":
    main()
