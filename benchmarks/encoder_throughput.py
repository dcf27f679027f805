"""Encoder throughput: hylex's full encode (tokenize, prompt, batch, forward, project, prune) against the raw
Hugging Face forward pass (``model(..., logits_to_keep=1)``) on the very same padded batches.

Prints one JSON line per (dtype, system) with texts/s, tokens/s (real, unpadded tokens) and the median of
``--repeats`` runs, then one line with hylex's overhead ratio. Run on an otherwise idle machine.

    python benchmarks/encoder_throughput.py --data ../shared/data/beir/scifact --n 256
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from hylex.corpus import read_corpus
from hylex.engine import Encoder


def raw_forward(enc: Encoder, texts: list[str]) -> tuple[float, int]:
    """The raw HF forward on the batches hylex would form: same token ids, padding and position ids."""
    ids = [x[0] for x in enc._token_ids(texts, "passage")]

    lengths = np.array([len(x) for x in ids])
    batches = enc._batches(lengths)
    padded = []
    for batch in batches:  # build inputs outside the timed region: the raw pass gets them for free
        width = int(lengths[batch].max())
        inp = torch.full((len(batch), width), enc.pad_id, dtype=torch.long)
        att = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            inp[r, width - len(ids[i]):] = torch.tensor(ids[i])
            att[r, width - len(ids[i]):] = 1
        padded.append((inp, att, (att.cumsum(1) - 1).clamp(min=0)))
    t = time.perf_counter()
    with torch.inference_mode():
        for inp, att, pos in padded:
            out = enc.lm(input_ids=inp, attention_mask=att, position_ids=pos, logits_to_keep=1,
                         output_hidden_states=True)
            _ = out.hidden_states[-1][:, -1], out.logits[:, -1]
    return time.perf_counter() - t, int(lengths.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/beir/scifact", help="BEIR folder (corpus.jsonl)")
    ap.add_argument("--n", type=int, default=256, help="documents")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,auto")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    texts = []
    for d in read_corpus(Path(args.data) / "corpus.jsonl"):
        texts.append(d.full_text)
        if len(texts) == args.n:
            break
    for dtype in args.dtypes.split(","):
        enc = Encoder(progress=False, encoding_cache=False, dtype=dtype, threads=args.threads)
        enc.encode_documents(texts[:8])  # warm-up
        hy, raw = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            enc.encode_documents(texts)
            hy.append(time.perf_counter() - t)
            tokens = enc.stats.tokens
            s, _ = raw_forward(enc, texts)
            raw.append(s)
        common = {"dataset": Path(args.data).name, "texts": len(texts), "tokens": tokens,
                  "dtype": enc.config.dtype, "threads": torch.get_num_threads(), "machine": platform.machine(),
                  "batch_tokens": enc.batch_tokens}
        for name, times in (("hylex.encode_documents", hy), ("hf_forward_same_batches", raw)):
            med = statistics.median(times)
            print(json.dumps({**common, "system": name, "seconds_median": round(med, 3),
                              "texts_per_s": round(len(texts) / med, 2), "tokens_per_s": round(tokens / med, 1),
                              "runs": [round(x, 3) for x in times]}), flush=True)
        print(json.dumps({**common, "overhead_ratio": round(statistics.median(hy) / statistics.median(raw), 4)}),
              flush=True)


if __name__ == "__main__":
    main()
