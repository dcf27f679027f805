"""hylex.tuning.loss against a plain NumPy computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hylex.tuning.data import TrainingDataError
from hylex.tuning.loss import ContrastiveLoss, flops, info_nce


def _np_info_nce(scores: np.ndarray, group: int) -> float:
    s = scores - scores.max(1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(1, keepdims=True))
    return float(-np.mean([logp[i, i * group] for i in range(len(scores))]))


def test_info_nce_and_flops_match_numpy():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 12)).astype(np.float32)
    assert float(info_nce(torch.from_numpy(scores), 3)) == pytest.approx(_np_info_nce(scores, 3), rel=1e-5)
    w = np.abs(rng.normal(size=(5, 30))).astype(np.float32)
    assert float(flops(torch.from_numpy(w))) == pytest.approx(float(np.sum(np.mean(w, 0) ** 2)), rel=1e-5)


def test_contrastive_loss_parts():
    rng = np.random.default_rng(1)
    q = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(3, 8)).astype(np.float32)), dim=1)
    p = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(6, 8)).astype(np.float32)), dim=1)
    qs = torch.from_numpy(np.abs(rng.normal(size=(3, 20))).astype(np.float32))
    ps = torch.from_numpy(np.abs(rng.normal(size=(6, 20))).astype(np.float32))
    loss = ContrastiveLoss(temperature=0.05, dense_weight=0.5, sparse_weight=2.0, flops_q=0.1, flops_p=0.2)
    parts = loss(q, qs, p, ps, group_size=2)
    d = _np_info_nce((q @ p.T).numpy() / 0.05, 2)
    s = _np_info_nce((qs @ ps.T).numpy(), 2)
    assert float(parts["dense"]) == pytest.approx(d, rel=1e-5)
    assert float(parts["sparse"]) == pytest.approx(s, rel=1e-5)
    want = 0.5 * d + 2.0 * s + 0.1 * float(flops(qs)) + 0.2 * float(flops(ps))
    assert float(parts["loss"]) == pytest.approx(want, rel=1e-5)
    # the sparse temperature divides the sparse dot products only
    cooled = ContrastiveLoss(temperature=0.05, dense_weight=0.5, sparse_weight=2.0, sparse_temperature=10.0)
    cparts = cooled(q, qs, p, ps, group_size=2)
    assert float(cparts["sparse"]) == pytest.approx(_np_info_nce((qs @ ps.T).numpy() / 10.0, 2), rel=1e-5)
    assert float(cparts["dense"]) == pytest.approx(d, rel=1e-5)
    only_dense = ContrastiveLoss(sparse_weight=0)(q, qs, p, ps, 2)
    assert set(only_dense) == {"dense", "loss"}
    # a perfect dense match gives a lower loss than a random one
    aligned = ContrastiveLoss(sparse_weight=0)(p[::2], qs, p, ps, 2)["loss"]
    assert float(aligned) < float(only_dense["loss"])


@pytest.mark.parametrize("kw, needle", [({"temperature": 0}, "temperature"), ({"temperature": float("nan")},
                                        "temperature"), ({"dense_weight": -1}, "dense_weight"),
                                        ({"flops_q": float("inf")}, "flops_q"),
                                        ({"sparse_temperature": 0}, "sparse_temperature"),
                                        ({"sparse_temperature": float("inf")}, "sparse_temperature"),
                                        ({"dense_weight": 0, "sparse_weight": 0}, "nothing would be trained")])
def test_bad_loss_settings(kw, needle):
    with pytest.raises(TrainingDataError, match=needle):
        ContrastiveLoss(**kw)


def test_masked_columns_leave_the_softmax():
    """A query's other known positives in the batch (in-batch false negatives) are out of its InfoNCE: the loss
    equals the one computed with those columns deleted, and the target column is never masked."""
    rng = np.random.default_rng(3)
    scores = torch.tensor(rng.standard_normal((3, 6)), dtype=torch.float32)
    mask = torch.zeros((3, 6), dtype=torch.bool)
    mask[0, 2] = mask[0, 5] = mask[2, 1] = True
    got = float(info_nce(scores, 2, mask))
    want = []
    for i in range(3):
        keep = [c for c in range(6) if not mask[i, c]]
        row = scores[i, keep].numpy().astype(np.float64)
        want.append(np.log(np.exp(row).sum()) - float(scores[i, 2 * i]))
    assert got == pytest.approx(float(np.mean(want)), rel=1e-5)
    assert float(info_nce(scores, 2, None)) == pytest.approx(float(info_nce(scores, 2, torch.zeros_like(mask))))
    q_sparse, p_sparse = scores.abs(), torch.tensor(rng.random((6, 6)), dtype=torch.float32)
    parts = ContrastiveLoss(dense_weight=0.0)(scores[:, :4], q_sparse, torch.ones(6, 4), p_sparse, 2, mask)
    assert float(parts["sparse"]) == pytest.approx(float(info_nce(q_sparse @ p_sparse.T, 2, mask)))


def test_the_trainer_masks_known_positives_of_other_groups():
    from hylex.tuning.trainer import Trainer

    t = Trainer.__new__(Trainer)  # only the positives map matters here (no model)
    t._positives = {"qa": frozenset({"shared", "a1"}), "qb": frozenset({"shared", "b1"})}
    # query qa's target is "a1" (column 0), qb's is "shared" (column 2); qa's other positive "shared" at column 2
    mask = t.false_negatives(["qa", "qb"], ["a1", "neg", "shared", "a1"])
    assert mask.tolist() == [[False, False, True, True], [False, False, False, False]]
    assert t.false_negatives(["qa", "qb"], ["a1", "x", "b1", "y"]) is None


def test_a_sparse_temperature_removes_the_pull_to_all_zero_weights():
    """Scores tens of units apart, the positive not the strongest (NFCorpus's sparse arm at step 0): unscaled, the
    loss is far above ln(candidates), the loss of all-zero weights, so zeroing them is a decrease; divided by a
    temperature of 10 the same scores sit below it."""
    rng = np.random.default_rng(5)
    q = torch.from_numpy(np.abs(rng.normal(size=(4, 50))).astype(np.float32))
    p = torch.from_numpy(np.abs(rng.normal(size=(16, 50))).astype(np.float32))
    zero = ContrastiveLoss(dense_weight=0.0)(torch.ones(4, 2), q * 0, torch.ones(16, 2), p * 0, 4)["sparse"]
    assert float(zero) == pytest.approx(np.log(16), rel=1e-5)
    raw = ContrastiveLoss(dense_weight=0.0)(torch.ones(4, 2), q, torch.ones(16, 2), p, 4)["sparse"]
    cooled = ContrastiveLoss(dense_weight=0.0, sparse_temperature=10.0)(torch.ones(4, 2), q, torch.ones(16, 2), p,
                                                                        4)["sparse"]
    assert float(raw) > 2 * float(zero) and float(cooled) < 1.2 * float(zero)
