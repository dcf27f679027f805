"""Where a bfloat16 body's distance from float32 comes from: the weights' rounding or the activations'.

Per variant one JSON line: the dense cosine (min / 5th percentile / median) of the first ``--n`` documents'
encodings to the float32 encoder's, and the encode's seconds. Variants (all with the prefix cache and today's
batches):

- ``weights-rounded-f32``: float32 arithmetic on weights rounded to bfloat16 (the weights' error alone);
- ``activations-rounded-f32``: float32 weights, every body linear layer's input and output rounded to bfloat16
  (the activations' error alone);
- ``bfloat16-rounded``: the rounded bfloat16 body (both errors);
- ``bfloat16``: today's default, each weight split into two bfloat16 terms (:class:`hylex.engine.native.Linear`).

Last, one matmul the size of the default model's MLP (``--rows`` x 576 x 1,536) in each form: rounded bf16 weight,
split bf16 weight, float32 (milliseconds, median of 20).

    python benchmarks/bf16_error_sources.py --n 32
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

from hylex.corpus import read_corpus
from hylex.engine import Encoder
from hylex.engine.native import Linear


def _round(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


def rounded_weights(enc: Encoder) -> None:
    with torch.no_grad():
        for p in enc.module.lm.base_model.parameters():
            p.copy_(_round(p))


def rounded_activations(enc: Encoder) -> None:
    def forward(self, x):
        return _round(F.linear(_round(x), self.weight, self.bias))

    for m in enc.module.lm.base_model.layers.modules():
        if isinstance(m, torch.nn.Linear):
            m.forward = types.MethodType(forward, m)


VARIANTS = {"weights-rounded-f32": ("float32", rounded_weights),
            "activations-rounded-f32": ("float32", rounded_activations),
            "bfloat16-rounded": ("bfloat16-rounded", None),
            "bfloat16": ("bfloat16", None)}


def matmul_ms(rows: int, repeats: int = 20) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 576, generator=g).bfloat16()
    lin = Linear(576, 1536, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(1536, 576, generator=g))
    w32 = lin.weight.detach().clone()
    lin.split_()
    hi = w32.bfloat16()

    def ms(f):
        f()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return round(statistics.median(times) * 1000, 2)

    with torch.no_grad():
        return {"rounded_ms": ms(lambda: F.linear(x, hi)), "split_ms": ms(lambda: lin(x)),
                "float32_ms": ms(lambda: F.linear(x.float(), w32))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/beir/scifact", help="BEIR folder (corpus.jsonl)")
    ap.add_argument("--n", type=int, default=32, help="documents")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--rows", type=int, default=2048, help="rows of the matmul timed at the end")
    args = ap.parse_args()
    texts = []
    for d in read_corpus(f"{args.data}/corpus.jsonl"):
        texts.append(d.full_text)
        if len(texts) == args.n:
            break
    common = {"date": datetime.date.today().isoformat(), "texts": len(texts), "threads": torch.get_num_threads()}
    ref = Encoder(progress=False, encoding_cache=False, dtype="float32")
    t = time.perf_counter()
    base = ref.encode_documents(texts)
    print(json.dumps({**common, "variant": "float32", "seconds": round(time.perf_counter() - t, 2)}), flush=True)
    for name in args.variants.split(","):
        dtype, patch = VARIANTS[name]
        enc = Encoder(progress=False, encoding_cache=False, dtype=dtype)
        if patch:
            patch(enc)
        t = time.perf_counter()
        out = enc.encode_documents(texts)
        seconds = time.perf_counter() - t
        cos = np.sum(base.dense * out.dense, axis=1)
        print(json.dumps({**common, "variant": name, "seconds": round(seconds, 2),
                          "dense_cosine_min": round(float(cos.min()), 6),
                          "dense_cosine_p5": round(float(np.percentile(cos, 5)), 6),
                          "dense_cosine_median": round(float(np.median(cos)), 6)}), flush=True)
    print(json.dumps({**common, "variant": "matmul", "shape": [args.rows, 576, 1536], **matmul_ms(args.rows)}),
          flush=True)


if __name__ == "__main__":
    main()
