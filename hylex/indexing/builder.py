"""Index a corpus file: validate it whole, encode in chunks (through the encoding cache), commit segments."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from hylex.corpus import Document, read_corpus
from hylex.errors import CorpusError, HylexError
from hylex.indexing.bm25 import bm25_settings
from hylex.indexing.dense import DEFAULT_FACTORY
from hylex.indexing.index import MANIFEST, Index, sparse_settings
from hylex.indexing.protocols import TextEncoder
from hylex.utils import bar_disabled

logger = logging.getLogger(__name__)


@dataclass
class BuildReport:
    documents: int = 0
    segments: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0
    tokens: int = 0
    cache_hits: int = 0
    truncated: int = 0  # documents cut to the encoder's max_length (only their beginning is encoded)
    index_dir: str = ""
    extra: dict = field(default_factory=dict)


def load_documents(corpus: str | os.PathLike) -> list[Document]:
    """Read and validate a whole corpus (so a bad line fails before anything is encoded or written)."""
    docs = list(read_corpus(corpus))
    seen: set[str] = set()
    for d in docs:
        if d.id in seen:
            raise CorpusError(f"{Path(corpus).name}: document id {d.id!r} appears more than once: ids must be "
                              f"unique")
        seen.add(d.id)
    return docs


def encoder_mismatch(info: dict, mine: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """What differs between an index's recorded encoder ``info`` and another encoder's description ``mine``
    (both as :meth:`Encoder.describe` gives them): one ``"key: index X, given Y"`` per difference. A setting left
    out of one of them counts as its neutral value (:data:`hylex.engine.settings.NEUTRAL_SETTINGS`)."""
    from hylex.engine.settings import NEUTRAL_SETTINGS

    diffs = []
    for key in ("model_id", "fingerprint", "dim", "vocab_size"):
        if key in info and key in mine and info[key] != mine[key] and key not in skip:
            diffs.append(f"{key}: index {info[key]!r}, given {mine[key]!r}")
    a, b = info.get("settings") or {}, mine.get("settings") or {}
    for key in sorted(set(a) | set(b)):
        if key in skip:
            continue
        va, vb = a.get(key, NEUTRAL_SETTINGS.get(key)), b.get(key, NEUTRAL_SETTINGS.get(key))
        if va != vb:
            diffs.append(f"{key}: index {va!r}, given {vb!r}")
    return diffs


def check_encoder_matches(index: Index, encoder: TextEncoder) -> None:
    diffs = encoder_mismatch(index.encoder_info, encoder.describe())
    if diffs:
        raise HylexError(f"index {index.path} was built with another encoder: {'; '.join(diffs[:4])}: use the "
                         f"index's model and settings (leave the options out), or index into a new directory")


EXISTING = ("error", "upsert", "resume")


def build_index(corpus: str | os.PathLike | list[Document], index_dir: str | os.PathLike, encoder: TextEncoder,
                *, dense_factory: str = DEFAULT_FACTORY, chunk_size: int = 256, segment_size: int = 100_000,
                bm25: dict | None = None, sparse: dict | None = None, merge: dict | None = None,
                existing: str = "error", progress: bool | None = None, on_commit=None) -> BuildReport:
    """Index ``corpus`` (a JSONL path or documents) into ``index_dir``, creating it or adding to it.

    Every document is validated, and ids checked against the index, before any encoding or writing. Each
    ``segment_size`` documents are committed as one batch (a segment), durable when committed; encodings go
    through the encoder's cache, so an interrupted run re-done costs only the commits. ``bm25`` sets a new
    index's BM25 arm (see :meth:`Index.create`); given for an existing index, it must equal the index's
    settings. ``sparse`` likewise sets how sparse postings are stored
    (:func:`hylex.indexing.index.sparse_settings`), ``merge`` a new index's merge policy.

    ``existing``: what to do with documents whose id is already in the index: ``error`` (refuse, before
    anything is written), ``upsert`` (replace them), ``resume`` (skip those stored with the same title, text
    and metadata, as after an interrupted run of the same corpus; a different one is an error).
    ``on_commit(done, total)`` is called after each durable commit.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    docs = corpus if isinstance(corpus, list) else load_documents(corpus)
    if not docs:
        raise CorpusError("the corpus has no documents: pass a file with at least one document")
    if chunk_size <= 0 or segment_size <= 0:
        raise HylexError("chunk_size and segment_size must be positive")
    if existing not in EXISTING:
        raise HylexError(f"existing must be one of {', '.join(EXISTING)}, got {existing!r}")
    bm25_cfg = bm25_settings(bm25) if bm25 is not None else None
    sparse_cfg = sparse_settings(sparse) if sparse is not None else None
    path = Path(index_dir)
    if path.exists() and not path.is_dir():
        raise HylexError(f"index path {path} is a file, not a directory: pass a new or an existing index directory")
    if (path / MANIFEST).exists():
        index = Index.open(path, writable=True)
        try:
            check_encoder_matches(index, encoder)
            if bm25_cfg is not None:
                mine = {key: index.manifest["bm25"][key] for key in bm25_cfg}
                if mine != bm25_cfg:
                    raise HylexError(f"index {path} has BM25 settings {mine}, not {bm25_cfg}: leave the BM25 "
                                     f"settings out to add to it, or index into a new directory")
            if sparse_cfg is not None:
                mine = {key: index.manifest["sparse"].get(key) for key in sparse_cfg}
                if mine != sparse_cfg:
                    raise HylexError(f"index {path} stores sparse postings with {mine}, not {sparse_cfg}: leave the "
                                     f"sparse settings out to add to it, or index into a new directory")
        except BaseException:
            index.close()  # release the writer lock and the store: the index stays usable
            raise
    else:
        index = Index.create(path, encoder.describe(), dense_factory, bm25=bm25, sparse=sparse, merge=merge)
    report = BuildReport(index_dir=str(path))
    quiet = encoder_progress = False
    try:
        rows = index.rows_of([d.id for d in docs])
        present = [(d, r) for d, r in zip(docs, rows) if r is not None]
        if present and existing == "error":
            raise HylexError(f"{len(present)} document id(s) are already in {path} (first: {present[0][0].id!r}): "
                             f"ids must be unique; --resume skips documents already indexed, --upsert replaces "
                             f"them, or index into a new directory")
        if present and existing == "resume":
            stored = index.documents([r for _, r in present])
            for (d, _), old in zip(present, stored):
                if (old["title"], old["text"], old["metadata"]) != (d.title, d.text, d.metadata):
                    raise HylexError(f"document {d.id!r} is already in {path} with other content: --resume only "
                                     f"skips documents indexed unchanged; use --upsert to replace them")
            done = {d.id for d, _ in present}
            docs = [d for d in docs if d.id not in done]
            report.extra["skipped"] = len(done)
        upsert = existing == "upsert"
        maxsim = encoder.describe().get("settings", {}).get("dense_agg") == "maxsim"
        if maxsim and not hasattr(encoder, "encode_documents_chunked"):
            raise HylexError("dense_agg 'maxsim' needs an encoder with encode_documents_chunked")
        # one bar for the whole step: the encoder's own bar is off meanwhile (nested bars leave blank lines)
        bar = tqdm(total=len(docs), desc="index", unit="doc", disable=bar_disabled(progress), delay=1.0)
        if hasattr(encoder, "progress"):
            quiet, encoder_progress, encoder.progress = True, encoder.progress, False
        for start in range(0, len(docs), segment_size):
            seg_docs = docs[start:start + segment_size]
            dense_parts, sparse_parts, owner_parts = [], [], []
            for c in range(0, len(seg_docs), chunk_size):
                chunk = seg_docs[c:c + chunk_size]
                te = time.perf_counter()
                if maxsim:  # every chunk vector is indexed; a document scores its best chunk
                    dense, owner, sparse = encoder.encode_documents_chunked([d.full_text for d in chunk])
                    owner_parts.append(np.asarray(owner, np.int64) + c)
                else:
                    dense, sparse = encoder.encode_documents([d.full_text for d in chunk])
                report.encode_seconds += time.perf_counter() - te
                stats = getattr(encoder, "stats", None)
                if stats is not None:
                    report.tokens += stats.tokens
                    report.cache_hits += stats.cache_hits
                    report.truncated += getattr(stats, "truncated", 0)
                dense_parts.append(np.asarray(dense, np.float32))
                sparse_parts.append(sp.csr_matrix(sparse, dtype=np.float32))
                bar.update(len(chunk))
            (index.upsert if upsert else index.add)(
                seg_docs, np.concatenate(dense_parts), sp.vstack(sparse_parts, format="csr"),
                np.concatenate(owner_parts) if maxsim else None)
            report.segments += 1
            report.documents += len(seg_docs)
            if on_commit is not None:
                on_commit(report.documents, len(docs))
        bar.close()
    finally:
        if quiet:
            encoder.progress = encoder_progress
        index.close()
    report.seconds = time.perf_counter() - t0
    return report
