"""The choices of each encoder setting (no torch import, so command lines and validators can use them)."""
from __future__ import annotations

PROMPTS = ("promptreps", "prompteol", "echo", "none")
POOLINGS = ("last", "mean", "eos", "weighted_mean")
# bfloat16 splits each body weight into two bfloat16 terms (dense cosine to float32 >= 0.9999 on SciFact documents);
# bfloat16-rounded rounds them (~1.4x faster on this project's CPU, cosine >= 0.9995)
DTYPES = ("auto", "float32", "bfloat16", "bfloat16-rounded")
LONG_DOCS = ("truncate", "chunk")
DENSE_AGGS = ("first", "mean", "maxsim")

# Settings added after the first release of the encoder, with the value that reproduces the encodings made
# before they existed. A setting at that value is left out of ``Encoder.describe()`` (so manifests and cache
# keys written before it existed still match); any other value is recorded.
NEUTRAL_SETTINGS = {"own_words": True, "expansion": 0, "word_forms": "bare"}


def same_encoding(a: dict, b: dict) -> bool:
    """Whether two ``Encoder.describe()`` records (or an index manifest's ``encoder``) give the same encodings: the
    same weights (fingerprint) and settings. The model's name is left aside: the same weights may go by two (a tuned
    folder and the shipped copy of it)."""
    def settings(d: dict) -> dict:
        return {k: v for k, v in (d.get("settings") or {}).items() if k != "model"}

    return a.get("fingerprint") == b.get("fingerprint") and settings(a) == settings(b)
