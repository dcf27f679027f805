"""Is system B better than system A on a test set, per query? A paired comparison of two TREC run files.

The tuned-default decision (issue 13) compares two plain searches on the same queries; a difference of a few
thousandths of nDCG@10 over a few hundred queries can be noise. This prints, per metric, one JSON line with both
means, the mean per-query difference B - A with a 95% bootstrap interval, a two-sided paired randomisation
(sign-flip) test and a paired t-test, and how many queries B wins, loses and ties. Seeded: the same files give
the same line.

    python -m hylex eval DATA --index IDX_A --split test --runs-dir RUNS_A   # writes DATA.test.hybrid.trec
    python benchmarks/paired.py DATA/qrels/test.tsv RUNS_A/x.test.hybrid.trec RUNS_B/x.test.hybrid.trec \
        --labels zero-shot default-tuned

Every judged query counts (a query missing from a run scores 0, as in :func:`hylex.retrieval.evaluation.evaluate_run`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hylex.corpus import read_qrels  # noqa: E402


def read_run(run_file: str, qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """A TREC run file as {query id: {doc id: score}} over the judged queries (empty where the run has none)."""
    import ir_measures

    run: dict[str, dict[str, float]] = {q: {} for q in qrels}
    for r in ir_measures.read_trec_run(run_file):
        if r.query_id in run:
            run[r.query_id][r.doc_id] = float(r.score)
    return run


def per_query(run: str | dict, qrels: dict[str, dict[str, int]], metric: str) -> dict[str, float]:
    """metric value per judged query (0 where the run has no results for it); ``run`` a file or :func:`read_run`'s
    dict. The metric takes the spellings ``hylex eval`` takes (nDCG@10, recall@100, MRR@10...)."""
    import ir_measures

    from hylex.retrieval.evaluation import _parse_metric

    run = read_run(run, qrels) if isinstance(run, str) else run
    out = {q: 0.0 for q in qrels}
    for m in ir_measures.iter_calc([_parse_metric(metric)], qrels, run):
        out[m.query_id] = float(m.value)
    return out


def compare(a: np.ndarray, b: np.ndarray, *, samples: int = 10_000, seed: int = 0) -> dict:
    """Paired statistics of ``b - a`` (two float arrays of shape (Q,), one value per query)."""
    from scipy import stats

    d = b - a
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(samples, len(d)))].mean(axis=1)
    flips = rng.choice(np.array([-1.0, 1.0]), size=(samples, len(d)))
    null = np.abs((flips * d).mean(axis=1))
    # the observed sign pattern counts as one of the permutations (p never reads 0)
    p_rand = (1 + int(np.sum(null >= abs(d.mean()) - 1e-12))) / (samples + 1)
    # undefined when every query moves by the same amount (zero variance): reported as null, not as a warning
    t = stats.ttest_rel(b, a) if np.ptp(d) > 1e-12 else None
    return {"queries": len(d), "mean_a": round(float(a.mean()), 4), "mean_b": round(float(b.mean()), 4),
            "diff": round(float(d.mean()), 4),
            "ci95": [round(float(np.quantile(boot, 0.025)), 4), round(float(np.quantile(boot, 0.975)), 4)],
            "p_randomisation": round(p_rand, 4), "p_ttest": None if t is None else round(float(t.pvalue), 4),
            "wins": int(np.sum(d > 1e-9)), "losses": int(np.sum(d < -1e-9)),
            "ties": int(np.sum(np.abs(d) <= 1e-9))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("qrels", help="qrels TSV (BEIR: DATA/qrels/test.tsv)")
    ap.add_argument("run_a", help="TREC run file of system A (the baseline)")
    ap.add_argument("run_b", help="TREC run file of system B")
    ap.add_argument("--labels", nargs=2, default=None, metavar=("A", "B"), help="names for the output")
    ap.add_argument("--metrics", nargs="+", default=["nDCG@10", "R@100"])
    ap.add_argument("--dataset", default=None, help="dataset name for the output [the qrels' grandparent folder]")
    ap.add_argument("--samples", type=int, default=10_000, help="bootstrap and randomisation samples")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()
    for f in (args.qrels, args.run_a, args.run_b):
        if not Path(f).is_file():
            ap.error(f"{f} is not a file: pass a qrels TSV and two TREC run files (hylex eval --runs-dir writes them)")
    qrels = read_qrels(args.qrels)
    labels = args.labels or [Path(args.run_a).name, Path(args.run_b).name]
    dataset = args.dataset or Path(args.qrels).resolve().parent.parent.name
    run_a, run_b = read_run(args.run_a, qrels), read_run(args.run_b, qrels)  # each file read once
    qids = sorted(qrels)
    for metric in args.metrics:
        a, b = per_query(run_a, qrels, metric), per_query(run_b, qrels, metric)
        line = {"dataset": dataset, "metric": metric, "a": labels[0], "b": labels[1],
                **compare(np.array([a[q] for q in qids]), np.array([b[q] for q in qids]), samples=args.samples)}
        if args.out:  # the file first: a closed stdout (a pipe into head) must not lose the saved line
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
