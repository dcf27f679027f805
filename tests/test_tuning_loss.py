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
    only_dense = ContrastiveLoss(sparse_weight=0)(q, qs, p, ps, 2)
    assert set(only_dense) == {"dense", "loss"}
    # a perfect dense match gives a lower loss than a random one
    aligned = ContrastiveLoss(sparse_weight=0)(p[::2], qs, p, ps, 2)["loss"]
    assert float(aligned) < float(only_dense["loss"])


@pytest.mark.parametrize("kw, needle", [({"temperature": 0}, "temperature"), ({"temperature": float("nan")},
                                        "temperature"), ({"dense_weight": -1}, "dense_weight"),
                                        ({"flops_q": float("inf")}, "flops_q"),
                                        ({"dense_weight": 0, "sparse_weight": 0}, "nothing would be trained")])
def test_bad_loss_settings(kw, needle):
    with pytest.raises(TrainingDataError, match=needle):
        ContrastiveLoss(**kw)
