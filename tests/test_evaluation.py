"""Tests of hylex.retrieval.evaluation: TREC run files and ir_measures-based metrics."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hylex.errors import CorpusError, HylexError
from hylex.retrieval.evaluation import evaluate_run, run_from_results, write_trec_run

NAN = float("nan")

# q1: relevant d1 (grade 1) and d3 (grade 2); q2: relevant d2.
QRELS = {"q1": {"d1": 1, "d3": 2, "d9": 0}, "q2": {"d2": 1}}


def test_hand_computed_ndcg_and_recall() -> None:
    # q1 ranking: d3 (2), d5 (0), d1 (1). trec_eval's nDCG uses linear gains: gain / log2(rank + 1).
    # q2 ranking: d4 (0), d2 (1).
    run = {"q1": {"d3": 3.0, "d5": 2.0, "d1": 1.0}, "q2": {"d4": 2.0, "d2": 1.0}}
    dcg1 = 2 / math.log2(2) + 1 / math.log2(4)
    idcg1 = 2 / math.log2(2) + 1 / math.log2(3)
    dcg2 = 1 / math.log2(3)
    idcg2 = 1.0
    expected_ndcg = (dcg1 / idcg1 + dcg2 / idcg2) / 2
    result = evaluate_run(run, QRELS)
    assert set(result) == {"ndcg@10", "recall@100"}
    assert result["ndcg@10"] == pytest.approx(expected_ndcg, abs=1e-4)
    assert result["recall@100"] == pytest.approx(1.0)
    # a cut-off below the rank of d1 loses it: recall@2 = (1/2 + 1/1) / 2
    assert evaluate_run(run, QRELS, ("recall@2",))["recall@2"] == pytest.approx(0.75)


def test_queries_without_results_count_as_zero() -> None:
    run = {"q1": {"d3": 2.0, "d1": 1.0}}  # perfect for q1, q2 absent
    perfect = {"ndcg@10": 1.0, "recall@100": 1.0}
    assert evaluate_run(run, {"q1": QRELS["q1"]}) == pytest.approx(perfect)
    half = {"ndcg@10": 0.5, "recall@100": 0.5}
    assert evaluate_run(run, QRELS) == pytest.approx(half)
    assert evaluate_run({**run, "q2": {}}, QRELS) == pytest.approx(half)  # an empty result list too
    assert evaluate_run({}, QRELS) == pytest.approx({"ndcg@10": 0.0, "recall@100": 0.0})
    # run queries without judgments are ignored
    assert evaluate_run({**run, "qx": {"d1": 1.0}}, QRELS) == pytest.approx(half)


def test_metric_names() -> None:
    run = {"q1": {"d5": 2.0, "d3": 1.0}, "q2": {"d2": 1.0}}
    result = evaluate_run(run, QRELS, ("nDCG@10", "ndcg@5", "R@100", "MRR@10", "P@1"))
    assert list(result) == ["ndcg@10", "ndcg@5", "recall@100", "rr@10", "p@1"]
    assert result["rr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert result["p@1"] == pytest.approx(0.5)
    with pytest.raises(HylexError, match="unknown metric 'bogus@3'"):
        evaluate_run(run, QRELS, ("bogus@3",))
    with pytest.raises(HylexError, match="qrels are empty"):
        evaluate_run(run, {})


def test_run_from_results_skips_missing_hits() -> None:
    ids = np.array([["d3", "d1", None], [None, None, None], ["d1", "d2", "d1"]], dtype=object)
    scores = np.array([[2.0, 1.0, NAN], [NAN, NAN, NAN], [1.0, -np.inf, 3.0]])
    run = run_from_results(["q1", "q2", "q3"], ids, scores)
    assert run == {"q1": {"d3": 2.0, "d1": 1.0}, "q2": {}, "q3": {"d1": 3.0}}
    with pytest.raises(ValueError, match="one row per query"):
        run_from_results(["q1"], ids, scores)


def test_write_trec_run_format(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "test.run"
    ids = [["d3", "d1", None], [None, None, None], ["a", "b", "c"]]
    scores = np.array([[2.5, 1.0, NAN], [NAN, NAN, NAN], [0.1, 0.3, 0.2]], dtype=np.float32)
    n = write_trec_run(path, ["q1", "q2", "q3"], ids, scores, tag="hylex-test")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert n == len(lines) == 5
    rows = [line.split(" ") for line in lines]
    assert all(len(r) == 6 and r[1] == "Q0" and r[5] == "hylex-test" for r in rows)
    assert [(r[0], r[2], int(r[3])) for r in rows] == [
        ("q1", "d3", 1), ("q1", "d1", 2), ("q3", "b", 1), ("q3", "c", 2), ("q3", "a", 3),
    ]
    assert float(rows[0][4]) == 2.5
    assert float(rows[2][4]) == pytest.approx(0.3)

    # the file reads back through ir_measures and scores like the in-memory run
    import ir_measures

    file_run: dict[str, dict[str, float]] = {}
    for sd in ir_measures.read_trec_run(str(path)):
        file_run.setdefault(sd.query_id, {})[sd.doc_id] = sd.score
    assert evaluate_run(file_run, QRELS) == pytest.approx(
        evaluate_run(run_from_results(["q1", "q2", "q3"], ids, scores), QRELS)
    )


def test_write_trec_run_rejects_unwritable_ids(tmp_path: Path) -> None:
    scores = np.array([[1.0]])
    with pytest.raises(HylexError, match="run tag"):
        write_trec_run(tmp_path / "r", ["q1"], [["d1"]], scores, tag="my run")
    with pytest.raises(CorpusError, match="whitespace"):
        write_trec_run(tmp_path / "r", ["q1"], [["d 1"]], scores, tag="t")
    with pytest.raises(ValueError, match="same shape"):
        write_trec_run(tmp_path / "r", ["q1"], [["d1", "d2"]], scores, tag="t")
