"""Peak memory and step time of `hylex tune` training steps: gradient checkpointing, accumulation, GradCache.

Loads the zero-shot model in float32 (as ``hylex tune`` does), puts LoRA on it with the default settings, and runs
``--steps`` optimizer steps of ``--batch`` queries x (1 positive + ``--negatives``) passages from a pair file
(passages cut to 128 tokens, bf16 autocast where fast). Prints one JSON line: per step its seconds, text tokens
and (current, peak) RSS in GiB. Run each setting in its own process: peak RSS never falls.

    python benchmarks/train_memory.py --checkpointing on  --batch 16 --negatives 3
    python benchmarks/train_memory.py --checkpointing off --batch 16 --negatives 3
    python benchmarks/train_memory.py --checkpointing off --batch 16 --negatives 3 --accumulate 4 --grad-cache
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss() -> tuple[float, float]:
    """(current, peak) resident memory of this process, GiB."""
    cur = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    return round(cur, 2), round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpointing", choices=["on", "off"], required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--accumulate", type=int, default=1, help="micro-batches per step [1]")
    ap.add_argument("--grad-cache", action="store_true", help="GradCache over the micro-batches")
    ap.add_argument("--pairs", default=str(Path(__file__).resolve().parents[2] / "shared/data/train/scitldr.jsonl"))
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()

    from hylex.engine import Encoder
    from hylex.tuning.data import read_pairs
    from hylex.tuning.trainer import Trainer, TuneArgs

    data = read_pairs(args.pairs)
    enc = Encoder(args.model, progress=False, encoding_cache=False, dtype="float32")
    loaded = rss()
    targs = TuneArgs(steps=args.steps, queries_per_step=args.batch, negatives=args.negatives,
                     gradient_checkpointing=args.checkpointing == "on", accumulate=args.accumulate,
                     grad_cache=args.grad_cache, save_every=10**6, eval_every=10**6)
    with tempfile.TemporaryDirectory() as work:
        tr = Trainer(enc, data, targs, work, progress=False)
        steps = []
        for i in range(args.steps):
            t = time.perf_counter()
            rec = tr._step(i)
            steps.append({"seconds": round(time.perf_counter() - t, 1), "tokens": rec["tokens"], "rss_gib": rss()})
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "checkpointing": args.checkpointing, "batch": args.batch,
                      "accumulate": args.accumulate, "grad_cache": args.grad_cache,
                      "negatives": args.negatives, "pairs": Path(args.pairs).name, "after_load_gib": loaded,
                      "steps": steps, "autocast_bf16": tr.autocast}))


if __name__ == "__main__":
    main()
