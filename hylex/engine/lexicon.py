"""Which vocabulary entries a text may put weight on: the token ids of its own words, minus stopwords.

PromptReps keeps the next-token logits only on the tokens of the text's own words: the LLM ranks them by
importance while the index stays lexical (and small). Words are Unicode ``\\w+`` runs, lower-cased, so any
script the tokenizer handles works; each word is tokenized without a leading space, as it would follow the
prompt's opening quote.
"""
from __future__ import annotations

import re

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)

# The English stopword list of NLTK (179 words), plus single letters and digits that carry no meaning alone.
ENGLISH_STOPWORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
himself she she's her hers herself it it's its itself they them their theirs themselves what which who whom
this that that'll these those am is are was were be been being have has had having do does did doing a an the
and but if or because as until while of at by for with about against between into through during before after
above below to from up down in out on off over under again further then once here there when where why how all
any both each few more most other some such no nor not only own same so than too very s t can will just don
don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn
hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn
shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
""".split())

STOPWORD_LISTS = {"english": ENGLISH_STOPWORDS, "none": frozenset()}


def words(text: str, stopwords: frozenset[str] = ENGLISH_STOPWORDS) -> list[str]:
    """The distinct lower-cased words of ``text`` in order of first appearance, stopwords removed."""
    seen: dict[str, None] = {}
    for w in _WORD.findall(text.lower()):
        if w not in stopwords:
            seen.setdefault(w, None)
    return list(seen)


class WordTokenCache:
    """Maps words to the token ids they are written with, tokenizing each distinct word once."""

    def __init__(self, tokenizer, max_size: int = 2_000_000):
        self.tokenizer = tokenizer
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
            self._ids.update(zip(unseen, (tuple(e) for e in encoded)))
        out = []
        for ws in per_text:
            ids = [i for w in ws for i in self._ids[w]]
            out.append(np.unique(np.asarray(ids, dtype=np.int64)))
        return out
