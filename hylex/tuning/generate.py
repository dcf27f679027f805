"""Pseudo-queries written by an instruct LLM for a bare corpus (``hylex tune --from-corpus C --pairs-from generate``).

The construction of InPars / Promptagator / doc2query, sized to a CPU: an instruct model (by default the registry's
Qwen2.5-Coder-0.5B-Instruct; any packaged or local causal LM with a chat template) reads a document and writes one
question it answers; the question is the training query, the whole document its positive. Greedy decoding, so a
run is reproducible. Generation is the slow part (~0.5 s per document on this project's 2 CPU cores in bfloat16,
batches of 16), so only the documents a run needs are sent, and every written query is appended to a cache file as
its batch finishes: an interrupted or repeated run reuses them (the cache is keyed by the generator's fingerprint
and the prompt).

A query that shares no content word with its document (``"What is the main idea of the document?"``) is dropped
and counted (``skipped["generic query"]``): it says nothing the document could be found by.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

from hylex.corpus import Document
from hylex.tuning.data import Group, TrainingData, TrainingDataError, _doc_text

logger = logging.getLogger(__name__)

DEFAULT_GENERATOR = "qwen2.5-0.5b"
# Chosen by reading its output on 12 NFCorpus and 12 Vaswani documents (no queries or qrels) against a "search query"
# wording, which mostly copied the document's opening words (what --pairs-from lead already builds).
GENERATE_PROMPT = ("Document:\n{text}\n\nWhat question does this document answer? Reply with one short question "
                   "only.")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an and are as at be by can de do does for from has have how in is it its of on or that the "
                  "their there these this to was were what when where which who why will with document study "
                  "paper article main focus findings finding purpose idea".split())


class QueryGenerator:
    """An instruct causal LM that writes one query per document.

    Args:
        model: a packaged model name, a ``.gguf`` file or a Hugging Face folder (not a tuned adapter).
        words: document words shown to the model (the opening ones; longer texts are cut).
        max_new_tokens: most tokens of a query.
        batch: documents per ``generate`` call.
        dtype: ``auto`` (bfloat16 where the hardware runs it natively, as the encoder), ``bfloat16`` or ``float32``.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    def __init__(self, model: str = DEFAULT_GENERATOR, *, words: int = 200, max_new_tokens: int = 32,
                 batch: int = 16, dtype: str = "auto", device: str = "auto", prompt: str = GENERATE_PROMPT):
        import torch
        from transformers import AutoTokenizer

        from hylex.engine.encoder import resolve_device, resolve_dtype
        from hylex.engine.models import resolve_model

        for name, v in (("words", words), ("max_new_tokens", max_new_tokens), ("batch", batch)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TrainingDataError(f"query generator {name} must be a positive integer, got {v!r}")
        if dtype not in ("auto", "bfloat16", "float32"):
            raise TrainingDataError(f"query generator dtype must be auto, bfloat16 or float32, got {dtype!r}")
        if "{text}" not in prompt:
            raise TrainingDataError("the query generator's prompt must contain {text}, where the document goes")
        resolved = resolve_model(model)
        if resolved.adapters:
            raise TrainingDataError(f"{model!r} is a tuned encoder (a LoRA adapter), not a text generator: pass an "
                                    f"instruct model such as {DEFAULT_GENERATOR}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise TrainingDataError(f"{model!r} has no chat template: the query generator needs an instruct model "
                                    f"such as {DEFAULT_GENERATOR}")
        self.tokenizer.padding_side = "left"  # generation continues every row from its own last token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = None  # loaded by the first call: a resumed run whose cache holds every query loads no model
        self.path, self.model, self.fingerprint = resolved.path, str(model), resolved.fingerprint
        self.words, self.max_new_tokens, self.batch, self.prompt = words, max_new_tokens, batch, prompt
        self.key = hashlib.sha256(f"{self.fingerprint}\x00{prompt}\x00{words}\x00{max_new_tokens}".encode()
                                  ).hexdigest()[:16]

    def render(self, text: str) -> str:
        text = " ".join(text.split()[:self.words])
        return self.tokenizer.apply_chat_template([{"role": "user", "content": self.prompt.format(text=text)}],
                                                  tokenize=False, add_generation_prompt=True)

    def __call__(self, texts: Sequence[str]) -> list[str]:
        """One cleaned query per text (``""`` where the model wrote nothing usable)."""
        import torch

        from hylex.engine.models import load_causal_lm

        if self.lm is None:
            self.lm = load_causal_lm(self.path).to(self.device, getattr(torch, self.dtype))
        enc = self.tokenizer([self.render(t) for t in texts], return_tensors="pt", padding=True,
                             add_special_tokens=False).to(self.device)
        with torch.no_grad():
            out = self.lm.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                   pad_token_id=self.tokenizer.pad_token_id)
        n = enc["input_ids"].shape[1]
        return [clean_query(self.tokenizer.decode(row[n:], skip_special_tokens=True)) for row in out]


