"""Index a corpus, streaming: read, check and encode it in chunks (through the encoding cache), commit segments."""
from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from hylex.corpus import CorpusReader, Document
from hylex.errors import CorpusError, HylexError, StorageError, StorageFullError
from hylex.indexing.bm25 import bm25_settings
from hylex.indexing.dense import DEFAULT_FACTORY
from hylex.indexing.index import MANIFEST, Index, merge_settings, sparse_settings
from hylex.indexing.store import doc_json
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


def build_index(corpus: str | os.PathLike | CorpusReader | Iterable[Document], index_dir: str | os.PathLike,
                encoder: TextEncoder, *, dense_factory: str = DEFAULT_FACTORY, chunk_size: int = 256,
                segment_size: int = 100_000, bm25: dict | None = None, sparse: dict | None = None,
                merge: dict | None = None, existing: str = "error", progress: bool | None = None, on_commit=None,
                rejects: list | None = None, wait: float = 0.0) -> BuildReport:
    """Index ``corpus`` into ``index_dir``, creating it or adding to it, streaming: documents are read, checked,
    encoded and committed ``segment_size`` at a time, so memory is bounded by a segment, not by the corpus.

    ``corpus``: a corpus file (JSONL, gzip or zstd JSONL, Parquet: :class:`hylex.corpus.CorpusReader`), a reader,
    or an iterable of :class:`Document`. Each ``segment_size`` documents are committed as one batch (a segment),
    durable when committed; encodings go through the encoder's cache, so an interrupted run re-done with
    ``existing="resume"`` costs only the documents after the last commit. A new index directory that a run fails
    to commit anything into is removed again: it leaves nothing behind. A malformed line, or an id met twice in the
    corpus, stops the run with a :class:`CorpusError` naming it (what was committed before stays, and the message
    says how to continue), unless ``rejects`` is a list: then it is appended there as ``{"line", "error", "raw"}``
    and skipped. Documents with neither text nor title are indexed (no sparse or BM25 terms; the dense vector of
    the prompt around an empty text) and counted in ``report.extra["empty"]``.

    ``bm25`` sets a new index's BM25 arm (see :meth:`Index.create`); given for an existing index, it must equal
    the index's settings. ``sparse`` likewise sets how sparse postings are stored
    (:func:`hylex.indexing.index.sparse_settings`), ``merge`` a new index's merge policy.

    ``existing``: what to do with documents whose id was in the index before this run: ``error`` (refuse),
    ``upsert`` (replace them), ``resume`` (skip those stored with the same title, text and metadata, as after an
    interrupted run of the same corpus; a different one is an error). ``on_commit(done, total)`` is called after
    each durable commit (``total`` is None when the corpus is a stream of unknown length). ``wait``: seconds to
    wait for another writer of an existing index (``hylex serve`` commits) before
    :class:`~hylex.errors.IndexLockedError`.

    A commit that fails for a full disk (or another write error) raises
    :class:`~hylex.errors.StorageFullError` (:class:`~hylex.errors.StorageError`): what was committed before stays,
    the message says to free space and go on with ``existing="resume"`` (``--resume``).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0 or \
            isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size <= 0:
        raise HylexError(f"chunk_size and segment_size must be positive integers, got {chunk_size!r} and "
                         f"{segment_size!r}")
    if existing not in EXISTING:
        raise HylexError(f"existing must be one of {', '.join(EXISTING)}, got {existing!r}")
    bm25_cfg = bm25_settings(bm25) if bm25 is not None else None
    sparse_cfg = sparse_settings(sparse) if sparse is not None else None
    if merge is not None:
        merge_settings(merge)
    path = Path(index_dir)
    if path.exists() and not path.is_dir():
        raise HylexError(f"index path {path} is a file, not a directory: pass a new or an existing index directory")
    reader = CorpusReader(corpus, rejects=rejects) if isinstance(corpus, (str, os.PathLike)) else \
        corpus if isinstance(corpus, CorpusReader) else None
    if reader is not None:
        items: Iterator[tuple[int, Document]] = reader.numbered()
        total = None
    else:
        if corpus is None or isinstance(corpus, (bytes, dict)):
            raise HylexError(f"corpus must be a file path or documents, got {type(corpus).__name__}")
        total = len(corpus) if isinstance(corpus, Sized) else None
        items = enumerate(corpus, start=1)
    created = None  # a new index: removed again if the run fails before its first commit
    if (path / MANIFEST).exists():
        index = _open_existing(path, encoder, bm25_cfg, sparse_cfg, wait)
    else:
        created = "dir" if path.exists() else "path"
        index = Index.create(path, encoder.describe(), dense_factory, bm25=bm25, sparse=sparse, merge=merge)
    report = BuildReport(index_dir=str(path))
    quiet = encoder_progress = False
    maxsim = encoder.describe().get("settings", {}).get("dense_agg") == "maxsim"
    if maxsim and not hasattr(encoder, "encode_documents_chunked"):
        raise HylexError("dense_agg 'maxsim' needs an encoder with encode_documents_chunked")
    upsert = existing == "upsert"
    run_start = int(index.manifest["next_row"])  # rows from here on are this run's
    pending = _Pending()
    skipped = empty = 0
    where = "line" if reader is not None else "document"
    if reader is not None:
        bar = tqdm(total=reader.total, desc="index", unit=reader.unit, unit_scale=reader.unit == "B",
                   unit_divisor=1024 if reader.unit == "B" else 1000, disable=bar_disabled(progress), delay=1.0)
    else:
        bar = tqdm(total=total, desc="index", unit="doc", disable=bar_disabled(progress), delay=1.0)

    def reject_or_raise(lineno: int, doc: Document, error: str) -> None:
        if rejects is None:
            raise CorpusError(f"{_name(corpus)} {where} {lineno}: {error}")
        rejects.append({"line": lineno, "error": error, "raw": doc_json(doc).decode("utf-8")})

    def commit() -> None:
        dense, owner, sparse_m = pending.arrays(maxsim)
        (index.upsert if upsert else index.add)(pending.docs, dense, sparse_m, owner)
        report.segments += 1
        report.documents += len(pending.docs)
        pending.clear()
        if on_commit is not None:
            on_commit(report.documents, None if total is None else total - skipped)

    try:
        # one bar for the whole step: the encoder's own bar is off meanwhile (nested bars leave blank lines)
        if hasattr(encoder, "progress"):
            quiet, encoder_progress, encoder.progress = True, encoder.progress, False
        seen = 0
        while True:
            chunk = list(itertools.islice(items, min(chunk_size, segment_size - len(pending.docs))))
            if not chunk:
                break
            seen += len(chunk)
            for lineno, d in chunk:
                if not isinstance(d, Document):
                    raise HylexError(f"document {lineno} is a {type(d).__name__}, not a hylex.corpus.Document: build "
                                     f"documents with Document(id, text, title, metadata)")
            rows = index.rows_of([d.id for _, d in chunk])
            keep, earlier = [], []
            for (lineno, d), row in zip(chunk, rows):
                if d.id in pending.ids or (row is not None and row >= run_start):
                    reject_or_raise(lineno, d, f"document id {d.id!r} appears earlier in the corpus: ids must be "
                                               f"unique")
                    continue
                if row is not None and existing == "error":
                    raise HylexError(f"document id {d.id!r} ({where} {lineno}) is already in {path}: ids must be "
                                     f"unique; --resume skips documents already indexed, --upsert replaces them, "
                                     f"or index into a new directory")
                if row is not None and existing == "resume":
                    earlier.append((lineno, d, row))
                    continue
                pending.ids.add(d.id)
                keep.append(d)
            if earlier:
                for (lineno, d, _), old in zip(earlier, index.documents([r for _, _, r in earlier])):
                    if (old["title"], old["text"], old["metadata"]) != (d.title, d.text, d.metadata):
                        raise HylexError(f"document {d.id!r} ({where} {lineno}) is already in {path} with other "
                                         f"content: --resume only skips documents indexed unchanged; use --upsert "
                                         f"to replace them")
                skipped += len(earlier)
            if keep:
                te = time.perf_counter()
                texts = [d.full_text for d in keep]
                if maxsim:  # every chunk vector is indexed; a document scores its best chunk
                    dense, owner, sparse_m = encoder.encode_documents_chunked(texts)
                else:
                    (dense, sparse_m), owner = encoder.encode_documents(texts), None
                report.encode_seconds += time.perf_counter() - te
                stats = getattr(encoder, "stats", None)
                if stats is not None:
                    report.tokens += stats.tokens
                    report.cache_hits += stats.cache_hits
                    report.truncated += getattr(stats, "truncated", 0)
                empty += sum(1 for t in texts if not t)
                pending.add(keep, dense, sparse_m, owner)
            if reader is not None:
                bar.update(reader.position - bar.n)
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"{seen:,} docs, {seen / elapsed if elapsed else 0:,.1f} docs/s", refresh=False)
            else:
                bar.update(len(chunk))
            if len(pending.docs) >= segment_size:
                commit()
        if pending.docs:
            commit()
        if seen == 0:  # (a strict reader already said so) every line rejected, or an empty list
            n_rejected = len(rejects) if hasattr(rejects, "__len__") else getattr(rejects, "count", 0)
            raise CorpusError(f"{_name(corpus)} has no valid document ({n_rejected} rejected): fix the lines"
                              if n_rejected else
                              "the corpus has no documents: pass a file or a list with at least one document")
    except BaseException as exc:
        if created and not report.documents:  # nothing committed: leave no empty index behind
            index.close()
            _remove_new_index(path, created == "path")
        if isinstance(exc, CorpusError) and report.documents:  # what was committed stays: say how to go on
            raise CorpusError(f"{exc} ({report.documents} document(s) before it are committed in {path}: fix it and "
                              f"run again with --resume, or skip bad lines with --skip-invalid)") from None
        if isinstance(exc, StorageError):
            fix = "free space and run again" if created and not report.documents else \
                "free space and rerun with --resume"
            if created and not report.documents:
                base = f"{exc.base.split(': the index is at its last commit')[0]}: nothing was committed (the new " \
                       f"index directory is removed)"
            else:
                base = exc.base
            kind = StorageFullError if isinstance(exc, StorageFullError) else StorageError
            raise kind(f"{base}; {fix}", base) from None
        raise
    finally:
        bar.close()
        if quiet:
            encoder.progress = encoder_progress
        index.close()
    if skipped:
        report.extra["skipped"] = skipped
    report.extra["empty"] = empty
    report.seconds = time.perf_counter() - t0
    return report


class _Pending:
    """The documents and encodings of the segment being gathered."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.docs: list[Document] = []
        self.ids: set[str] = set()
        self.dense: list[np.ndarray] = []
        self.sparse: list[sp.csr_matrix] = []
        self.owner: list[np.ndarray] = []

    def add(self, docs: list[Document], dense, sparse_m, owner) -> None:
        if owner is not None:
            self.owner.append(np.asarray(owner, np.int64) + len(self.docs))
        self.docs.extend(docs)
        self.dense.append(np.asarray(dense, np.float32))
        self.sparse.append(sp.csr_matrix(sparse_m, dtype=np.float32))

    def arrays(self, chunked: bool) -> tuple[np.ndarray, np.ndarray | None, sp.csr_matrix]:
        return (np.concatenate(self.dense), np.concatenate(self.owner) if chunked else None,
                sp.vstack(self.sparse, format="csr"))


def _remove_new_index(path: Path, whole: bool) -> None:
    """Undo :meth:`Index.create` of a run that committed nothing: the directory if the run made it, else what
    it put into the (empty) directory it was given."""
    import shutil

    if whole:
        shutil.rmtree(path, ignore_errors=True)
        return
    for entry in path.iterdir():
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def _name(corpus) -> str:
    if isinstance(corpus, (str, os.PathLike)):
        return Path(corpus).name
    if isinstance(corpus, CorpusReader):
        return corpus.path.name
    return "corpus"


def _open_existing(path: Path, encoder: TextEncoder, bm25_cfg: dict | None, sparse_cfg: dict | None,
                   wait: float = 0.0) -> Index:
    index = Index.open(path, writable=True, wait=wait)
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
    return index
