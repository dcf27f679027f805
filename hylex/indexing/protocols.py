"""The small encoder interface through which indexing and retrieval use the engine.

Anything with these members works (``hylex.engine.Encoder`` is one; tests use pre-computed vectors), so the
layers below the engine never import torch.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable


@runtime_checkable
class TextEncoder(Protocol):
    dim: int
    vocab_size: int

    def describe(self) -> dict:
        """``{"model_id", "fingerprint", "dim", "vocab_size", "settings"}``: recorded in index manifests."""

    def encode_queries(self, texts: Sequence[str]) -> Any:
        """``(dense float32 (n, dim), sparse float32 csr (n, vocab_size))``."""

    def encode_documents(self, texts: Sequence[str]) -> Any:
        """Same shapes as :meth:`encode_queries`, with the document prompt."""
