"""The choices of each encoder setting (no torch import, so command lines and validators can use them)."""
from __future__ import annotations

PROMPTS = ("promptreps", "prompteol", "echo", "none")
POOLINGS = ("last", "mean", "eos", "weighted_mean")
DTYPES = ("auto", "float32", "bfloat16")
LONG_DOCS = ("truncate", "chunk")
DENSE_AGGS = ("first", "mean", "maxsim")
