"""LoRA adapters merged into plain weights (what a tuned model's folder holds; see :mod:`hylex.tuning`).

Merging is a few matrix products, so loading a tuned model needs neither peft nor a second forward path.
"""
from __future__ import annotations

import torch

from hylex.errors import ModelError


def lora_delta(a: torch.Tensor, b: torch.Tensor, rank: int, alpha: float) -> torch.Tensor:
    """The weight update of one LoRA pair, float32 (out, in): ``(alpha / rank) * B @ A`` with A (rank, in) and
    B (out, rank)."""
    return (b.float() @ a.float()) * (alpha / rank)


def merge_lora(lm: torch.nn.Module, adapter: dict[str, torch.Tensor], rank: int, alpha: float) -> int:
    """Add an adapter's deltas into ``lm``'s linear weights in place; keys are peft's saved names
    (``<layer>.lora_A.weight`` / ``<layer>.lora_B.weight``). Returns how many layers changed.

    Raises:
        ModelError: a key naming a layer ``lm`` does not have, or an A without its B (another base model's
            adapter).
    """
    modules = dict(lm.named_modules())
    n = 0
    for key in adapter:
        if not key.endswith(".lora_A.weight"):
            continue
        base = key[: -len(".lora_A.weight")]
        b_key = base + ".lora_B.weight"
        layer = modules.get(base)
        if layer is None or b_key not in adapter or not hasattr(layer, "weight"):
            raise ModelError(f"adapter tensor {key} has no matching layer or lora_B in this model: the adapter "
                             f"belongs to another base model")
        delta = lora_delta(adapter[key], adapter[b_key], rank, alpha)
        if tuple(delta.shape) != tuple(layer.weight.shape):
            raise ModelError(f"adapter layer {base} is {tuple(delta.shape)}, the model's {tuple(layer.weight.shape)}:"
                             f" the adapter belongs to another base model")
        with torch.no_grad():
            layer.weight += delta.to(layer.weight.dtype)
        n += 1
    return n
