"""Encoder settings (no torch import: command lines and validators use them before a model loads)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from hylex.engine import prompts
from hylex.engine.lexicon import WORD_FORMS
from hylex.engine.models import DEFAULT_MODEL
from hylex.engine.settings import DENSE_AGGS, DTYPES, LONG_DOCS, POOLINGS
from hylex.errors import HylexError
from hylex.text import STOPWORD_LISTS

DEFAULT_CHUNK_OVERLAP = 64


@dataclass
class EncoderConfig:
    """Settings that change what the encoder outputs; recorded in every index manifest.

    Attributes:
        model: packaged model name, ``.gguf`` path, model folder or hub id.
        prompt: prompt family (``promptreps``).
        prompt: ``promptreps``, ``prompteol``, ``echo`` or ``none`` (see :mod:`hylex.engine.prompts`).
        pooling: dense pooling: ``last`` (the prompt's last token, as PromptReps), ``mean`` (mean over the text's
            tokens; for echo, its second copy), ``eos`` (an EOS token appended; sparse weights still come from the
            token before it), ``weighted_mean`` (position-weighted mean over the text's tokens, later ones
            weigh more, as SGPT).
        max_length: tokens per text including the prompt; longer texts are truncated.
        sparse_topk: vocabulary entries kept per text (0 keeps all of the text's own words).
        own_words: keep sparse weight only on the token ids of the text's own words (PromptReps); off keeps any
            alphanumeric vocabulary entry.
        word_forms: which spellings of a word count as its own tokens: ``bare`` (the word alone) or ``both``
            (also after a space: whole-word tokens of Llama-3 / Qwen-style tokenizers).
        expansion: with ``own_words``, also keep this many top vocabulary entries beyond the text's own words
            (alphanumeric tokens only): expansion terms.
        stopwords: stopword list removed from the own-word filter: a name (``english``, ``none``) or a list.
        long_docs: documents longer than ``max_length``: ``truncate``, or ``chunk`` into overlapping windows
            whose representations are aggregated (queries are always truncated).
        chunk_overlap: tokens shared by consecutive chunks.
        dense_agg: how chunk dense vectors make the document's: ``first`` (the first chunk), ``mean``
            (normalised mean) or ``maxsim`` (all chunk vectors are indexed; a document scores its best chunk).
            Sparse weights of chunks are always aggregated by the maximum per term.
        dtype: the transformer body's dtype: ``float32``, ``bfloat16``, ``bfloat16-rounded`` or ``auto``
            (bfloat16 on a GPU and on CPUs with AMX or AVX512-BF16, float32 elsewhere). ``bfloat16`` runs the
            matmuls in bfloat16 with each weight split into two bfloat16 terms (Llama/Qwen2 models on the native
            backend; others round): dense cosine to float32 >= 0.9999 on SciFact documents, 2.2-2.4x the
            float32 encoder's documents/s on this project's AVX512-BF16 CPU. ``bfloat16-rounded`` rounds the
            weights: ~1.4x faster again, cosine >= 0.9995. The LM head, the residual stream and the rotary
            frequencies stay in float32. Indexes record the resolved dtype.
    """

    model: str = DEFAULT_MODEL
    prompt: str = "promptreps"
    pooling: str = "last"
    max_length: int = 512
    sparse_topk: int = 256  # chosen on SciFact train (benchmarks/README.md): 256 beat 128 and 64
    own_words: bool = True
    word_forms: str = "bare"
    expansion: int = 0
    stopwords: str | list = "english"
    long_docs: str = "truncate"
    chunk_overlap: int | None = None  # None: 64, or max_length // 4 when that is smaller
    dense_agg: str = "first"
    dtype: str = "auto"

    def validate(self) -> None:
        if self.prompt not in prompts.PROMPTS:
            raise HylexError(f"prompt {self.prompt!r} is unknown: choose one of {', '.join(prompts.PROMPTS)}")
        if self.pooling not in POOLINGS:
            raise HylexError(f"pooling {self.pooling!r} is unknown: choose one of {', '.join(POOLINGS)}")
        if isinstance(self.stopwords, (list, tuple)):
            if not all(isinstance(w, str) for w in self.stopwords):
                raise HylexError("stopwords must be a list name or a list of strings")
            self.stopwords = sorted({w.lower() for w in self.stopwords})
        elif self.stopwords not in STOPWORD_LISTS:
            raise HylexError(f"stopword list {self.stopwords!r} is unknown: choose one of "
                             f"{', '.join(STOPWORD_LISTS)} or pass a list of words")
        if not isinstance(self.expansion, int) or self.expansion < 0:
            raise HylexError(f"expansion must be an integer >= 0, not {self.expansion!r}")
        if self.long_docs not in LONG_DOCS:
            raise HylexError(f"long_docs {self.long_docs!r} is unknown: choose one of {', '.join(LONG_DOCS)}")
        if self.dense_agg not in DENSE_AGGS:
            raise HylexError(f"dense_agg {self.dense_agg!r} is unknown: choose one of {', '.join(DENSE_AGGS)}")
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 64:
            raise HylexError(f"max_length must be an integer >= 64, not {self.max_length!r}")
        if self.chunk_overlap is None:  # the default follows max_length, so --max-length 128 alone is valid
            self.chunk_overlap = min(DEFAULT_CHUNK_OVERLAP, self.max_length // 4)
        if not isinstance(self.chunk_overlap, int) or not 0 <= self.chunk_overlap < self.max_length // 2:
            raise HylexError(f"chunk_overlap must be an integer in [0, max_length / 2), not {self.chunk_overlap!r}")
        if self.word_forms not in WORD_FORMS:
            raise HylexError(f"word_forms {self.word_forms!r} is unknown: choose one of "
                             f"{', '.join(WORD_FORMS)}")
        if not isinstance(self.own_words, bool):
            raise HylexError(f"own_words must be true or false, not {self.own_words!r}")
        if self.dtype not in DTYPES:
            raise HylexError(f"dtype {self.dtype!r} is unknown: choose one of {', '.join(DTYPES)}")
        if not isinstance(self.sparse_topk, int) or self.sparse_topk < 0:
            raise HylexError(f"sparse_topk must be an integer >= 0 (0 = keep all own words), not "
                             f"{self.sparse_topk!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
