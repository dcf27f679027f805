"""benchmarks/fusion_norms.py: its min-max and reciprocal-rank fusions equal hylex's kernel on seeded data."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_benchmark
from hylex.kernels.fusion import fuse_ref


@pytest.fixture(scope="module")
def norms():
    return load_benchmark("fusion_norms")


def _arms(seed: int, nq: int = 6, depth: int = 12, n_docs: int = 30):
    rng = np.random.default_rng(seed)
    top = {}
    for a in ("dense", "sparse", "bm25"):
        I = np.stack([rng.choice(n_docs, depth, replace=False) for _ in range(nq)]).astype(np.int64)
        D = np.sort(rng.normal(size=(nq, depth)).astype(np.float32), axis=1)[:, ::-1].copy()
        I[0, depth - 3:] = -1  # a short list
        D[0, depth - 3:] = -np.inf
        top[a] = (D, I)
    top["sparse"][0][1, :] = 0.5  # one query where every score is equal
    return top


@pytest.mark.parametrize("how,method", [("minmax", "convex"), ("rrf", "rrf")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fuser_equals_the_kernel(norms, how, method, seed):
    top = _arms(seed)
    arms = ("dense", "sparse", "bm25")
    for w in [(0.3, 0.1, 0.6), (0.5, 0.5, 0.0), (0.2, 0.4, 0.4)]:
        D, I = norms.Fuser(top, arms, how).top(w, k=10)
        Dk, Ik = fuse_ref(np.stack([top[a][1] for a in arms]), np.stack([top[a][0] for a in arms]),
                          np.asarray(w, np.float32), method, 10)
        np.testing.assert_allclose(D, Dk, rtol=1e-6)
        # the same documents in the same order, except where a score ties another (float rounding may order those
        # differently)
        tied = np.array([[np.sum(np.isclose(row, x, rtol=1e-6)) > 1 for x in row] for row in Dk])
        assert ((I == Ik) | tied).all()
        assert (I == Ik).mean() > 0.9


def test_distribution_norms(norms):
    D = np.array([[3.0, 2.0, 1.0, 0.0], [5.0, 5.0, -np.inf, -np.inf]], np.float32)
    I = np.array([[4, 7, 1, 2], [3, 9, -1, -1]], np.int64)
    z = norms.normalise(D, I, "zscore")
    sd = np.std([3.0, 2.0, 1.0, 0.0])
    np.testing.assert_allclose(z[0], np.array([3.0, 2.0, 1.0, 0.0]) / sd)  # the last listed hit is 0
    assert z[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # no spread: every hit 0, as a missing document
    b = norms.normalise(D, I, "dbsf")
    np.testing.assert_allclose(b[0], (np.array([3.0, 2.0, 1.0, 0.0]) - (1.5 - 3 * sd)) / (6 * sd))
    assert b[1].tolist() == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="how must be one of"):
        norms.normalise(D, I, "softmax")


@pytest.mark.parametrize("how", ["minmax", "dbsf", "zscore", "rrf"])
def test_a_query_with_no_hits_contributes_nothing(norms, how, recwarn):
    D = np.array([[2.0, 1.0], [-np.inf, -np.inf]], np.float32)
    I = np.array([[5, 6], [-1, -1]], np.int64)
    out = norms.normalise(D, I, how)
    assert out[1].tolist() == [0.0, 0.0]
    assert np.isfinite(out).all() and out[0, 0] > out[0, 1] >= 0.0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_choose_fusion_with_the_min_max_fuser_equals_the_kernel_choice(norms):
    # the same grid, tie rule and scores whether choose_fusion fuses with the kernel or with fusion_norms' Fuser
    from hylex.retrieval.fusion import choose_fusion

    top = _arms(3)

    def score(D, I):  # a deterministic score of a fused top list: how often doc 7 is in its top 3
        return float(np.mean([(I[q, :3] == 7).any() for q in range(I.shape[0])]) + 0.001 * I[:, 0].sum() % 1)

    fuse = norms.grid_fuse(top, "minmax")
    kernel_best, kernel_table = choose_fusion(top, score, k=5)
    best, table = choose_fusion(top, score, k=5, fuse=fuse)
    assert best == kernel_best
    assert len(table) == len(kernel_table) == 66
    assert {(tuple(r["arms"]), tuple(r["weights"])): r["score"] for r in table} == \
        {(tuple(r["arms"]), tuple(r["weights"])): r["score"] for r in kernel_table}
    assert set(fuse.fusers) == {("dense", "sparse"), ("dense", "bm25"), ("sparse", "bm25"), ("dense", "sparse", "bm25")}
