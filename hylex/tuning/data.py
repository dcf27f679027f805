"""Training data for contrastive tuning: (query, positives, negatives) groups from BEIR qrels, pair files, or a bare
corpus; a dev split carved from the training queries; hard negatives mined with hylex's own BM25, or with a
hylex index's search (the model that built it: e.g. a first tuned model, for a second round).

Everything here is plain Python and NumPy (no torch, but for the model a mining index's search loads), validated
with one-line errors that name the file, the line and the fix.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hylex.corpus import Document, clean_text, iter_lines, load_beir, read_corpus
from hylex.errors import CorpusError, HylexError

logger = logging.getLogger(__name__)


class TrainingDataError(HylexError):
    """Training data that cannot be used, with what to fix."""


@dataclass(frozen=True)
class Group:
    """One training query with its passages.

    Attributes:
        query: the query text.
        pos: relevant passages (at least one).
        neg: passages known or mined to be non-relevant (may be empty: in-batch negatives still apply).
        source: where the group came from (a file stem, ``beir:<name>``, ``corpus:<method>``).
        qid: the query's id where the data has one (BEIR), else None.
        pos_ids: corpus ids of the positives (BEIR; also every judged id, so mining never returns one).
    """

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()
    source: str = ""
    qid: str | None = None
    pos_ids: frozenset = field(default_factory=frozenset)


@dataclass
class TrainingData:
    """Groups plus where they came from: ``sources`` counts groups per source, ``skipped`` the records left out
    and why (``{"no positive": 12, ...}``)."""

    groups: list[Group]
    sources: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.groups)

    def summary(self) -> dict:
        return {"groups": len(self.groups), "sources": dict(self.sources), "skipped": dict(self.skipped),
                "positives": sum(len(g.pos) for g in self.groups),
                "negatives": sum(len(g.neg) for g in self.groups)}


def _doc_text(d: Document) -> str:
    return f"{d.title}\n{d.text}".strip() if d.title else d.text


# -- sources -------------------------------------------------------------------------------------------------
def beir_groups(beir_dir: str | Path, split: str = "train", *, corpus: Sequence[Document] | None = None
                ) -> tuple[TrainingData, list[Document]]:
    """Groups from a BEIR folder's ``qrels/<split>.tsv``: each judged query with its relevant documents (grade > 0)
    as positives and its documents judged 0 as negatives. Returns the data and the corpus (read once).

    Raises:
        TrainingDataError: qrels naming documents the corpus lacks, or no query with a positive.
    """
    corpus_path, queries, qrels = load_beir(beir_dir, split)
    docs = list(corpus) if corpus is not None else list(read_corpus(corpus_path))
    by_id = {d.id: d for d in docs}
    unknown = sorted({did for judged in qrels.values() for did in judged if did not in by_id})
    if unknown:
        raise TrainingDataError(
            f"qrels/{split}.tsv of {beir_dir} names {len(unknown)} documents missing from corpus.jsonl (e.g. "
            f"{unknown[0]!r}): use the corpus that belongs to these qrels")
    name = Path(beir_dir).name
    groups, skipped = [], Counter()
    for qid, judged in qrels.items():
        pos = [did for did, rel in judged.items() if rel > 0]
        if not pos:
            skipped["no positive"] += 1
            continue
        neg = [did for did, rel in judged.items() if rel <= 0]
        groups.append(Group(query=queries[qid], pos=tuple(_doc_text(by_id[d]) for d in pos),
                            neg=tuple(_doc_text(by_id[d]) for d in neg), source=f"beir:{name}", qid=qid,
                            pos_ids=frozenset(judged)))
    if not groups:
        raise TrainingDataError(f"qrels/{split}.tsv of {beir_dir} has no query with a relevant document (grade > 0):"
                                f" pick a split with positive judgments")
    return TrainingData(groups, {f"beir:{name}": len(groups)}, dict(skipped)), docs


def _str_list(value, what: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TrainingDataError(f"{where}: \"{what}\" must be a list of strings: fix the record")
    return tuple(clean_text(v) for v in value if v.strip())


def _pair_lines(p: Path):
    """``(line number, text)`` of a pair file's non-blank lines: plain, gzip or zstd JSONL, read as hylex reads a
    corpus (a bad UTF-8 byte or a damaged stream is one error naming the line)."""
    try:
        yield from iter_lines(p)
    except CorpusError as e:
        raise TrainingDataError(str(e)) from None


def read_pairs(path: str | Path, *, source: str | None = None) -> TrainingData:
    """Groups from a JSONL pair file (gzip or zstd compressed too), one ``{"query": str, "pos": [str, ...], "neg":
    [str, ...]}`` per line (the format of ``shared/data/train``; ``neg`` optional, ``pos`` may be one string).
    Records with an empty ``pos`` (labelled non-matches) are skipped and counted.

    Raises:
        TrainingDataError: a missing file, a line that is not UTF-8 or not a JSON object, a missing or non-string
            ``query``, ``pos``/``neg`` that are not lists of strings, or a file with no usable record.
    """
    p = Path(path)
    if not p.is_file():
        raise TrainingDataError(f"pair file {p} does not exist: pass a JSONL file of "
                                f'{{"query", "pos": [...], "neg": [...]}} records')
    name = source or p.stem.removesuffix(".jsonl")
    groups, skipped = [], Counter()
    for lineno, line in _pair_lines(p):
        where = f"{p.name} line {lineno}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise TrainingDataError(f"{where}: not valid JSON ({e.msg}): fix or remove the line") from None
        except RecursionError:
            raise TrainingDataError(f"{where}: JSON nested too deeply to read: flatten the line") from None
        if not isinstance(obj, dict):
            raise TrainingDataError(f"{where}: expected a JSON object with \"query\" and \"pos\"")
        q = obj.get("query")
        if not isinstance(q, str) or not q.strip():
            raise TrainingDataError(f"{where}: \"query\" is missing or not a non-empty string: give every "
                                    f"record a query")
        if "pos" not in obj:
            raise TrainingDataError(f"{where}: no \"pos\" field: give the record its relevant passages "
                                    f"(an empty list marks a labelled non-match)")
        pos = _str_list(obj["pos"], "pos", where)
        neg = _str_list(obj.get("neg", []), "neg", where)
        if not pos:
            skipped["no positive"] += 1
            continue
        groups.append(Group(query=clean_text(q), pos=pos, neg=neg, source=name))
    if not groups:
        raise TrainingDataError(f"{p.name} has no record with a positive passage ({sum(skipped.values())} without): "
                                f"nothing to train on")
    return TrainingData(groups, {name: len(groups)}, dict(skipped))


def mix(parts: Sequence[TrainingData], *, caps: Sequence[int | None] | None = None,
        weights: Sequence[float] | None = None, total: int | None = None, seed: int = 0) -> TrainingData:
    """Several sources in one set: each capped at ``caps[i]`` groups, or sampled in proportion to ``weights``
    out of ``total`` groups (a source never gives more than it has). Sampling is seeded and without replacement.
    """
    if caps is not None and len(caps) != len(parts):
        raise TrainingDataError(f"{len(caps)} caps for {len(parts)} sources: give one per source")
    if weights is not None:
        if len(weights) != len(parts):
            raise TrainingDataError(f"{len(weights)} weights for {len(parts)} sources: give one per source")
        if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise TrainingDataError("source weights must be finite, >= 0, and not all 0")
        if total is None or total < 1:
            raise TrainingDataError("sampling sources by weight needs a total number of groups >= 1")
    rng = random.Random(seed)
    out, sources, skipped = [], Counter(), Counter()
    for i, part in enumerate(parts):
        want = len(part.groups)
        if caps is not None and caps[i] is not None:
            if caps[i] < 0:
                raise TrainingDataError(f"cap {caps[i]} for source {i} is negative: use 0 or more")
            want = min(want, int(caps[i]))
        if weights is not None:
            want = min(want, int(round(total * weights[i] / sum(weights))))
        chosen = part.groups if want >= len(part.groups) else rng.sample(part.groups, want)
        out.extend(chosen)
        for g in chosen:
            sources[g.source] += 1
        skipped.update(part.skipped)
    if not out:
        raise TrainingDataError("the mix holds no training group: raise the caps or weights")
    rng.shuffle(out)
    return TrainingData(out, dict(sources), dict(skipped))


def dev_split(data: TrainingData, dev: int | float = 0.1, *, seed: int = 0, max_dev: int = 500
              ) -> tuple[TrainingData, TrainingData]:
    """Carve a dev set out of the training queries (never from a test split): ``dev`` a fraction in (0, 1) or a
    number of queries, at most ``max_dev``. Groups with the same query text stay on one side.

    Returns:
        ``(train, dev)``.
    """
    queries = sorted({g.query for g in data.groups})
    if isinstance(dev, float) and 0 < dev < 1:
        n_dev = max(1, int(round(len(queries) * dev)))
    elif isinstance(dev, int) and not isinstance(dev, bool) and dev >= 1:
        n_dev = dev
    else:
        raise TrainingDataError(f"dev must be a fraction in (0, 1) or a number of queries >= 1, got {dev!r}")
    n_dev = min(n_dev, max_dev)
    if n_dev >= len(queries):
        raise TrainingDataError(f"a dev set of {n_dev} queries leaves none of the {len(queries)} for training: "
                                f"use a smaller dev set or more data")
    held = set(random.Random(seed).sample(queries, n_dev))
    train = [g for g in data.groups if g.query not in held]
    dev_groups = [g for g in data.groups if g.query in held]
    count = lambda gs: dict(Counter(g.source for g in gs))  # noqa: E731
    return TrainingData(train, count(train), dict(data.skipped)), TrainingData(dev_groups, count(dev_groups))


# -- pairs from a bare corpus ---------------------------------------------------------------------------------
CORPUS_METHODS = ("title", "crop", "lead", "auto")
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?]$")


def corpus_groups(corpus: str | Path | Sequence[Document], method: str = "auto", *, seed: int = 0,
                  min_words: int = 8, crop: tuple[float, float] = (0.1, 0.5), lead: tuple[int, int] = (4, 12),
                  limit: int | None = None) -> TrainingData:
    """Self-supervised groups from documents alone (no labels).

    ``title``: the title is the query, the body the positive (documents without a title are skipped).
    ``crop``: two independent random spans of one document (each 10-50% of its words, as in Contriever) are
    query and positive. ``lead``: the document's opening words are the query, the rest of its text the positive
    (the two do not overlap): the first sentence when it is ``lead[0]``-``lead[1]`` words long, else a random
    ``lead[0]``-``lead[1]`` words; query-length, like a title (collections such as Vaswani or news wires run
    the headline into the text). ``auto``: ``title`` where at least half the documents have a title, else
    ``lead`` (crops, the fallback until 2026-12-06, lowered the dense arm on real queries: benchmarks/README.md,
    "Crop pairs with the sparse temperature"). Documents under ``min_words`` words are skipped (for ``lead`` under
    ``lead[0] + lead[1]`` at least, so the positive keeps ``lead[0]`` words). Negatives come from
    :func:`mine_negatives` or in-batch.
    """
    if method not in CORPUS_METHODS:
        raise TrainingDataError(f"unknown pair construction {method!r}: choose one of {', '.join(CORPUS_METHODS)}")
    lo, hi = crop
    if not (0 < lo <= hi <= 1):
        raise TrainingDataError(f"crop fractions must satisfy 0 < low <= high <= 1, got {crop}")
    if not (1 <= lead[0] <= lead[1]):
        raise TrainingDataError(f"lead lengths must satisfy 1 <= low <= high words, got {lead}")
    docs = list(read_corpus(corpus)) if isinstance(corpus, (str, Path)) else list(corpus)
    if method == "auto":
        titled = sum(1 for d in docs if d.title.strip())
        method = "title" if titled * 2 >= len(docs) else "lead"
    min_words = max(min_words, lead[1] + lead[0]) if method == "lead" else min_words
    rng = random.Random(seed)
    groups, skipped = [], Counter()
    order = list(range(len(docs)))
    rng.shuffle(order)
    for i in order:
        d = docs[i]
        words = _WORD.findall(d.text)
        if len(words) < min_words:
            skipped["too short"] += 1
            continue
        if method == "title":
            if not d.title.strip():
                skipped["no title"] += 1
                continue
            q, p = d.title, d.text
        elif method == "lead":
            q, p = _lead(d.text, lead, rng)
        else:
            q, p = _crop(words, lo, hi, rng), _crop(words, lo, hi, rng)
        groups.append(Group(query=q, pos=(p,), source=f"corpus:{method}", qid=d.id, pos_ids=frozenset({d.id})))
        if limit is not None and len(groups) >= limit:
            break
    if not groups:
        raise TrainingDataError(f"no document yields a {method} pair ({dict(skipped)}): use another --pairs-from "
                                f"method or a corpus with longer texts")
    return TrainingData(groups, {f"corpus:{method}": len(groups)}, dict(skipped))


def _lead(text: str, bounds: tuple[int, int], rng: random.Random) -> tuple[str, str]:
    """(opening words, the rest of the text): the first sentence if it has ``bounds`` words, else a random
    number of words within ``bounds``. A word ending in . ! or ? ends a sentence. ``text`` has at least
    ``bounds[0] + bounds[1]`` words (the caller skips shorter ones)."""
    spans = [m.span() for m in _WORD.finditer(text)]
    lo, hi = bounds
    ends = [i + 1 for i in range(min(hi, len(spans))) if _SENTENCE_END.search(text[spans[i][0]:spans[i][1]])]
    n = ends[0] if ends and ends[0] >= lo else rng.randint(lo, hi)
    return text[:spans[n - 1][1]].strip(), text[spans[n][0]:].strip()


def _crop(words: list[str], lo: float, hi: float, rng: random.Random) -> str:
    n = len(words)
    size = max(1, int(round(n * rng.uniform(lo, hi))))
    start = rng.randrange(0, n - size + 1)
    return " ".join(words[start:start + size])


# -- hard negatives -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MiningWindow:
    """Which BM25 ranks negatives are drawn from: ranks ``skip + 1 .. depth`` (1-based), ``n`` of them per
    query, sampled (seeded) from the window. The top ``skip`` are left out: they are often unjudged positives."""

    skip: int = 3
    depth: int = 50
    n: int = 7

    def __post_init__(self) -> None:
        if self.skip < 0 or self.n < 1 or self.depth <= self.skip:
            raise TrainingDataError(f"mining window needs skip >= 0, n >= 1 and depth > skip, got skip {self.skip}, "
                                    f"depth {self.depth}, n {self.n}")


def mine_negatives(data: TrainingData, passages: Sequence[Document] | Sequence[str] | None = None, *,
                   window: MiningWindow = MiningWindow(), seed: int = 0, keep_given: bool = True,
                   analyzer=None) -> TrainingData:
    """Add BM25-mined hard negatives to every group.

    ``passages``: the corpus to mine from (documents, or texts); by default the pool of every passage in the
    data (positives and negatives of all groups). A mined passage is never a positive of its group: not one of
    its ``pos_ids`` (every judged document of a BEIR query), and not equal to one of its positive texts.
    ``keep_given``: keep the data's own negatives first (they are labelled), then mined ones up to ``window.n``.
    """
    from hylex.indexing.bm25 import Bm25Postings, bm25_search
    from hylex.text import Bm25Analyzer

    analyzer = analyzer or Bm25Analyzer()
    if passages is None:
        pool = sorted({t for g in data.groups for t in (*g.pos, *g.neg)})
        ids = [None] * len(pool)
    elif passages and isinstance(passages[0], Document):
        pool = [_doc_text(d) for d in passages]
        ids = [d.id for d in passages]
    else:
        pool = [str(t) for t in passages]
        ids = [None] * len(pool)
    if not pool:
        raise TrainingDataError("no passages to mine negatives from")
    postings = Bm25Postings.from_tokens(analyzer.analyze(pool))
    depth = min(window.depth, len(pool))
    _, rows = bm25_search([(0, postings)], analyzer.analyze([g.query for g in data.groups]), depth)
    ranked = [[(ids[r], pool[r]) for r in row if r >= 0] for row in rows]
    out, mined_total = _pick_negatives(data.groups, ranked, window, seed, keep_given)
    logger.info("mined %d BM25 negatives for %d groups (ranks %d-%d)", mined_total, len(out), window.skip + 1,
                window.depth)
    return TrainingData(out, dict(data.sources), dict(data.skipped))


MINE_MODES = ("hybrid", "dense", "sparse", "bm25")


def check_mining(index: str | os.PathLike | None, mode: str) -> None:
    """Refuse an unknown mining ``mode``, or an ``index`` (a path; None: BM25 mining) that is not a folder."""
    if mode not in MINE_MODES:
        raise TrainingDataError(f"mining mode {mode!r} is unknown: choose one of {', '.join(MINE_MODES)}")
    if index is not None and not Path(index).is_dir():
        raise TrainingDataError(f"mining index {index} is not a folder: build one over the corpus with "
                                f"`hylex index CORPUS --index {index} --model MODEL`, or leave --mine-index out "
                                f"(BM25)")


def mine_negatives_index(data: TrainingData, index, *, window: MiningWindow = MiningWindow(), seed: int = 0,
                         mode: str = "hybrid", keep_given: bool = True, encoder=None, batch: int = 256
                         ) -> TrainingData:
    """Add hard negatives mined with a hylex index's own search to every group.

    ``index``: an index folder (or open :class:`hylex.indexing.Index`) over the corpus the groups' positives come
    from; its queries are encoded with the model that built it (or ``encoder``, which must match it) -- e.g. a
    first tuned model's index, so that a second round trains on what that model still ranks too high. ``mode``:
    ``hybrid`` (the index's stored fusion, what a plain search runs) or one arm. The same rules as
    :func:`mine_negatives`: ranks ``window.skip + 1 .. window.depth``, never a judged positive (by document id) nor
    a passage equal to a positive text; passages are the stored documents as ``title\ntext``.
    """
    from hylex.indexing import Index
    from hylex.retrieval.searcher import Searcher

    opened = not isinstance(index, Index)
    check_mining(index if opened else None, mode)
    if opened:
        index = Index.open(index)
    try:
        if index.n_docs == 0:
            raise TrainingDataError("the mining index holds no documents: index the training corpus first")
        searcher = Searcher(index, encoder=encoder)
        queries = [g.query for g in data.groups]
        ranked: list[list[tuple[str | None, str]]] = []
        for i in range(0, len(queries), batch):  # search caps k at the index's size
            res = searcher.search(queries[i:i + batch], k=window.depth, mode=mode, with_documents=True)
            for docs in res.documents:
                ranked.append([(d["id"], _doc_text(Document(d["id"], d["text"], d.get("title") or "")))
                               for d in docs if d is not None])
        model_id = index.encoder_info.get("model_id")
    finally:
        if opened:
            index.close()
    out, mined_total = _pick_negatives(data.groups, ranked, window, seed, keep_given)
    logger.info("mined %d negatives with %s's %s search for %d groups (ranks %d-%d)", mined_total, model_id, mode,
                len(out), window.skip + 1, window.depth)
    return TrainingData(out, dict(data.sources), dict(data.skipped))


def _pick_negatives(groups: Sequence[Group], ranked: Sequence[Sequence[tuple[str | None, str]]],
                    window: MiningWindow, seed: int, keep_given: bool) -> tuple[list[Group], int]:
    """Per group, ``window.n`` (minus its given negatives) passages sampled (seeded, kept in rank order) from its
    ranked ``(doc id or None, text)`` list past ``window.skip``, none of them a positive."""
    rng = random.Random(seed)
    out = []
    mined_total = 0
    for g, hits in zip(groups, ranked):
        pos_text = set(g.pos)
        cand = [text for doc_id, text in hits[window.skip:window.depth]
                if text not in pos_text and (doc_id is None or doc_id not in g.pos_ids)]
        given = list(g.neg) if keep_given else []
        need = max(0, window.n - len(given))
        picked = sorted(rng.sample(range(len(cand)), min(need, len(cand))))  # keep rank order
        mined = [cand[r] for r in picked if cand[r] not in given]
        mined_total += len(mined)
        out.append(replace(g, neg=tuple(given + mined)))
    return out, mined_total


def iter_texts(groups: Iterable[Group]) -> Iterable[str]:
    for g in groups:
        yield g.query
        yield from g.pos
        yield from g.neg
