"""LLM encoder: model loading, prompts, pooling, sparse projection, batching, encoding cache.

The names are loaded on first use (PEP 562), so that ``hylex.engine.settings`` and other torch-free modules can
be imported by commands that never encode (``hylex stats``, ``hylex --version``) without importing torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Encoded": "hylex.engine.encoder", "Encoder": "hylex.engine.encoder", "EncoderConfig": "hylex.engine.encoder",
    "PromptRepsModule": "hylex.engine.encoder", "DEFAULT_MODEL": "hylex.engine.models",
    "PACKAGED_MODELS": "hylex.engine.models", "resolve_model": "hylex.engine.models",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from hylex.engine.encoder import Encoded, Encoder, EncoderConfig, PromptRepsModule
    from hylex.engine.models import DEFAULT_MODEL, PACKAGED_MODELS, resolve_model


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hylex.engine' has no attribute {name!r}")
