"""GPU checks and timings: FAISS indexes moved to the GPU on load, and the encoder on CUDA.

Run on a machine with a CUDA GPU, faiss-gpu and a CUDA torch build. Prints one JSON line per check:

- ``dense``: for each FAISS factory, hylex's ``DenseIndex.load`` (which moves Flat/IVF indexes to the GPU) is
  compared with the same index searched on the CPU: recall@10 of the GPU hits against the CPU hits, queries/s
  of both, and hylex's wrapper time over the raw GPU ``index.search`` call.
- ``encode_match``: the encoder on CUDA and on the CPU (both float32) over the same texts: the smallest dense
  cosine and the mean overlap of the kept sparse terms.
- ``encode``: encoder throughput on CUDA (texts/s and real tokens/s) per dtype and batch size.

``--model`` takes any model folder; ``--random-init FOLDER`` instead builds a model with the architecture in
FOLDER's config.json and random weights (the compute, hence the speed, is that of the trained model).

    python benchmarks/gpu.py --texts corpus.jsonl --model ~/.cache/hylex/models/smollm2-135m
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from hylex.corpus import read_corpus
from hylex.indexing.dense import DenseIndex, gpu_available


def emit(**rec) -> None:
    print(json.dumps(rec), flush=True)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def clustered(n: int, d: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)] + 0.3 * rng.standard_normal((n, d), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def check_dense(n: int, nq: int, d: int, factories: list[str], repeats: int, workdir: Path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4096, d), dtype=np.float32)
    xb, xq = clustered(n, d, rng, centers), clustered(nq, d, rng, centers)
    for factory in factories:
        t = time.perf_counter()
        built = DenseIndex.build(xb, factory)
        build_s = time.perf_counter() - t
        if "IVF" in factory:
            faiss.extract_index_ivf(built.index).nprobe = 16
        path = workdir / f"{factory.replace(',', '_')}.faiss"
        built.save(path)
        cpu = faiss.read_index(str(path))  # the CPU index exactly as stored
        gpu = DenseIndex.load(path, factory)  # hylex's load: to the GPU when it can
        on_gpu = "Gpu" in type(gpu.index).__name__
        cpu_s, (Dc, Ic) = timed(lambda: cpu.search(xq, 10), repeats)
        gpu_s, (Dg, Ig) = timed(lambda: gpu.search(xq, 10), repeats)
        raw_s, _ = timed(lambda: gpu.index.search(xq, 10), repeats)
        # GPU and CPU differ in float rounding: compare hit sets, not order
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(Ig.tolist(), Ic.tolist())]))
        emit(check="dense", factory=factory, n=n, nq=nq, dim=d, index_type=type(gpu.index).__name__,
             on_gpu=on_gpu, build_s=round(build_s, 2), recall_vs_cpu=round(recall, 4),
             max_score_diff=float(np.nanmax(np.abs(np.where(Ig == Ic, Dg - Dc, 0)))),
             cpu_qps=round(nq / cpu_s), gpu_qps=round(nq / gpu_s),
             hylex_over_raw=round(gpu_s / raw_s, 3), cpu_threads=faiss.omp_get_max_threads())


def random_model(src: Path, dest: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=torch.float32)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    return dest


def check_encoder(model: str, texts: list[str], n_match: int, batches: list[int], repeats: int) -> None:
    from hylex.engine import Encoder

    common = dict(progress=False, encoding_cache=False, max_length=512)
    cuda = Encoder(model, device="cuda", dtype="float32", **common)
    cpu = Encoder(model, device="cpu", dtype="float32", **common)
    a, b = cuda.encode_documents(texts[:n_match]), cpu.encode_documents(texts[:n_match])
    cos = np.sum(a.dense * b.dense, axis=1) / (np.linalg.norm(a.dense, axis=1) * np.linalg.norm(b.dense, axis=1))
    overlap = [len(set(a.sparse[i].indices) & set(b.sparse[i].indices)) / max(1, len(set(b.sparse[i].indices)))
               for i in range(n_match)]
    emit(check="encode_match", texts=n_match, min_dense_cosine=round(float(cos.min()), 6),
         mean_sparse_term_overlap=round(float(np.mean(overlap)), 4),
         max_sparse_abs_diff=float(np.abs(a.sparse - b.sparse).max()))
    del cpu
    for dtype in ("float32", "auto"):
        for mb in batches:
            enc = Encoder(model, device="cuda", dtype=dtype, max_batch=mb, batch_tokens=max(16384, mb * 512),
                          **common)
            enc.encode_documents(texts[:mb])  # warm-up: kernels, allocator
            torch.cuda.synchronize()
            secs, _ = timed(lambda: (enc.encode_documents(texts), torch.cuda.synchronize()), repeats)
            ntok = sum(len(x[0]) for x in enc._token_ids(texts, "passage"))
            emit(check="encode", dtype=enc.config.dtype, max_batch=mb, texts=len(texts),
                 texts_per_s=round(len(texts) / secs, 1), tokens_per_s=round(ntok / secs),
                 gpu=torch.cuda.get_device_name(0), peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 2**20))
            enc = None  # free the GPU memory before the next setting
            torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500_000, help="dense vectors")
    ap.add_argument("--nq", type=int, default=10_000, help="dense queries")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--factories", default="Flat;IVF1024,Flat;IVF1024,PQ32;HNSW32",
                    help="FAISS factory strings separated by ';'")
    ap.add_argument("--texts", help="a corpus JSONL for the encoder checks (skipped without it)")
    ap.add_argument("--n-texts", type=int, default=2000)
    ap.add_argument("--model", help="model folder or name for the encoder checks")
    ap.add_argument("--random-init", help="folder with config.json + tokenizer: random weights of that shape")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    emit(check="env", torch=torch.__version__, cuda=torch.cuda.is_available(),
         gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
         faiss=faiss.__version__, faiss_gpus=faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
         hylex_sees_gpu=gpu_available())
    factories = [f.strip() for f in args.factories.split(";") if f.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        check_dense(args.n, args.nq, args.dim, factories, args.repeats, Path(tmp))
        if args.texts and (args.model or args.random_init):
            texts = [d.full_text for _, d in zip(range(args.n_texts), read_corpus(args.texts))]
            model = args.model or str(random_model(Path(args.random_init), Path(tmp) / "model"))
            check_encoder(model, texts, 64, [int(b) for b in args.batches.split(",")], args.repeats)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
