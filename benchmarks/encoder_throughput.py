"""Encoder throughput and query latency: hylex's encoder as it was before issue 14 (float32, every prompt token
recomputed), each change on its own, and today's defaults; the raw Hugging Face forward on the same batches.

Per system (interleaved, ``--repeats`` rounds) one JSON line: documents/s and tokens/s (real prompted tokens) of
``encode_documents`` on the first ``--n`` documents, the medians, and its agreement with the float32 baseline
(dense cosine, top sparse terms). Then the p50 of one in-process hybrid text query
(``Searcher.search(text)``: encode + three arms + fusion) on an index of those documents, per system. Last, the
raw ``transformers`` forward (body + LM head on the last position) on the batches hylex forms for the full
prompts, in each of ``--raw-dtypes``: its time, every system's time over it, and its own last-position dense
cosine to "before". Run on an otherwise idle machine.

    python benchmarks/encoder_throughput.py --data ../shared/data/beir/scifact --n 128 --repeats 3 \
        --systems before,after,after-rounded,after-split-attn-down --raw-dtypes float32,bfloat16
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hylex.corpus import read_corpus
from hylex.engine import Encoder
from hylex.engine.encoder import bf16_is_fast

# name -> Encoder keyword arguments. "before" is the encoder as issue 14 found it: float32 and the whole prompt
# run for every text; "after" is today's defaults.
SYSTEMS = {
    "before": {"dtype": "float32", "prefix_cache": False, "batch_tokens": 16384},
    "bf16": {"dtype": "bfloat16", "prefix_cache": False, "batch_tokens": 16384},
    "after": {},
    "after-bf16-residual": {},  # today's defaults with the residual stream rounded to bf16 (what it costs)
    "after-rounded": {"dtype": "bfloat16-rounded"},  # bf16 weights rounded, not split (the default to 2026-12-07)
    "after-split-attn-down": {},  # split weights on the attention projections and down_proj only (diagnostic)
}


def _unsplit(enc: Encoder, keep: tuple[str, ...]) -> None:
    """Undo the split of the body's bf16 weights (hylex.engine.native.Linear) except on layers named ``keep``."""
    for name, m in enc.module.lm.base_model.layers.named_modules():
        if getattr(m, "split_weight", None) is not None and not name.endswith(keep):
            m.unsplit_()


