"""Text analysis shared by the engine and the index: stopword lists, and the BM25 arm's analyzer.

The BM25 analyzer turns a text into the terms its postings are keyed by: Unicode ``\\w+`` runs, lower-cased,
stopwords removed, then Snowball-stemmed with PyStemmer. A term is stored as a stable 64-bit hash of its text
(:func:`term_hashes`), so segments need no shared vocabulary and adding documents never renumbers terms.
"""
from __future__ import annotations

import hashlib
import re
from typing import Iterable, Sequence

import numpy as np

from hylex.errors import HylexError

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


def term_hash(term: str) -> int:
    """The stable 64-bit id of a term: blake2b-64 of its UTF-8 bytes, little-endian (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest(), "little")


def term_hashes(terms: Iterable[str]) -> np.ndarray:
    """:func:`term_hash` of each term, uint64 (n,)."""
    return np.fromiter((term_hash(t) for t in terms), dtype=np.uint64)


def stemmer_names() -> list[str]:
    """The accepted ``stemmer`` settings: ``"none"`` and PyStemmer's Snowball algorithms."""
    import Stemmer

    return ["none", *sorted(Stemmer.algorithms())]


class Bm25Analyzer:
    """Texts to BM25 terms: ``\\w+`` words, lower-cased, stopwords removed, Snowball-stemmed.

    Args:
        stemmer: a PyStemmer algorithm (``"english"``, ``"porter"``, ``"german"``, ...) or ``"none"``.
        stopwords: ``"english"`` or ``"none"`` (a key of :data:`STOPWORD_LISTS`).
    """

    def __init__(self, stemmer: str = "english", stopwords: str = "english"):
        if not isinstance(stemmer, str) or stemmer not in stemmer_names():
            raise HylexError(f"BM25 stemmer {stemmer!r} is unknown: choose 'none' or a Snowball algorithm such as "
                             f"'english' or 'porter' (all: {', '.join(stemmer_names()[1:])})")
        if not isinstance(stopwords, str) or stopwords not in STOPWORD_LISTS:
            raise HylexError(f"BM25 stopwords {stopwords!r} are unknown: choose one of "
                             f"{', '.join(STOPWORD_LISTS)}")
        self.stemmer = stemmer
        self.stopwords = stopwords
        self._stop = STOPWORD_LISTS[stopwords]
        self._stem = None
        if stemmer != "none":
            import Stemmer

            self._stem = Stemmer.Stemmer(stemmer)

    def analyze(self, texts: Sequence[str]) -> list[list[str]]:
        """The terms of each text, in text order with repeats (a term's count is its frequency)."""
        words = [[w for w in _WORD.findall(t.lower()) if w not in self._stop] for t in texts]
        if self._stem is None:
            return words
        # stem each distinct word once, in one batch call
        distinct = list({w: None for ws in words for w in ws})
        stems = dict(zip(distinct, self._stem.stemWords(distinct)))
        return [[stems[w] for w in ws] for ws in words]

    def to_dict(self) -> dict:
        return {"stemmer": self.stemmer, "stopwords": self.stopwords}

    @classmethod
    def from_dict(cls, d: dict) -> "Bm25Analyzer":
        if not isinstance(d, dict):
            raise HylexError(f"a BM25 analyzer description must be a dict like {{'stemmer': 'english', "
                             f"'stopwords': 'english'}}, got {d!r}")
        unknown = set(d) - {"stemmer", "stopwords"}
        if unknown:
            raise HylexError(f"BM25 analyzer setting(s) {', '.join(sorted(unknown))} are unknown: use 'stemmer' "
                             f"and 'stopwords'")
        return cls(**d)

    def __eq__(self, other) -> bool:
        return isinstance(other, Bm25Analyzer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.stemmer, self.stopwords))

    def __repr__(self) -> str:
        return f"Bm25Analyzer(stemmer={self.stemmer!r}, stopwords={self.stopwords!r})"
