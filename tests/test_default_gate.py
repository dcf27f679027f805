"""benchmarks/default_gate.py: the fusion chosen on several collections is the best mean, with hylex fuse's tie rule."""
from __future__ import annotations

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def gate():
    return load_benchmark("default_gate")


D, S, B = ("dense",), ("sparse",), ("bm25",)
DB = ("dense", "bm25")
DSB = ("dense", "sparse", "bm25")


def test_mean_choice_is_neither_collections_own_best(gate):
    # collection 1 prefers BM25 alone, collection 2 dense alone; the mean prefers the fusion both rate well
    t1 = {(B, (1.0,)): 0.70, (D, (1.0,)): 0.40, (DB, (0.3, 0.7)): 0.68, (DSB, (0.3, 0.1, 0.6)): 0.60}
    t2 = {(B, (1.0,)): 0.30, (D, (1.0,)): 0.36, (DB, (0.3, 0.7)): 0.35, (DSB, (0.3, 0.1, 0.6)): 0.34}
    best, mean = gate.mean_choice([t1, t2])
    assert best == (DB, (0.3, 0.7))
    assert mean[best] == pytest.approx(0.515)
    assert mean[(B, (1.0,))] == pytest.approx(0.50)


def test_mean_choice_ties_go_to_fewer_arms(gate):
    t1 = {(DSB, (0.3, 0.1, 0.6)): 0.60, (DB, (0.3, 0.7)): 0.59995, (S, (1.0,)): 0.1}
    t2 = {(DSB, (0.3, 0.1, 0.6)): 0.40, (DB, (0.3, 0.7)): 0.40, (S, (1.0,)): 0.1}
    assert gate.mean_choice([t1, t2])[0] == (DB, (0.3, 0.7))
    # outside the tolerance the better mean wins however many arms it needs
    t1[(DB, (0.3, 0.7))] = 0.59
    assert gate.mean_choice([t1, t2])[0] == (DSB, (0.3, 0.1, 0.6))


def test_mean_choice_refuses_different_grids(gate):
    with pytest.raises(ValueError, match="same grid points"):
        gate.mean_choice([{(B, (1.0,)): 0.5}, {(D, (1.0,)): 0.5}])


def test_gate_passes_only_above_the_margin(gate):
    paired = {"mean_a": 0.315, "mean_b": 0.340}
    assert gate.gate_passed(paired)
    assert not gate.gate_passed(paired, margin=0.03)
    assert gate.gate_passed({"mean_a": 0.315, "mean_b": 0.346}, margin=0.03)
    assert not gate.gate_passed({"mean_a": 0.315, "mean_b": 0.315})
    with pytest.raises(ValueError, match="margin"):
        gate.gate_passed(paired, margin=float("nan"))