TWEAKS = {"after-bf16-residual": lambda enc: setattr(enc.module.lm.base_model, "float32_residual", False),
          "after-split-attn-down": lambda enc: _unsplit(enc, ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def agreement(base, out, top: int = 10, tie: float = 0.02) -> dict:
    """How far ``out`` is from ``base`` (both Encoded): dense cosine, and per document its ``top`` strongest sparse
    terms: share of documents with the same set, the same set up to near-ties (a term may cross the cut only
    when its ``base`` weight is within ``tie`` of the cut's), mean overlap, the same strongest term."""
    cos = np.sum(base.dense * out.dense, axis=1)
    same, same_ties, overlap, first = [], [], [], []
    for r in range(base.sparse.shape[0]):
        a, b = base.sparse[r], out.sparse[r]
        order = np.argsort(-a.data, kind="stable")
        ta, tb = a.indices[order[:top]], b.indices[np.argsort(-b.data, kind="stable")[:top]]
        weight = dict(zip(a.indices.tolist(), a.data.tolist()))
        cut = float(a.data[order[min(top, len(order)) - 1]]) if len(order) else 0.0
        crossed = set(ta) ^ set(tb)
        same.append(not crossed)
        same_ties.append(all(abs(weight.get(t, 0.0) - cut) <= tie for t in crossed))
        overlap.append(len(set(ta) & set(tb)) / max(len(ta), 1))
        first.append(len(ta) == 0 or (len(tb) > 0 and ta[0] == tb[0]))
    return {"dense_cosine_min": round(float(cos.min()), 6), "dense_cosine_median": round(float(np.median(cos)), 6),
            f"top{top}_terms_same_share": round(float(np.mean(same)), 4),
            f"top{top}_terms_same_up_to_ties_share": round(float(np.mean(same_ties)), 4),
            f"top{top}_terms_overlap_mean": round(float(np.mean(overlap)), 4),
            "top1_term_same_share": round(float(np.mean(first)), 4)}


def raw_batches(enc: Encoder, texts: list[str]):
    """The left-padded full-prompt batches hylex forms for ``texts`` (built outside any timer), and each batch's
    text indices."""
    prompted = enc._token_ids(texts, "passage")
    lengths = np.array([len(x[0]) for x in prompted])
    order = enc._batches(lengths)
    return [enc._batch_tensors([prompted[i] for i in batch])[:3] for batch in order], order


def raw_forward(hf, batches, order) -> tuple[float, np.ndarray]:
    """transformers' body on each batch and its LM head on the last position: the least a forward can do. Returns
    the seconds and the last position's hidden state per text, L2-normalised (texts, H) float32 (what hylex's
    ``last`` pooling gives), in the texts' order."""
    out = [None] * sum(len(b) for b in order)
    t = time.perf_counter()
    with torch.inference_mode():
        for (inp, att, pos), idx in zip(batches, order):
            h = hf.model(input_ids=inp, attention_mask=att, position_ids=pos, use_cache=False).last_hidden_state
            last = h[:, -1].float()
            _ = hf.lm_head(h[:, -1])
            for i, row in zip(idx, last):
                out[i] = row
    seconds = time.perf_counter() - t
    dense = torch.nn.functional.normalize(torch.stack(out), dim=-1).numpy()
    return seconds, dense


def query_latency(enc: Encoder, docs, dense, sparse, queries: list[str], tmp: Path) -> dict:
    """p50/p90 ms of one hybrid text query (encode + arms + fusion) on an index of ``docs``, and of the search
    alone with the query already encoded."""
    from hylex.indexing.index import Index
    from hylex.retrieval.searcher import Searcher

    index = Index.create(tmp, enc.describe())
    index.add(docs, dense, sparse)
    searcher = Searcher(index, encoder=enc)
    for q in queries[:3]:  # warm-up: numba kernels, first-call allocations
        searcher.search(q, k=10)
    full, search_only = [], []
    for q in queries:
        t = time.perf_counter()
        searcher.search(q, k=10)
        full.append(time.perf_counter() - t)
        e = enc.encode_queries([q])
        t = time.perf_counter()
        searcher.search(dense=e.dense, sparse=e.sparse, bm25_queries=[q], k=10)
        search_only.append(time.perf_counter() - t)
    arms = list(searcher.default_fusion["arms"])
    index.close()
    ms = lambda xs, p: round(float(np.percentile(xs, p)) * 1000, 2)  # noqa: E731
    return {"query_p50_ms": ms(full, 50), "query_p90_ms": ms(full, 90), "search_only_p50_ms": ms(search_only, 50),
            "query_arms": arms, "queries": len(full)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/beir/scifact", help="BEIR folder (corpus.jsonl, queries.jsonl)")
    ap.add_argument("--n", type=int, default=128, help="documents")
    ap.add_argument("--queries", type=int, default=50, help="queries for the latency figures")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    ap.add_argument("--batch-tokens", default="", help="also run 'after' with these batch_tokens (comma list)")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw transformers forward")
    ap.add_argument("--raw-dtypes", default="", help="dtypes of the raw forward (comma list; default: the "
                    "'after' system's)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    data = Path(args.data)
    docs = []
    for d in read_corpus(data / "corpus.jsonl"):
        docs.append(d)
        if len(docs) == args.n:
            break
    texts = [d.full_text for d in docs]
    queries = []
    with open(data / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            queries.append(json.loads(line)["text"])
            if len(queries) == args.queries:
                break
    systems = {name: dict(SYSTEMS[name]) for name in args.systems.split(",")}
    for bt in filter(None, args.batch_tokens.split(",")):
        systems[f"after@{bt}"] = {"batch_tokens": int(bt)}
    encoders = {name: Encoder(progress=False, encoding_cache=False, threads=args.threads, **kw)
                for name, kw in systems.items()}
    for name, enc in encoders.items():
        if name in TWEAKS:
            TWEAKS[name](enc)
    common = {"date": datetime.date.today().isoformat(), "dataset": data.name, "texts": len(texts),
              "cpu": cpu_name(), "bf16_native": bf16_is_fast(torch.device("cpu")), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "model": next(iter(encoders.values())).config.model}
    for enc in encoders.values():
        enc.encode_documents(texts[:4])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in encoders}
    outs, stats = {}, {}
    for _ in range(args.repeats):  # interleaved, so that a slow spell of the machine hits every system alike
        for name, enc in encoders.items():
            t = time.perf_counter()
            outs[name] = enc.encode_documents(texts)
            times[name].append(time.perf_counter() - t)
            stats[name] = enc.stats
    base = outs.get("before")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, enc in encoders.items():
        med, s = medians[name], stats[name]
        row = {**common, "system": name, "dtype": enc.config.dtype, "prefix_cache": enc.prefix_cache,
               "batch_tokens": enc.batch_tokens, "tokens": s.tokens, "padded_tokens": s.padded_tokens,
               "prefix_tokens": s.prefix_tokens, "batches": s.batches, "seconds_median": round(med, 3),
               "texts_per_s": round(len(texts) / med, 3), "tokens_per_s": round(s.tokens / med, 1),
               "forward_share": round(s.forward_seconds / s.seconds, 4), "runs": [round(x, 3) for x in times[name]]}
        if base is not None and name != "before":
            row["speedup_vs_before"] = round(medians["before"] / med, 3)
            row["vs_before"] = agreement(base, outs[name])
        with tempfile.TemporaryDirectory() as tmp:
            row.update(query_latency(enc, docs, outs[name].dense, outs[name].sparse, queries, Path(tmp) / "idx"))
        print(json.dumps(row), flush=True)
    if not args.no_raw:
        from hylex.engine.models import load_causal_lm

        name = "after" if "after" in encoders else next(iter(encoders))
        enc = encoders[name]
        batches, order = raw_batches(enc, texts)
        for raw_dtype in (args.raw_dtypes.split(",") if args.raw_dtypes else [enc.config.dtype.split("-")[0]]):
            # transformers' bfloat16 is the rounded body (bfloat16-rounded's); hylex's bfloat16 splits the weights
            hf = load_causal_lm(enc.resolved.path)
            enc._merge_adapters(hf)
            hf = hf.to(getattr(torch, raw_dtype)).eval()
            runs = [raw_forward(hf, batches, order) for _ in range(args.repeats)]
            med = statistics.median(r[0] for r in runs)
            row = {**common, "system": "hf_forward_same_batches", "dtype": raw_dtype,
                   "attn_implementation": getattr(hf.config, "_attn_implementation", None),
                   "seconds_median": round(med, 3), "texts_per_s": round(len(texts) / med, 3),
                   "runs": [round(r[0], 3) for r in runs],
                   # every system that ran the same batches, over this raw forward
                   **{f"{n}_over_raw_time": round(medians[n] / med, 4) for n, e in encoders.items()
                      if e.batch_tokens == enc.batch_tokens}}
            if base is not None and enc.config.pooling == "last":
                cos = np.sum(base.dense * runs[0][1], axis=1)
                row["vs_before"] = {"dense_cosine_min": round(float(cos.min()), 6),
                                    "dense_cosine_median": round(float(np.median(cos)), 6)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
