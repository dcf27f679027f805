"""LLM encoder: model loading, prompts, pooling, sparse projection, batching, encoding cache."""
from hylex.engine.encoder import Encoded, Encoder, EncoderConfig, PromptRepsModule
from hylex.engine.models import DEFAULT_MODEL, PACKAGED_MODELS, resolve_model

__all__ = ["DEFAULT_MODEL", "PACKAGED_MODELS", "Encoded", "Encoder", "EncoderConfig", "PromptRepsModule",
           "resolve_model"]