def clean_query(raw: str) -> str:
    """The model's reply as a query: its first non-empty line, without a ``Query:``-style label or quotes."""
    line = next((s.strip() for s in raw.splitlines() if s.strip()), "")
    line = re.sub(r"^(question|query|search query)\s*:\s*", "", line, flags=re.I)
    return line.strip().strip("\"'“”").strip()


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def _read_cache(path: Path, key: str) -> dict[str, str]:
    found: dict[str, str] = {}
    if not path.is_file():
        return found
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a kill mid-write: regenerated
                continue
            if isinstance(rec, dict) and rec.get("key") == key and isinstance(rec.get("query"), str):
                found[str(rec["id"])] = rec["query"]
    return found


def generated_groups(docs: Sequence[Document], generator: QueryGenerator, *, limit: int, seed: int = 0,
                     min_words: int = 8, cache: str | os.PathLike | None = None,
                     progress: bool | None = None) -> TrainingData:
    """Groups whose queries ``generator`` wrote for ``limit`` documents (a seeded random sample of those with at
    least ``min_words`` words), each document its query's positive.

    ``cache``: a JSONL file of written queries, read first (the lines of this generator and prompt, ``generator.key``)
    and appended to after every batch. Raises :class:`TrainingDataError` when no usable query results.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise TrainingDataError(f"the number of documents to generate queries for must be >= 1, got {limit!r}")
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    skipped: Counter = Counter()
    chosen: list[Document] = []
    for i in order:
        if len(docs[i].text.split()) < min_words:
            skipped["too short"] += 1
            continue
        chosen.append(docs[i])
        if len(chosen) >= limit:
            break
    path = Path(cache) if cache is not None else None
    key = generator.key
    written = _read_cache(path, key) if path is not None else {}
    todo = [d for d in chosen if d.id not in written]
    if todo:
        logger.info("writing queries for %d documents with %s (%d cached)", len(todo), generator.model, len(written))
        # similar lengths together: less padding in each generate call
        todo.sort(key=lambda d: len(_doc_text(d)))
        from tqdm.auto import tqdm

        from hylex.utils import bar_disabled

        bar = tqdm(total=len(todo), desc="generating queries", unit="doc", disable=bar_disabled(progress))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_file() and path.stat().st_size:
                with open(path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    cut = f.read(1) != b"\n"
                if cut:  # a line cut by a kill mid-write: appended lines start on their own
                    with open(path, "a", encoding="utf-8") as f:
                        f.write("\n")
        for s in range(0, len(todo), generator.batch):
            part = todo[s:s + generator.batch]
            queries = generator([_doc_text(d) for d in part])
            for d, q in zip(part, queries):
                written[d.id] = q
            if path is not None:
                with open(path, "a", encoding="utf-8") as f:
                    f.write("".join(json.dumps({"id": d.id, "query": q, "key": key}) + "\n"
                                    for d, q in zip(part, queries)))
            bar.update(len(part))
        bar.close()
    groups = []
    for d in chosen:
        q = written[d.id]
        text = _doc_text(d)
        if not q:
            skipped["empty query"] += 1
        elif not content_words(q) & content_words(text):
            skipped["generic query"] += 1
        else:
            groups.append(Group(query=q, pos=(text,), source="corpus:generate", qid=d.id, pos_ids=frozenset({d.id})))
    if not groups:
        raise TrainingDataError(f"the generator wrote no usable query for {len(chosen)} documents ({dict(skipped)}): "
                                f"use an instruct model (--generator) or another --pairs-from construction")
    return TrainingData(groups, {"corpus:generate": len(groups)}, dict(skipped))
