"""Markdown tables of ``results/tuning.jsonl`` for benchmarks/README.md: one table per dataset, one column per run.

    python benchmarks/tuning_table.py [--results benchmarks/results/tuning.jsonl] [--dataset nfcorpus]

A column is one JSON line (model, dtype, where the fusion came from); a row is one system, shown as
``nDCG@10 / Recall@100`` with the fused weights in brackets. Later lines for the same column replace earlier ones.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = (("bm25s", "bm25s (peer)"), ("bm25", "hylex BM25 arm"), ("dense", "dense arm"), ("sparse", "sparse arm"),
        ("dense+sparse", "dense+sparse (chosen)"), ("with bm25", "best fusion with BM25 (chosen)"),
        ("default", "default fusion (what a plain search uses)"))


def cell(m: dict | None) -> str:
    if not m:
        return ""
    s = f"{m['ndcg@10']:.3f} / {m['recall@100']:.3f}"
    if m.get("arms") and len(m["arms"]) > 1:
        s += f" ({'/'.join(f'{w:g}' for w in m['weights'])} {'+'.join(m['arms'])})"
    elif m.get("arms"):
        s += f" ({m['arms'][0]} alone)"
    return s


def fusion_source(r: dict) -> str:
    """A tuning.py line's ``--choose-on`` (train, card or base); lines written before the field existed: from the
    chosen_on text."""
    if "fusion_source" in r:
        return r["fusion_source"]
    return "train" if (r.get("fusion_chosen_on") or "").startswith(f"{r['dataset']} train") else "card"


def set_card_fusion(model_dir: str | Path, fusion: dict) -> None:
    """Make ``fusion`` the one a plain search with the tuned model in ``model_dir`` uses (its card's ``fusion``); the
    card's first fusion, ``hylex tune``'s dev choice, is kept as ``fusion_on_dev``."""
    card_path = Path(model_dir) / "hylex-model.json"
    card = json.loads(card_path.read_text())
    card.setdefault("fusion_on_dev", card.get("fusion"))
    card["fusion"] = fusion
    card_path.write_text(json.dumps(card, indent=1) + "\n")


def column(r: dict) -> str:
    chosen = {"train": "train", "base": "base's"}.get(fusion_source(r), "stored")
    return f"{r['model']}, {r.get('dtype', 'float32')}, fusion {chosen}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "tuning.jsonl"))
    ap.add_argument("--dataset", action="append", help="only these datasets [all]")
    args = ap.parse_args()
    runs: dict[str, dict[str, dict]] = {}
    for line in open(args.results):
        r = json.loads(line)
        if args.dataset and r["dataset"] not in args.dataset:
            continue
        runs.setdefault(r["dataset"], {})[column(r)] = r
    for ds, cols in runs.items():
        names = list(cols)
        print(f"\n{ds} ({next(iter(cols.values()))['queries']} test queries), nDCG@10 / Recall@100\n")
        print("| system | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for key, label in ROWS:
            if any(key in cols[n]["systems"] for n in names):
                print(f"| {label} | " + " | ".join(cell(cols[n]["systems"].get(key)) for n in names) + " |")


if __name__ == "__main__":
    main()
