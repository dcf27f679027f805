"""Bar chart (PNG) of nDCG@10 per system and dataset from the JSON lines of benchmarks/quality.py.

    python benchmarks/plot_quality.py benchmarks/quality.png benchmarks/results/quality.jsonl \
        benchmarks/results/quality_qwen.jsonl
"""
from __future__ import annotations

import json
import sys
from collections import OrderedDict


def main(dst: str, *srcs: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for src in srcs for line in open(src) if line.strip()]
    rows = [r for r in rows if "ndcg@10" in r and not r.get("dataset", "").endswith("-train")]
    datasets = list(OrderedDict.fromkeys(r["dataset"] for r in rows))
    systems = list(OrderedDict.fromkeys((r.get("model", ""), r["system"]) for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 0.32 * len(systems) + 1.5),
                             squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        vals = {(r.get("model", ""), r["system"]): r["ndcg@10"] for r in rows if r["dataset"] == ds}
        labels = [f"{m + ': ' if m else ''}{s}" for m, s in systems if (m, s) in vals]
        ys = [vals[k] for k in systems if k in vals]
        colors = ["#888888" if s == "bm25s" else "#3b75af" for m, s in systems if (m, s) in vals]
        ax.barh(range(len(ys)), ys, color=colors)
        ax.set_yticks(range(len(ys)), labels, fontsize=7)
        ax.invert_yaxis()
        bm25 = vals.get(("", "bm25s"))
        if bm25 is not None:
            ax.axvline(bm25, color="#444444", ls="--", lw=1)
        ax.set_xlabel("nDCG@10 (test)")
        ax.set_title(ds)
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:])
