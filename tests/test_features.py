"""Encoder.features (what training differentiates) computes what Encoder.encode returns: one implementation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hylex.engine import Encoder

TEXTS = ["A volcano erupts when molten magma rises through the crust.", "parse a JSON string into Python objects",
         "?!? ---", "Stock markets fell sharply on Monday as bond yields rose. " * 40]


def _check(enc: Encoder, kind: str, max_text_tokens: int | None = None, ref: Encoder | None = None):
    with torch.no_grad():
        dense, sparse = enc.features(TEXTS, kind, max_text_tokens=max_text_tokens)
    out = (ref or enc).encode(TEXTS, kind)
    np.testing.assert_allclose(dense.numpy(), out.dense, atol=2e-5)
    k = enc.config.sparse_topk
    for r in range(len(TEXTS)):
        row = out.sparse[r]
        w = sparse[r].numpy()
        top = np.sort(np.argsort(-w, kind="stable")[:k][w[np.argsort(-w, kind="stable")[:k]] > 0])
        # encode() keeps the sparse_topk largest of features()' weights (ties at the cut aside)
        assert len(set(top) ^ set(row.indices)) <= 2, r
        np.testing.assert_allclose(w[row.indices], row.data, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["query", "passage"])
def test_features_equal_encode(kind):
    _check(Encoder(progress=False, encoding_cache=False, dtype="float32"), kind)


def test_features_equal_encode_with_other_settings():
    enc = Encoder(progress=False, encoding_cache=False, dtype="float32", pooling="mean", expansion=8, sparse_topk=32)
    _check(enc, "passage")


def test_features_with_a_training_length_equal_a_shorter_encoder():
    enc = Encoder(progress=False, encoding_cache=False, dtype="float32")
    overhead = enc._layouts["passage"].overhead
    short = Encoder(progress=False, encoding_cache=False, dtype="float32", max_length=overhead + 40)
    _check(enc, "passage", max_text_tokens=40, ref=short)
    assert enc.config.max_length == 512  # restored
    with pytest.raises(Exception, match="max_text_tokens must be a positive integer"):
        enc.features(TEXTS, "passage", max_text_tokens=0)


def test_features_are_differentiable():
    enc = Encoder(progress=False, encoding_cache=False, dtype="float32")
    layer = enc.lm.model.layers[0].self_attn.q_proj.weight
    layer.requires_grad_(True)
    try:
        dense, sparse = enc.features(TEXTS[:2], "query")
        (dense.sum() + sparse.sum()).backward()
        assert layer.grad is not None and torch.isfinite(layer.grad).all() and layer.grad.abs().sum() > 0
    finally:
        layer.requires_grad_(False)
        layer.grad = None
