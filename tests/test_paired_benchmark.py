"""benchmarks/paired.py: per-query scores agree with hylex's evaluation, and the paired statistics behave."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def paired():
    return load_benchmark("paired")


def _write_run(path: Path, run: dict[str, dict[str, float]]) -> None:
    with open(path, "w") as f:
        for q, hits in run.items():
            for rank, (d, s) in enumerate(sorted(hits.items(), key=lambda x: -x[1]), 1):
                f.write(f"{q} Q0 {d} {rank} {s} test\n")


def test_per_query_mean_equals_evaluate_run(paired, tmp_path):
    from hylex.retrieval.evaluation import evaluate_run

    rng = np.random.default_rng(3)
    docs = [f"d{i}" for i in range(40)]
    qrels = {f"q{i}": {docs[j]: int(rng.integers(1, 3)) for j in rng.choice(40, size=3, replace=False)}
             for i in range(25)}
    # q24 gets no results at all: it must count as 0 in both
    run = {q: {docs[j]: float(rng.random()) for j in rng.choice(40, size=15, replace=False)}
           for q in list(qrels)[:-1]}
    _write_run(tmp_path / "a.trec", run)
    for metric, key in (("nDCG@10", "ndcg@10"), ("R@100", "recall@100")):
        pq = paired.per_query(str(tmp_path / "a.trec"), qrels, metric)
        assert set(pq) == set(qrels) and pq["q24"] == 0.0
        assert np.mean(list(pq.values())) == pytest.approx(evaluate_run(run, qrels, (metric,))[key], abs=1e-9)


def test_compare_statistics(paired):
    rng = np.random.default_rng(0)
    a = rng.random(200)
    same = paired.compare(a, a.copy(), samples=2000)
    assert same["diff"] == 0 and same["ties"] == 200 and same["p_ttest"] is None and same["p_randomisation"] == 1.0
    better = paired.compare(a, a + 0.05, samples=2000)
    assert better["diff"] == pytest.approx(0.05, abs=1e-4) and better["wins"] == 200
    assert better["p_randomisation"] < 0.01 and better["ci95"][0] > 0 and better["p_ttest"] is None
    noise = paired.compare(a, a + rng.normal(0, 0.1, 200), samples=2000)
    lo, hi = noise["ci95"]
    assert lo < noise["diff"] < hi and noise["wins"] + noise["losses"] + noise["ties"] == 200
    assert 0 < noise["p_ttest"] <= 1 and noise["p_randomisation"] > 0.01  # mean-zero noise: no effect found
    # seeded: the same input gives the same line
    b = a + 0.01 * rng.standard_normal(200)
    assert paired.compare(a, b, samples=500, seed=5) == paired.compare(a, b.copy(), samples=500, seed=5)
