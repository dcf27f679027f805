"""Which vocabulary entries a text may put weight on: the token ids of its own words, minus stopwords.

PromptReps keeps the next-token logits only on the tokens of the text's own words: the LLM ranks them by
importance while the index stays lexical (and small). Words are Unicode ``\\w+`` runs, lower-cased, so any
script the tokenizer handles works; each word is tokenized without a leading space, as it would follow the
prompt's opening quote.
"""
from __future__ import annotations

import re

import numpy as np

from hylex.text import ENGLISH_STOPWORDS, STOPWORD_LISTS  # noqa: F401  (re-exported)

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str, stopwords: frozenset[str] = ENGLISH_STOPWORDS) -> list[str]:
    """The distinct lower-cased words of ``text`` in order of first appearance, stopwords removed."""
    seen: dict[str, None] = {}
    for w in _WORD.findall(text.lower()):
        if w not in stopwords:
            seen.setdefault(w, None)
    return list(seen)


WORD_FORMS = ("bare", "both")


class WordTokenCache:
    """Maps words to the token ids they are written with, tokenizing each distinct word once.

    ``forms="bare"`` tokenizes a word alone (as it follows the prompt's opening quote); ``"both"`` adds the
    ids of the word after a space, which tokenizers of the Llama-3 / Qwen / GPT-2 family write as one whole-word
    token where the bare form splits into fragments.
    """

    def __init__(self, tokenizer, forms: str = "bare", max_size: int = 2_000_000):
        if forms not in WORD_FORMS:
            raise ValueError(f"word forms must be one of {', '.join(WORD_FORMS)}, not {forms!r}")
        self.tokenizer = tokenizer
        self.forms = forms
        self.max_size = max_size
        self._ids: dict[str, tuple[int, ...]] = {}

    def ids_for(self, texts: list[str], stopwords: frozenset[str]) -> list[np.ndarray]:
        """For each text, the sorted distinct token ids of its own words (int64 array, possibly empty)."""
        per_text = [words(t, stopwords) for t in texts]
        unseen = sorted({w for ws in per_text for w in ws if w not in self._ids})
        if unseen:
            if len(self._ids) + len(unseen) > self.max_size:
                self._ids.clear()
            encoded = self.tokenizer(unseen, add_special_tokens=False)["input_ids"]
            if self.forms == "both":
                spaced = self.tokenizer([" " + w for w in unseen], add_special_tokens=False)["input_ids"]
                encoded = [list(a) + list(b) for a, b in zip(encoded, spaced)]
            self._ids.update(zip(unseen, (tuple(e) for e in encoded)))
        out = []
        for ws in per_text:
            ids = [i for w in ws for i in self._ids[w]]
            out.append(np.unique(np.asarray(ids, dtype=np.int64)))
        return out
