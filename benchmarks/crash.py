"""Crash test: `hylex index` killed with SIGKILL at random moments, then reopened, validated and resumed.

Each trial indexes a corpus in small batches (one segment per batch, automatic merges on) in a fresh
directory, in a child process killed with SIGKILL at a random instant of its commits: one trial in four around
the first commit (timed from the start, by an uninterrupted run), the others at a uniform delay after the
child's first acknowledgement, over the span of the remaining commits and merges (before its first commit the
process only imports, loads the model and encodes, and writes nothing). Then it checks that

- the index opens (checksums verified) and ``validate()`` finds no problem;
- it holds every document of every batch the process acknowledged (printed ``committed N/M``), and only whole
  batches: its documents are exactly the corpus's first ``n`` with ``n`` a multiple of the batch size (or all);
- ``hylex index --resume`` completes it: every document, valid, searchable.

The encoder is a tiny randomly initialised Llama with the default model's tokenizer (a real ``hylex index`` with
a real transformers model, just small, so a trial takes seconds). One JSON line per trial, then a summary.

    python benchmarks/crash.py --trials 20
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 8


def tiny_model(dest: Path) -> Path:
    """A 2-layer, 32-wide Llama with smollm2-135m's tokenizer and random weights, saved at ``dest``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hylex.engine.models import resolve_model

    if (dest / "config.json").exists():
        return dest
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m").path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def corpus(path: Path, n: int) -> list[str]:
    words = ["star", "galaxy", "orbit", "comet", "flour", "oven", "bread", "yeast", "pawn", "knight", "rook", "trout", "river", "salmon", "canvas", "brush", "train", "station", "track", "signal", "volcano", "lava", "magma"]
    rng = random.Random(7)
    ids = []
    with open(path, "w") as f:
        for i in range(n):
            ids.append(f"c{i:04d}")
            f.write(json.dumps({"_id": ids[-1], "text": " ".join(rng.choices(words, k=rng.randint(5, 30))),
                                "metadata": {"i": i}}) + "\n")
    return ids


def index_cmd(corpus_path: Path, index: Path, model: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hylex", "--no-progress", "index", str(corpus_path), "--index", str(index),
            "--model", str(model), "--segment-size", str(BATCH), "--chunk-size", str(BATCH), "--merge-factor", "2",
            "--cache-dir", str(cache), "--threads", "1", *extra]


def acknowledged(stdout: str) -> int:
    """The documents ``hylex index`` acknowledged: its last ``committed N documents ...`` line (the older
    ``committed N/M documents`` form too)."""
    done = [int(m.group(1)) for m in re.finditer(r"^committed (\d+)(?:/\d+)? documents\b", stdout, re.MULTILINE)]
    return max(done, default=0)


def check(index: Path, ids: list[str], acked: int) -> dict:
    from hylex.indexing import Index

    if not (index / "manifest.json").exists():
        return {"opened": False, "ok": acked == 0, "n_docs": 0}
    with Index.open(index) as ix:
        problems = ix.validate()
        n = ix.n_docs
        present = [i for i, r in zip(ids, ix.rows_of(ids)) if r is not None]
    whole = present == ids[:n] and (n % BATCH == 0 or n == len(ids))
    return {"opened": True, "n_docs": n, "problems": problems, "whole_batches": whole,
            "ok": not problems and whole and n >= acked}


def run_trials(trials: int, workdir: Path, n_docs: int = 64, seed: int = 0, log=print) -> list[dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    model = tiny_model(workdir / "tiny-model")
    cache = workdir / "cache"
    path = workdir / "corpus.jsonl"
    ids = corpus(path, n_docs)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    # uninterrupted runs: when the first and last commits come. The second is timed: like the trials, it finds
    # the encodings cached by the first, so it reaches its commits sooner.
    for name in ("clean", "clean-warm"):
        t = time.perf_counter()
        proc = subprocess.Popen(index_cmd(path, workdir / name, model, cache), stdout=subprocess.PIPE, text=True,
                                env=env)
        first = last = None
        for line in proc.stdout:
            if line.startswith("committed"):
                last = time.perf_counter() - t
                first = last if first is None else first
        proc.wait()
        if proc.returncode != 0 or first is None:
            raise RuntimeError(f"the uninterrupted run failed (exit {proc.returncode})")
    rng = random.Random(seed)
    out = []
    for trial in range(trials):
        index = workdir / f"trial-{trial:02d}"
        t = time.perf_counter()
        proc = subprocess.Popen(index_cmd(path, index, model, cache), stdout=subprocess.PIPE, text=True, env=env)
        seen = ""
        if trial % 4 == 0:  # around the first commit, timed from the start
            time.sleep(rng.uniform(max(0.0, first - 0.3), first + 0.05))
        else:  # anywhere in the later commits and merges, timed from the first acknowledgement
            for line in proc.stdout:
                seen += line
                if line.startswith("committed"):
                    break
            time.sleep(rng.uniform(0.0, last - first + 0.1))
        at = time.perf_counter() - t
        proc.send_signal(signal.SIGKILL)
        stdout, _ = proc.communicate()
        stdout = seen + stdout
        acked = acknowledged(stdout)
        rec = {"trial": trial, "kill_at_s": round(at, 3), "finished_before_kill": proc.returncode == 0,
               "acknowledged": acked, **check(index, ids, acked)}
        res = subprocess.run(index_cmd(path, index, model, cache, "--resume"), capture_output=True, text=True,
                             env=env)
        after = check(index, ids, len(ids))
        rec.update(resumed=res.returncode == 0 and after["ok"] and after["n_docs"] == len(ids),
                   resume_error=None if res.returncode == 0 else res.stderr.strip().splitlines()[-1:])
        out.append(rec)
        log(json.dumps(rec))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recs = run_trials(args.trials, Path(args.workdir or tmp), args.docs, args.seed)
    print(json.dumps({"summary": True, "trials": len(recs), "ok": sum(r["ok"] for r in recs),
                      "resumed": sum(r["resumed"] for r in recs),
                      "killed_mid_run": sum(not r["finished_before_kill"] for r in recs),
                      "acknowledged_docs_lost": sum(max(0, r["acknowledged"] - r["n_docs"]) for r in recs)}))


if __name__ == "__main__":
    main()
