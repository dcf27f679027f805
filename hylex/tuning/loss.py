"""Contrastive losses over one batch of groups (PromptReps' joint objective, arXiv 2404.18424, sect. 3.3).

A batch holds Q queries and Q groups of P passages each (the positive first, then its hard negatives), flattened to
Q * P passage rows. Each query is scored against every passage of the batch (its own group and the others':
in-batch negatives) and InfoNCE pulls its positive up:

- dense: cosine / ``temperature`` (the representations are L2-normalised; PromptReps uses 0.01);
- sparse: the dot product of the sparse weights / ``sparse_temperature`` (1 = unscaled, as PromptReps). The raw
  dot products span tens of units, so where the judged positive is often not the lexically strongest candidate
  (NFCorpus) the unscaled loss starts far above ln(candidates), the loss of all-equal scores, and zeroing every
  weight is an easy decrease (the sparse arm collapses, benchmarks/README.md); a temperature > 1 removes that pull;
- optional FLOPS regularisation (Paria et al. 2020), ``sum_v mean_b(|w_bv|)^2``, on queries and passages: it
  keeps expansion terms sparse; it is off by default since own-word weights are sparse by construction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def info_nce(scores: torch.Tensor, group_size: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean InfoNCE of ``scores`` float (Q, Q * group_size) where query i's positive is column ``i * group_size``;
    ``mask`` bool (Q, Q * group_size): columns left out of query i's softmax (its other known positives: in-batch
    false negatives), never its own target."""
    target = torch.arange(scores.shape[0], device=scores.device) * group_size
    scores = scores.float()
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return F.cross_entropy(scores, target)


def flops(weights: torch.Tensor) -> torch.Tensor:
    """FLOPS regulariser of sparse weights float (B, V): ``sum_v (mean_b |w_bv|)^2``."""
    return torch.sum(torch.mean(torch.abs(weights), dim=0) ** 2)


@dataclass
class ContrastiveLoss:
    """``dense_weight * InfoNCE(dense / temperature) + sparse_weight * InfoNCE(sparse / sparse_temperature) +
    flops_q * FLOPS(q) + flops_p * FLOPS(p)``; a weight of 0 leaves its part out (and its arm untrained)."""

    temperature: float = 0.01
    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    flops_q: float = 0.0
    flops_p: float = 0.0
    sparse_temperature: float = 1.0

    def __post_init__(self) -> None:
        from hylex.tuning.data import TrainingDataError

        for name in ("temperature", "sparse_temperature"):
            v = getattr(self, name)
            if not (v > 0 and v < float("inf")):
                raise TrainingDataError(f"{name} must be a finite number > 0, got {v}")
        for name in ("dense_weight", "sparse_weight", "flops_q", "flops_p"):
            v = getattr(self, name)
            if not (v >= 0 and v < float("inf")):
                raise TrainingDataError(f"{name} must be a finite number >= 0, got {v}")
        if self.dense_weight == 0 and self.sparse_weight == 0:
            raise TrainingDataError("dense_weight and sparse_weight are both 0: nothing would be trained")

    def __call__(self, q_dense: torch.Tensor, q_sparse: torch.Tensor, p_dense: torch.Tensor,
                 p_sparse: torch.Tensor, group_size: int, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Queries (Q, H) / (Q, V), passages (Q * group_size, H) / (Q * group_size, V); ``mask`` bool
        (Q, Q * group_size) as :func:`info_nce`. Returns the parts and their weighted sum under ``"loss"``
        (scalars)."""
        if p_dense.shape[0] != q_dense.shape[0] * group_size:
            raise ValueError(f"{p_dense.shape[0]} passages for {q_dense.shape[0]} queries x group {group_size}")
        parts: dict[str, torch.Tensor] = {}
        total = q_dense.new_zeros((), dtype=torch.float32)
        if self.dense_weight:
            parts["dense"] = info_nce(q_dense @ p_dense.T / self.temperature, group_size, mask)
            total = total + self.dense_weight * parts["dense"]
        if self.sparse_weight:
            parts["sparse"] = info_nce(q_sparse @ p_sparse.T / self.sparse_temperature, group_size, mask)
            total = total + self.sparse_weight * parts["sparse"]
        if self.flops_q:
            parts["flops_q"] = flops(q_sparse)
            total = total + self.flops_q * parts["flops_q"]
        if self.flops_p:
            parts["flops_p"] = flops(p_sparse)
            total = total + self.flops_p * parts["flops_p"]
        parts["loss"] = total
        return parts
