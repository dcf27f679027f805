"""hylex: hybrid dense + sparse retrieval from one decoder LLM forward pass (PromptReps)."""
from __future__ import annotations

__version__ = "0.1.0"

from hylex.errors import HylexError  # noqa: E402

__all__ = ["HylexError", "__version__"]
