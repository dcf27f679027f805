"""The on-disk index: a versioned, self-describing directory of immutable segments plus an LMDB document store.

Layout::

    DIR/manifest.json            format, versions, encoder (model id, fingerprint, settings), dims, counts,
                                 BM25 settings (analyzer, k1, b) and total length, segments with their files'
                                 sizes and sha256
    DIR/docs.lmdb/               documents, metadata, external id <-> global row
    DIR/segments/seg-000000/     dense.faiss, impact_*.npy + impact_meta.json (quantized sparse postings in blocks
                                 and the forward index, :mod:`hylex.indexing.impact`; per-term arrays stored for
                                 the segment's own terms only, so a small segment is a few KB), bm25_terms.npy,
                                 bm25_indptr.npy, bm25_docs.npy, bm25_tf.npy, bm25_doclen.npy
    DIR/.lock                    held by the one writer
    DIR/readers/gen-N.lock       held (shared) by every open handle that has loaded generation N
                                 (:mod:`hylex.indexing.readers`)

    DIR/segments/seg-000000/deleted-G.npy, bm25_deleted-G.npy
                                 the segment's tombstones as of generation G (int32 local rows) and what they
                                 take out of BM25's document frequencies (int32 per term of the segment)

Global rows are ``segment.row_offset + local row``; row numbers only grow (``next_row``): a merge writes the
live documents of its segments as a new segment at fresh rows. BM25 postings are per segment and keyed by term
hashes; their global statistics are summed over segments at query time minus the deleted documents'
(:mod:`hylex.indexing.bm25`), so they are exactly those of the live documents.

Commit protocol (every add, upsert, delete and merge): new segment files and tombstone files are written under
new names and fsynced, then the documents (one LMDB transaction, synced), then the manifest is replaced
atomically (write, fsync, rename, fsync the directory). The manifest is the commit point: a crash before it
leaves the previous manifest, which names only complete files; the store's rows it does not cover are ignored
and cleaned by the next writer. Files a commit supersedes (merged segments, old tombstones, their documents'
rows) are listed as ``garbage`` with the generation of the commit that superseded them. Right after
publishing, the commit removes every garbage entry that no open handle can still read (none holds an older
generation, :mod:`hylex.indexing.readers`), then rewrites the manifest without them: a merge of an index
nobody else has open leaves no superseded file behind, while a reader holding an older snapshot keeps it whole
(files and documents) until it refreshes or closes, and the first commit after that removes them. Removal is
idempotent and touches nothing the manifest names, so a crash during it leaves the new state (the entries
still listed are removed by a later commit).

Failures (a full disk): a write that fails before the commit point raises :class:`~hylex.errors.StorageError`
(:class:`~hylex.errors.StorageFullError` for a full disk) and the index stays at its last commit; what the
write left is given back at once where it can be (temporary segment files, tombstones, the manifest's temporary
file) and otherwise by the next writer (a segment directory already renamed into place, store rows past
``next_row``). What fails after the commit point (removing superseded files, the automatic merge) is logged and
done by a later commit: an exception out of a write always means that nothing of it was committed.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import hylex
from hylex.corpus import Document, check_id
from hylex.errors import DocumentDamagedError, HylexError, IndexClosedError, IndexFormatError, IndexLockedError
from hylex.indexing.bm25 import Bm25Postings, bm25_settings, deleted_df
from hylex.indexing.dense import DEFAULT_FACTORY, DenseIndex
from hylex.indexing.impact import ImpactIndex
from hylex.indexing.readers import READERS_DIR, ReaderMark, Sweep, read_generation
from hylex.indexing.storage import storage_error
from hylex.indexing.store import DocStore, parse_record
from hylex.text import Bm25Analyzer
from hylex.utils import sha256_file

logger = logging.getLogger(__name__)

from hylex.indexing.manifest import (  # noqa: E402,F401  (re-exported: the format's names live there)
    FORMAT, FORMAT_VERSION, MANIFEST, MERGE_DEFAULTS, RAW_DENSE_FILE, OWNER_FILE, READABLE, READABLE_VERSIONS,
    _read_manifest, manifest_stats, read_manifest,
)


def _library_versions() -> dict:
    import faiss
    import numba

    out = {"hylex": hylex.__version__, "numpy": np.__version__, "faiss": faiss.__version__,
           "numba": numba.__version__}
    try:
        import torch
        import transformers

        out.update(torch=torch.__version__, transformers=transformers.__version__)
    except ImportError:  # pragma: no cover - indexing works from pre-computed vectors without torch
        pass
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: dict) -> None:
    """Replace ``path`` by ``data`` atomically (write, fsync, rename, fsync the directory). Raises only before the
    rename: once it is done the new file is what everyone reads, so a failing directory fsync is logged."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: give back what the partial file took
        raise
    os.replace(tmp, path)
    try:
        _fsync_dir(path.parent)
    except OSError as e:
        logger.error("%s is replaced, but syncing its directory failed (%s): a power loss now may undo it", path, e)


def _commits(method):
    """A public write of :class:`Index`: refused on a closed handle; a write failure before the commit point (a
    full disk, an I/O error) becomes a :class:`~hylex.errors.StorageError` naming the index. Whatever fails after
    the commit point is logged, never raised (:meth:`Index._publish`, :meth:`Index._merge_after_commit`), so an
    exception always means that nothing of the write was committed."""
    @functools.wraps(method)
    def write(self: Index, *args, **kwargs):
        self._check_open()
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            err = storage_error(e, self.path, self.n_docs)
            if err is None:
                raise
            raise err from e
    return write


@dataclass
class Segment:
    name: str
    row_offset: int
    n_docs: int
    dense: DenseIndex
    sparse: ImpactIndex
    bm25: Bm25Postings
    # int32 (n_vectors,): the local document row of each dense vector when documents have several (maxsim
    # over chunks); None when vector i is document i.
    dense_owner: np.ndarray | None = None
    # bool (n_docs,) tombstones, or None when no document of the segment is deleted
    deleted: np.ndarray | None = None
    # what the deleted documents take out of BM25's statistics: (deleted df per term, deleted length, count)
    bm25_deleted: tuple | None = None

    @property
    def n_deleted(self) -> int:
        return 0 if self.deleted is None else int(self.deleted.sum())

    @property
    def n_live(self) -> int:
        return self.n_docs - self.n_deleted

    @property
    def live(self) -> np.ndarray | None:
        """bool (n_docs,) live documents, or None when all are."""
        return None if self.deleted is None else ~self.deleted

    def allowed(self, mask: np.ndarray | None) -> np.ndarray | None:
        """Live documents that also pass ``mask`` (bool (n_docs,) or None): None when every document may hit."""
        if mask is None:
            return self.live
        return mask if self.deleted is None else (mask & ~self.deleted)

    def vector_mask(self, allowed: np.ndarray | None) -> np.ndarray | None:
        """A document mask as a mask over the segment's dense vectors."""
        if allowed is None or self.dense_owner is None:
            return allowed
        return allowed[np.asarray(self.dense_owner)]


class Index:
    """A hylex index directory opened for search (and, with ``writable=True``, for adding documents).

    Use :meth:`create` for a new directory and :meth:`open` for an existing one.
    """

    def __init__(self, path: Path, manifest: dict, writable: bool, mmap: bool = True,
                 reader: ReaderMark | None = None):
        self.path = path
        self.manifest = manifest
        self.writable = writable
        self._closed = False
        self._segments: list[Segment] = []
        self._lock_fd = None
        self.store = None
        self._reader = reader  # this handle's registration as a holder of the manifest's generation
        self._analyzer: Bm25Analyzer | None = None
        self._offsets: np.ndarray | None = None  # segments' first rows, for row -> segment lookups
        self._manifest_key: tuple | None = None  # (mtime, size, inode) of the manifest last read, for refresh()
        self.columns_cache: dict = {}  # (segment name, field) -> metadata column, see hylex.retrieval.filters
        try:
            if writable:
                self.acquire_writer()
            if reader is None:  # create(): the writer lock is held, so the generation cannot move meanwhile
                self._reader = ReaderMark.take(path, _generation(manifest))
            self.store = DocStore(path / "docs.lmdb", create=not manifest["segments"])
            self.segments = [self._load_segment(s, mmap) for s in manifest["segments"]]
        except BaseException:
            self.close()  # release the writer lock and the store when a segment cannot be loaded
            raise

    @property
    def segments(self) -> list[Segment]:
        """The loaded segments of this snapshot (refused once the handle is closed: their files may be gone)."""
        self._check_open()
        return self._segments

    @segments.setter
    def segments(self, value: list[Segment]) -> None:
        self._segments = value

    def _check_open(self) -> None:
        if self._closed:
            raise IndexClosedError(f"index {self.path} is closed: this handle was closed, open the index again with "
                                   f"Index.open (or keep using it inside its `with` block)")

    # -- creation / opening ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, encoder: dict, dense_factory: str = DEFAULT_FACTORY,
               bm25: dict | None = None, sparse: dict | None = None, merge: dict | None = None) -> Index:
        """Create an empty index at ``path`` for vectors from ``encoder`` (an ``Encoder.describe()`` dict).

        ``sparse``: how sparse postings are stored, ``{"bits": 8|16, "block_size", "keep_top", "keep_fraction"}``
        (defaults: 16-bit impacts, blocks of 64, no static pruning; see :func:`sparse_settings`).

        ``bm25``: the BM25 arm's settings, ``{"k1", "b", "stemmer", "stopwords"}`` or ``{"k1", "b", "analyzer"}``
        (defaults: k1 0.9, b 0.4, English stemming and stopwords); k1 and b are the defaults of searches.

        ``merge``: the automatic merge policy ``{"auto", "factor", "max_deleted", "max_docs"}`` (see
        :func:`merge_settings`).
        """
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise HylexError(f"{p} is a file, not a directory: choose a new or an empty directory for the index")
        if (p / MANIFEST).exists():
            raise HylexError(f"{p} already holds a hylex index: open it to add documents, or choose a new "
                             f"directory")
        if p.exists() and not _only_creation_leftovers(p):
            raise HylexError(f"{p} exists and is not empty, and is not a hylex index: choose an empty or new "
                             f"directory")
        for key in ("model_id", "dim", "vocab_size", "settings"):
            if key not in encoder:
                raise HylexError(f"encoder description lacks {key!r}: pass Encoder.describe()")
        # Validate the factory string and the BM25 settings now, before anything is written.
        _check_factory(int(encoder["dim"]), dense_factory)
        bm25_cfg = bm25_settings(bm25)
        sparse_cfg = sparse_settings(sparse)
        merge_cfg = merge_settings(merge)
        p.mkdir(parents=True, exist_ok=True)
        (p / "segments").mkdir(exist_ok=True)
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "created": now, "updated": now,
            "libraries": _library_versions(), "encoder": encoder,
            "dense": {"factory": dense_factory, "metric": "inner_product", "dim": int(encoder["dim"])},
            "sparse": {"vocab_size": int(encoder["vocab_size"]), "format": "impact", **sparse_cfg},
            "bm25": {**bm25_cfg, "idf": "lucene", "total_len": 0},
            "n_docs": 0, "next_row": 0, "next_segment": 0, "generation": 0, "segments": [], "garbage": [],
            "merge": merge_cfg,
        }
        _write_json_atomic(p / MANIFEST, manifest)
        return cls(p, manifest, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike, writable: bool = False, mmap: bool = True,
             verify: bool = True, wait: float = 0.0) -> Index:
        """Open an existing index; checks its format, version and files, with errors naming what is wrong.

        ``verify``: also check every segment file's sha256 against the manifest (reads each file once, about
        1-2 GB/s; a damaged file is named in the error). Off, only sizes are checked.
        ``writable``: take the writer lock (held until :meth:`close`), waiting up to ``wait`` seconds for another
        writer to finish (default: refused at once with :class:`~hylex.errors.IndexLockedError`). A process that
        writes now and then can instead open read-only and commit inside :meth:`writing`.

        The handle registers the manifest generation it loaded (``DIR/readers/``, :mod:`hylex.indexing.readers`):
        commits keep whatever it may still read until it is refreshed (:meth:`refresh`) or closed: close handles that
        are no longer needed.
        """
        p = Path(path)
        for _ in range(50):
            manifest = _read_manifest(p)
            gen = _generation(manifest)
            mark = ReaderMark.take(p, gen)
            # registered first, then the generation read again: if a writer published meanwhile, its sweep may
            # have missed this registration and removed files of `manifest`, so read anew
            if mark is None or read_generation(p) == gen:
                break
            mark.release()
        else:
            raise HylexError(f"index {p} changed 50 times while it was being opened: try again")
        try:
            _check_files(p, manifest["segments"], verify)
            index = cls(p, manifest, writable=False, mmap=mmap, reader=mark)
        except BaseException:
            if mark is not None:
                mark.release()
            raise
        if writable:
            try:
                index.acquire_writer(wait)
                index.refresh(verify)  # what another writer committed before the lock was ours
            except BaseException:
                index.close()
                raise
            index.writable = True
        return index

    def refresh(self, verify: bool = True) -> bool:
        """Take up what other processes committed since this read-only index was read: the new manifest's
        segments (unchanged ones are kept loaded). Costs one ``stat`` when nothing changed. Returns whether the
        snapshot changed. A writable index is always current (it is the only writer)."""
        if self.writable:
            return False
        self._check_open()
        mf = self.path / MANIFEST
        for attempt in range(3):
            st = mf.stat()
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if key == self._manifest_key:
                return False
            manifest = _read_manifest(self.path)
            if manifest["segments"] == self.manifest["segments"] and manifest.get("generation") == \
                    self.manifest.get("generation"):
                self.manifest = manifest  # same segments; other fields (the stored fusion) may have changed
                self._manifest_key = key
                return False
            # register the new generation before loading it (see open()); the old one is let go once replaced
            gen = _generation(manifest)
            mark = ReaderMark.take(self.path, gen)
            if mark is not None and read_generation(self.path) != gen:
                mark.release()
                continue
            loaded = {s.name: (e, s) for e, s in zip(self.manifest["segments"], self.segments)}
            try:
                changed = [e for e in manifest["segments"] if loaded.get(e["name"], (None,))[0] != e]
                _check_files(self.path, changed, verify)
                segments = [loaded[e["name"]][1] if e not in changed else self._load_segment(e, mmap=True)
                            for e in manifest["segments"]]
            except (IndexFormatError, OSError):
                if mark is not None:
                    mark.release()
                if attempt == 2:
                    raise
                continue  # files went meanwhile (read unregistered): read anew
            gone = [n for n in loaded if n not in {e["name"] for e in manifest["segments"]}]
            self.manifest, self.segments, self._offsets = manifest, segments, None
            self._columns_cache_drop(gone)
            self._manifest_key = key
            self._move_reader(mark)
            return True
        return False

    def _move_reader(self, mark: ReaderMark | None) -> None:
        """Hold ``mark`` (the generation now loaded, or None) instead of the previous registration."""
        old, self._reader = self._reader, mark
        if old is not None:
            old.release()

    # -- the writer lock ---------------------------------------------------------------------------------------
    def acquire_writer(self, wait: float = 0.0) -> None:
        """Take the index's writer lock (an ``flock`` on ``DIR/.lock``, released by the OS if the process dies),
        waiting up to ``wait`` seconds for the writer holding it; then :class:`~hylex.errors.IndexLockedError`.
        Any thread may call it, e.g. to wait off a thread that serves searches; :meth:`writing` then commits."""
        self._check_open()
        if self._lock_fd is not None:
            raise HylexError(f"this handle of index {self.path} already holds its writer lock")
        self._lock_fd = _lock_file(self.path, wait)

    def release_writer(self) -> None:
        """Release the writer lock taken by :meth:`acquire_writer` (nothing if not held)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    @contextlib.contextmanager
    def writing(self, wait: float = 0.0) -> Iterator[Index]:
        """Commit through an index opened read-only: inside the block it is writable and current.

        Takes the writer lock unless :meth:`acquire_writer` already took it (waiting up to ``wait`` seconds),
        takes up what other writers committed (:meth:`refresh`), and on exit is read-only again and releases the
        lock it took. For processes that write now and then and must not hold the lock in between, e.g. the
        service's workers; searches must not run on this handle from other threads meanwhile. On an index
        opened writable, it just yields it.

            with Index.open(path) as ix:
                with ix.writing(wait=10):
                    ix.upsert(docs, dense, sparse)
        """
        self._check_open()
        if self.writable:
            yield self
            return
        own = self._lock_fd is None
        if own:
            self.acquire_writer(wait)
        try:
            self.refresh()
            self.writable = True
            ok = False
            try:
                yield self
                ok = True
            finally:
                self.writable = False
                # the manifest on disk is ours and loaded: the next refresh is one stat unless another writer
                # commits; after a failure it is read again
                st = (self.path / MANIFEST).stat()
                self._manifest_key = (st.st_mtime_ns, st.st_size, st.st_ino) if ok else None
        finally:
            if own:
                self.release_writer()

    def close(self) -> None:
        self._closed = True
        if self.store is not None:
            self.store.close()
        self.release_writer()
        self._move_reader(None)  # the next commit may remove what only this snapshot still read

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load_segment(self, seg: dict, mmap: bool) -> Segment:
        """Load a segment's files. A file that cannot be read (damaged past what its size shows, when opened
        without verifying checksums) is an IndexFormatError naming it, never the loader's own exception."""
        d = self.path / "segments" / seg["name"]
        files = seg["files"]
        deleted = bm25_deleted = None

        def load(what: str, fn):
            try:
                return fn()
            except IndexFormatError:
                raise
            except Exception as e:  # noqa: BLE001 - FAISS, NumPy's header parser: any exception type
                raise IndexFormatError(f"segment {seg['name']}: file {what} is damaged ({type(e).__name__}: "
                                       f"{' '.join(str(e).split())[:160]}): `hylex validate {self.path}` lists every "
                                       f"problem; rebuild the index") from None

        if seg.get("deleted_file"):
            rows = load(seg["deleted_file"], lambda: np.load(d / seg["deleted_file"], allow_pickle=False))
            deleted = np.zeros(int(seg["n_docs"]), dtype=bool)
            load(seg["deleted_file"], lambda: deleted.__setitem__(rows, True))
            bm25_deleted = (load(seg["bm25_deleted_file"],
                                 lambda: np.load(d / seg["bm25_deleted_file"], allow_pickle=False)),
                            int(seg["bm25_deleted_len"]), len(rows))
        return Segment(seg["name"], int(seg["row_offset"]), int(seg["n_docs"]),
                       load("dense.faiss", lambda: DenseIndex.load(d / "dense.faiss", self.manifest["dense"]["factory"],
                                                                   mmap=mmap)),
                       load("impact_*", lambda: _load_sparse(d, int(seg["n_docs"]), self.vocab_size, mmap)),
                       load("bm25_*", lambda: Bm25Postings.load(d, mmap=mmap, total_len=seg["bm25_len"])),
                       load(OWNER_FILE, lambda: np.load(d / OWNER_FILE, mmap_mode="r" if mmap else None,
                                                        allow_pickle=False)) if OWNER_FILE in files else None,
                       deleted, bm25_deleted)

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def n_docs(self) -> int:
        """Live documents (deleted ones excluded)."""
        return int(self.manifest["n_docs"])

    @property
    def n_deleted(self) -> int:
        return sum(s.n_deleted for s in self.segments)

    @property
    def dim(self) -> int:
        return int(self.manifest["dense"]["dim"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["sparse"]["vocab_size"])

    @property
    def encoder_info(self) -> dict:
        return self.manifest["encoder"]

    @property
    def bm25_analyzer(self) -> Bm25Analyzer:
        """The analyzer documents were indexed with (queries must use the same)."""
        if self._analyzer is None:
            self._analyzer = Bm25Analyzer.from_dict(self.manifest["bm25"]["analyzer"])
        return self._analyzer

    @property
    def bm25_k1(self) -> float:
        return float(self.manifest["bm25"]["k1"])

    @property
    def bm25_b(self) -> float:
        return float(self.manifest["bm25"]["b"])

    # -- validation of a batch ---------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if not self.writable:
            raise HylexError(f"index {self.path} is open read-only: open it with writable=True to change it")

    def _check_batch(self, docs: Sequence[Document], dense: np.ndarray, sparse: sp.csr_matrix,
                     dense_owner: np.ndarray | None) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray | None]:
        n = len(docs)
        if n == 0:
            raise HylexError("no documents to add: pass at least one document")
        bad = next((i for i, d in enumerate(docs) if not isinstance(d, Document)), None)
        if bad is not None:
            raise HylexError(f"document {bad} is a {type(docs[bad]).__name__}, not a hylex.corpus.Document: build "
                             f"documents with Document(id, text, title, metadata)")
        dense = np.asarray(dense, dtype=np.float32)
        rows = n
        if dense_owner is not None:
            dense_owner = np.asarray(dense_owner)
            rows = len(dense_owner)
            if (dense_owner.ndim != 1 or not np.issubdtype(dense_owner.dtype, np.integer) or rows < n
                    or (rows and (dense_owner[0] != 0 or dense_owner[-1] != n - 1))
                    or (np.diff(dense_owner) < 0).any() or len(np.unique(dense_owner)) != n):
                raise HylexError("dense_owner must list, for each dense vector, its document 0..n-1 in ascending "
                                 "order with every document at least once")
        if dense.shape != (rows, self.dim):
            raise HylexError(f"dense vectors have shape {dense.shape}, expected ({rows}, {self.dim}) for this "
                             f"index: encode with the index's model")
        if not np.isfinite(dense).all():
            raise HylexError("dense vectors contain NaN or infinity: check the encoder output")
        if not sp.issparse(sparse) or sparse.shape != (n, self.vocab_size):
            raise HylexError(f"sparse weights have shape {getattr(sparse, 'shape', None)}, expected "
                             f"({n}, {self.vocab_size}) for this index: encode with the index's model")
        sparse = sp.csr_matrix(sparse, dtype=np.float32)
        if sparse.nnz and (not np.isfinite(sparse.data).all() or (sparse.data < 0).any()):
            raise HylexError("sparse weights must be finite and non-negative: check the encoder output")
        mw = self.manifest["sparse"].get("max_weight")
        if sparse.nnz and mw is not None and float(sparse.data.max()) > mw:
            raise HylexError(f"a sparse weight ({float(sparse.data.max()):.6g}) exceeds this index's max_weight "
                             f"{mw}: create the index with a larger sparse max_weight")
        seen: set[str] = set()
        for d in docs:
            if d.id in seen:
                raise HylexError(f"document id {d.id!r} appears twice in the batch: ids must be unique")
            seen.add(d.id)
        return dense, sparse, dense_owner

    # -- writing ---------------------------------------------------------------------------------------------
    @_commits
    def add(self, docs: Sequence[Document], dense: np.ndarray, sparse: sp.csr_matrix,
            dense_owner: np.ndarray | None = None) -> int:
        """Commit new ``docs`` with their encodings as one new segment; returns the segment's first global row.

        ``dense`` float32 (n, dim), or (m, dim) chunk vectors with ``dense_owner`` int (m,) giving each vector's
        document (0..n-1, ascending, every document at least once); ``sparse`` float32 csr (n, vocab_size).
        Ids already in the index are refused (use :meth:`upsert` to replace documents). Everything is validated
        before anything is written; on return the batch is durable.
        """
        return self._add(docs, dense, sparse, dense_owner, replace=False)

    @_commits
    def upsert(self, docs: Sequence[Document], dense: np.ndarray, sparse: sp.csr_matrix,
               dense_owner: np.ndarray | None = None) -> int:
        """Like :meth:`add`, but a document whose id is already live replaces it, in the same commit (the old
        version is deleted). Returns the new segment's first global row."""
        return self._add(docs, dense, sparse, dense_owner, replace=True)

    def _add(self, docs, dense, sparse, dense_owner, replace: bool) -> int:
        self._check_writable()
        docs = list(docs)
        dense, sparse, dense_owner = self._check_batch(docs, dense, sparse, dense_owner)
        old = self.rows_of([d.id for d in docs])
        existing = [(d.id, r) for d, r in zip(docs, old) if r is not None]
        if existing and not replace:
            raise HylexError(f"{len(existing)} document id(s) are already in the index (first: {existing[0][0]!r}): "
                             f"ids must be unique; upsert to replace them, or index into a new directory")
        self._prepare_write()
        first = int(self.manifest["next_row"])
        name, entry, seg_n = self._write_segment(first, dense, dense_owner, sparse_csr=sparse,
                                                 bm25=Bm25Postings.from_tokens(
                                                     self.bm25_analyzer.analyze([d.full_text for d in docs])))
        self.store.put(first, docs)
        self.store.sync()
        self._publish(new=[entry], deletes=self._group_rows([r for _, r in existing]))
        logger.info("committed segment %s: %d documents (%d replaced)", name, seg_n, len(existing))
        self._merge_after_commit()
        return first

    @_commits
    def add_staged(self, staged: str | os.PathLike, existing: str = "error") -> int:
        """Commit a segment built elsewhere as one new segment; returns its first global row.

        ``staged`` is a directory that :func:`write_segment_files` wrote, beside it ``STAGED.json`` (the entry it
        returned) and ``STAGED.documents.jsonl`` (each document's stored JSON, in row order): what a worker of a
        distributed job leaves (:mod:`hylex.indexing.distributed`). The files are checked against the entry
        (sizes and sha256), the directory is moved into the index, the documents stored and the manifest replaced,
        as for :meth:`add`. ``existing``: ids already live in the index are refused (``error``), replace their old
        rows (``upsert``), or replace them only when stored with the same title, text and metadata (``resume``).
        The sibling files are removed once committed.
        """
        self._check_writable()
        staged = Path(staged)
        meta_file, docs_file = staged.with_name(staged.name + ".json"), staged.with_name(staged.name + ".documents.jsonl")
        if not staged.is_dir() or not meta_file.is_file() or not docs_file.is_file():
            raise HylexError(f"{staged} is not a complete staged segment (a directory with {meta_file.name} and "
                             f"{docs_file.name} beside it)")
        part = json.loads(meta_file.read_text())
        blobs = docs_file.read_bytes().splitlines()
        if len(blobs) != int(part.get("n_docs", -1)):
            raise IndexFormatError(f"staged segment {staged.name} holds {len(blobs)} documents, its entry says "
                                   f"{part.get('n_docs')}: it is damaged, index its documents again")
        for fname, meta in part["files"].items():
            f = staged / fname
            if not f.is_file() or f.stat().st_size != meta["bytes"] or sha256_file(f) != meta["sha256"]:
                raise IndexFormatError(f"staged segment file {f} is missing or does not match its checksum: index "
                                       f"its documents again")
        ids = [json.loads(b)["id"] for b in blobs]
        if len(set(ids)) != len(ids):
            raise HylexError(f"staged segment {staged.name} repeats a document id: ids must be unique")
        old = self.rows_of(ids)
        present = [(i, r) for i, r in enumerate(old) if r is not None]
        if present and existing == "error":
            raise HylexError(f"{len(present)} document id(s) are already in the index (first: {ids[present[0][0]]!r}): "
                             f"ids must be unique; upsert to replace them, or index into a new directory")
        if present and existing == "resume":
            for (i, _), doc in zip(present, self.documents([r for _, r in present])):
                new = json.loads(blobs[i])
                if (doc["title"], doc["text"], doc["metadata"]) != (new["title"], new["text"], new["metadata"]):
                    raise HylexError(f"document {ids[i]!r} is already in {self.path} with other content: resume "
                                     f"only skips documents indexed unchanged; upsert to replace them")
        self._prepare_write()
        first = int(self.manifest["next_row"])
        name, final = self._claim_segment()
        os.replace(staged, final)
        _fsync_dir(final.parent)
        self.store.put(first, blobs, ids)
        self.store.sync()
        self._publish(new=[{"name": name, "row_offset": first, **part}],
                      deletes=self._group_rows([r for _, r in present]))
        for f in (meta_file, docs_file):
            f.unlink(missing_ok=True)
        logger.info("committed staged segment %s as %s: %d documents (%d replaced)", staged.name, name, len(ids),
                    len(present))
        self._merge_after_commit()
        return first

    @_commits
    def delete(self, ids: Sequence[str], *, dry_run: bool = False) -> int:
        """Delete the live documents with these external ids (ids not in the index are ignored); returns how
        many were deleted. Durable on return, like every commit. ``dry_run``: only count them (no writer lock
        needed, nothing written)."""
        if not dry_run:
            self._check_writable()
        ids = _check_ids(ids)
        return self.delete_rows([r for r in self.rows_of(ids) if r is not None], dry_run=dry_run)

    @_commits
    def delete_all(self, *, dry_run: bool = False) -> int:
        """Delete every live document (the segments stay until merged); returns how many. Durable on return.
        ``dry_run``: only count them."""
        if not dry_run:
            self._check_writable()
        rows = []
        for seg in self.segments:
            live = seg.live
            local = np.arange(seg.n_docs, dtype=np.int64) if live is None else np.flatnonzero(live)
            rows.extend((local + seg.row_offset).tolist())
        return self.delete_rows(rows, dry_run=dry_run)

    @_commits
    def set_fusion(self, record: dict | None) -> None:
        """Store (or with None, remove) the fusion plain hybrid searches of this index use
        (:mod:`hylex.retrieval.fusion`; ``hylex fuse`` chooses it on training queries). Durable on return;
        documents and segments are untouched."""
        self._check_writable()
        if record is not None:
            json.dumps(record, allow_nan=False)  # a record JSON cannot hold fails here, before anything is written
        manifest = {k: v for k, v in self.manifest.items() if k != "fusion"}
        if record is not None:
            manifest["fusion"] = record
        manifest["updated"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        _write_json_atomic(self.path / MANIFEST, manifest)
        self.manifest = manifest

    @_commits
    def delete_rows(self, rows: Sequence[int], *, dry_run: bool = False) -> int:
        """Delete documents by global row (e.g. the rows a filter matched); returns how many live ones went
        (``dry_run``: how many would go; nothing is written)."""
        if not isinstance(dry_run, bool):
            raise HylexError(f"dry_run must be true or false, got {dry_run!r}")
        if not dry_run:
            self._check_writable()
        rows = sorted({int(r) for r in rows if r is not None and self.is_live(int(r))})
        if not rows or dry_run:
            return len(rows)
        self._prepare_write()
        self._publish(deletes=self._group_rows(rows))
        logger.info("deleted %d documents", len(rows))
        self._merge_after_commit()
        return len(rows)

    @_commits
    def merge(self, names: Sequence[str] | None = None) -> str | None:
        """Merge segments (default: all, when there are several or any has deletions) into one new segment of
        their live documents, dropping the deleted ones. Returns the new segment's name (None if nothing to do).
        Either way, superseded files no open handle still reads are removed."""
        self._check_writable()
        segs = self.segments if names is None else [s for s in self.segments if s.name in set(names)]
        if names is not None and len(segs) != len(set(names)):
            unknown = sorted(set(names) - {s.name for s in self.segments})
            raise HylexError(f"no segment named {', '.join(unknown)} in {self.path}: see `hylex stats`")
        self._prepare_write()
        if not segs or (len(segs) == 1 and segs[0].n_deleted == 0):
            self._collect_garbage()  # nothing to rewrite; what older snapshots or a crash left may go now
            return None
        return self._merge(segs)

    def _merge(self, segs: list[Segment]) -> str | None:
        first = int(self.manifest["next_row"])
        dense_parts, owner_parts, sparse_parts, bm_parts, blobs, ids = [], [], [], [], [], []
        n_out = 0
        for seg in segs:
            keep = np.ones(seg.n_docs, bool) if seg.deleted is None else ~seg.deleted
            vecs = self._segment_vectors(seg)
            if seg.dense_owner is None:
                dense_parts.append(vecs[keep])
                owner_parts.append(np.arange(int(keep.sum())) + n_out)
            else:
                owner = np.asarray(seg.dense_owner)
                on = keep[owner]
                dense_parts.append(vecs[on])
                owner_parts.append((np.cumsum(keep) - 1)[owner[on]] + n_out)
            sparse_parts.append(seg.sparse.to_csr()[keep])
            bm_parts.append(seg.bm25.subset(keep))
            local = np.flatnonzero(keep)
            raw = self.store.get_raw((local + seg.row_offset).tolist())
            if any(r is None for r in raw):
                raise IndexFormatError(f"the document store lacks documents of segment {seg.name}: the index is "
                                       f"damaged (`hylex validate {self.path}`)")
            blobs.extend(raw)
            ids.extend(parse_record(b, int(r), self.path)["id"] for r, b in zip(local + seg.row_offset, raw))
            n_out += len(local)
        drop = [s.name for s in segs]
        if n_out == 0:  # every document was deleted: the segments just go
            self._publish(drop=drop)
            return None
        owner = np.concatenate(owner_parts)
        chunked = any(s.dense_owner is not None for s in segs)
        name, entry, _ = self._write_segment(first, np.concatenate(dense_parts), owner if chunked else None,
                                             sparse_csr=sp.vstack(sparse_parts, format="csr"),
                                             bm25=Bm25Postings.concat(bm_parts))
        self.store.put(first, blobs, ids)
        self.store.sync()
        self._publish(new=[entry], drop=drop)
        logger.info("merged %d segments into %s: %d live documents", len(segs), name, n_out)
        return name

    def _segment_vectors(self, seg: Segment) -> np.ndarray:
        d = self.path / "segments" / seg.name
        if (d / RAW_DENSE_FILE).exists():
            return np.load(d / RAW_DENSE_FILE, mmap_mode="r", allow_pickle=False)
        vecs = seg.dense.vectors()
        if vecs is None:
            raise HylexError(f"FAISS {self.manifest['dense']['factory']!r} cannot give back the vectors of "
                             f"segment {seg.name}, so it cannot be merged")
        return vecs

    def _merge_after_commit(self) -> None:
        """The automatic merge after a commit. The commit stands whatever happens here: a merge that fails is
        logged and tried again after the next commit, and what it left is removed by the next writer. A full disk
        is logged at INFO only: the next write meets it and says so (one line, not a warning before it); any
        other failure is a warning with its traceback."""
        try:
            self._auto_merge()
        except Exception as e:
            err = storage_error(e, self.path, self.n_docs)
            logger.log(logging.INFO if err is not None else logging.WARNING,
                       "the commit to %s stands, but the automatic merge after it failed (%s): it is tried again "
                       "after the next commit", self.path, err.base if err is not None else repr(e),
                       exc_info=err is None)

    def _auto_merge(self) -> None:
        cfg = {**MERGE_DEFAULTS, **self.manifest.get("merge", {})}
        if not cfg.get("auto", True):
            return
        for _ in range(64):  # each round removes segments; the bound only guards against a policy bug
            group = merge_candidates([(s.name, s.n_live, s.n_deleted) for s in self.segments], cfg["factor"],
                                     cfg["max_deleted"], cfg["max_docs"])
            if not group:
                return
            self._merge([s for s in self.segments if s.name in set(group)])

    # -- the commit protocol -----------------------------------------------------------------------------------
    def _prepare_write(self) -> None:
        """Before a commit: remove what an interrupted commit left (store rows past ``next_row``, temporary or
        unlisted segment directories; not the segments that garbage still keeps for older readers)."""
        dropped_tail = self.store.truncate(int(self.manifest["next_row"]))
        if dropped_tail:
            logger.warning("dropped %d uncommitted documents left by an interrupted commit", dropped_tail)
        keep = {s["name"] for s in self.manifest["segments"]} | {
            name for g in self.manifest.get("garbage", []) for name in g.get("segments", [])}
        for d in (self.path / "segments").iterdir():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    def _collect_garbage(self) -> None:
        """After publishing (writer lock held, this handle registered at the new generation): remove the garbage
        entries no open handle can read any more (:mod:`hylex.indexing.readers`): their stored rows, files and
        segment directories, then the manifest without them. The others wait for a later commit."""
        garbage = self.manifest.get("garbage", [])
        if not garbage and not (self.path / READERS_DIR).is_dir():
            return
        current = _generation(self.manifest)
        with Sweep(self.path, current) as sweep:
            # entries of manifests written before generations were recorded count as of the current one
            ready = [g for g in garbage if int(g.get("generation", current)) <= sweep.oldest_held]
            if not ready:
                return
            ranges = [tuple(r) for g in ready for r in g.get("rows", [])]
            dropped = self.store.drop(ranges) if ranges else 0
            if ranges:
                self.store.sync()
            root = self.path / "segments"
            listed = {s["name"] for s in self.manifest["segments"]}
            touched = set()
            for g in ready:
                for seg_name, fname in g.get("files", []):
                    if seg_name in listed:  # in a dropped segment, the file goes with its directory
                        touched.add(seg_name)
                        with contextlib.suppress(FileNotFoundError):
                            (root / seg_name / fname).unlink()
                for seg_name in g.get("segments", []):
                    shutil.rmtree(root / seg_name, ignore_errors=True)
            for d in [root / n for n in sorted(touched)] + [root]:
                _fsync_dir(d)
            manifest = {**self.manifest, "garbage": [g for g in garbage if not any(g is r for r in ready)]}
            _write_json_atomic(self.path / MANIFEST, manifest)
            self.manifest = manifest
            logger.debug("removed the garbage of %d commits (%d stored documents)", len(ready), dropped)

    def _claim_segment(self) -> tuple[str, Path]:
        """The next segment's name and directory (free: what an interrupted commit left there is removed)."""
        seq = int(self.manifest["next_segment"])
        self.manifest = {**self.manifest, "next_segment": seq + 1}  # never reuse a name, even if this fails
        name = f"seg-{seq:06d}"
        final = self.path / "segments" / name
        if final.exists():  # an interrupted commit renamed it but never reached the manifest
            shutil.rmtree(final)
        return name, final

    def _write_segment(self, first_row: int, dense: np.ndarray, dense_owner: np.ndarray | None, *,
                       sparse_csr: sp.csr_matrix, bm25: Bm25Postings) -> tuple[str, dict, int]:
        """Write a new segment's files (fsynced, renamed into place); returns (name, manifest entry, n_docs)."""
        n = sparse_csr.shape[0]
        name, final = self._claim_segment()
        tmp = self.path / "segments" / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            part = write_segment_files(tmp, dense, dense_owner, sparse_csr=sparse_csr, bm25=bm25,
                                       factory=self.manifest["dense"]["factory"], sparse_cfg=self.manifest["sparse"])
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk: give back what the partial files took
            raise
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        entry = {"name": name, "row_offset": first_row, **part}
        return name, entry, n

    def _group_rows(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        """Global rows -> {segment name: local rows}."""
        out: dict[str, list[int]] = {}
        for r in rows:
            seg = self._segment_of(int(r))
            if seg is not None:
                out.setdefault(seg.name, []).append(int(r) - seg.row_offset)
        return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}

    def _publish(self, new: Sequence[dict] = (), deletes: dict[str, np.ndarray] | None = None,
                 drop: Sequence[str] = ()) -> None:
        """Write tombstone files for ``deletes``, then replace the manifest: the commit point. What fails before it
        raises (the tombstones written are removed); what fails after it (removing superseded files) is logged,
        and the next commit removes them."""
        gen = int(self.manifest.get("generation", 0)) + 1
        written: list[Path] = []
        try:
            manifest, entries = self._next_manifest(new, deletes, drop, gen, written)
            _write_json_atomic(self.path / MANIFEST, manifest)
        except BaseException:
            for f in written:
                f.unlink(missing_ok=True)
            raise
        before = {e["name"]: e for e in self.manifest["segments"]}
        self.manifest = manifest
        loaded = {s.name: s for s in self.segments}
        # unchanged entries are the very same dicts: reload only new segments and those with new tombstones
        self.segments = [loaded[e["name"]] if before.get(e["name"]) is e else self._load_segment(e, mmap=True)
                         for e in entries]
        self._offsets = None
        self._columns_cache_drop(drop)
        # this handle now holds the new generation (the writer lock keeps it current); then what no open handle
        # can read any more goes at once
        self._move_reader(ReaderMark.take(self.path, gen))
        try:
            self._collect_garbage()
        except Exception as e:
            err = storage_error(e, self.path, self.n_docs)
            logger.warning("committed generation %d of %s, but removing what it superseded failed (%s): the next "
                           "commit removes it", gen, self.path, err.base if err is not None else repr(e),
                           exc_info=err is None)

    def _next_manifest(self, new: Sequence[dict], deletes: dict[str, np.ndarray] | None, drop: Sequence[str],
                       gen: int, written: list[Path]) -> tuple[dict, list[dict]]:
        """The manifest of commit ``gen`` and its segment entries; writes the tombstone files it names (listed in
        ``written`` as they are made)."""
        by_name = {s.name: s for s in self.segments}
        garbage = {"files": [], "rows": [], "segments": list(drop), "generation": gen}
        entries = []
        for entry in self.manifest["segments"]:
            if entry["name"] in drop:
                garbage["rows"].append([int(entry["row_offset"]), int(entry["row_offset"]) + int(entry["n_docs"])])
                continue
            local = (deletes or {}).get(entry["name"])
            if local is not None and len(local):
                seg = by_name[entry["name"]]
                deleted = np.zeros(seg.n_docs, bool) if seg.deleted is None else seg.deleted.copy()
                deleted[local] = True
                entry = self._write_tombstones(entry, seg, deleted, gen, garbage, written)
            entries.append(entry)
        entries.extend(new)
        manifest = dict(self.manifest)
        manifest["segments"] = entries
        manifest["next_row"] = max([int(self.manifest["next_row"])] +
                                   [int(e["row_offset"]) + int(e["n_docs"]) for e in new])
        manifest["n_docs"] = sum(int(e["n_docs"]) - int(e.get("deleted", 0)) for e in entries)
        manifest["bm25"] = {**self.manifest["bm25"], "total_len": sum(
            int(e["bm25_len"]) - int(e.get("bm25_deleted_len", 0)) for e in entries)}
        manifest["generation"] = gen
        manifest["garbage"] = list(self.manifest.get("garbage", [])) + \
            ([garbage] if garbage["files"] or garbage["rows"] or garbage["segments"] else [])
        manifest["updated"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        manifest["libraries"] = _library_versions()
        return manifest, entries

    def _write_tombstones(self, entry: dict, seg: Segment, deleted: np.ndarray, gen: int, garbage: dict,
                          written: list[Path]) -> dict:
        d = self.path / "segments" / entry["name"]
        del_name, df_name = f"deleted-{gen:06d}.npy", f"bm25_deleted-{gen:06d}.npy"
        rows = np.flatnonzero(deleted).astype(np.int32)
        df = deleted_df(seg.bm25, deleted)
        del_len = int(np.asarray(seg.bm25.doc_len, dtype=np.float64)[deleted].sum())
        files = dict(entry["files"])
        for fname, arr in ((del_name, rows), (df_name, df)):
            written.append(d / fname)
            with open(d / fname, "wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            files[fname] = {"bytes": (d / fname).stat().st_size, "sha256": sha256_file(d / fname)}
        _fsync_dir(d)
        for old in (entry.get("deleted_file"), entry.get("bm25_deleted_file")):
            if old:
                files.pop(old, None)
                garbage["files"].append([entry["name"], old])
        return {**entry, "files": files, "deleted": len(rows), "deleted_file": del_name,
                "bm25_deleted_file": df_name, "bm25_deleted_len": del_len}

    # -- reading ---------------------------------------------------------------------------------------------
    def _segment_of(self, row: int) -> Segment | None:
        offsets = self._offsets
        if offsets is None:
            self._offsets = offsets = np.array([s.row_offset for s in self.segments], dtype=np.int64)
        i = int(np.searchsorted(offsets, row, side="right")) - 1
        if i < 0:
            return None
        seg = self.segments[i]
        return seg if row < seg.row_offset + seg.n_docs else None

    def is_live(self, row: int) -> bool:
        """Whether a global row holds a live document of this snapshot."""
        seg = self._segment_of(int(row))
        return seg is not None and (seg.deleted is None or not seg.deleted[int(row) - seg.row_offset])

    def documents(self, rows: Sequence[int]) -> list[dict | None]:
        """Stored documents ``{id, title, text, metadata}`` of global rows (None for -1 / not live). A live row
        whose document is not stored, or fails its checksum, is a DocumentDamagedError."""
        self._check_open()
        rows = [int(r) if r is not None and r >= 0 and self.is_live(int(r)) else -1 for r in rows]
        docs = self.store.get(rows)
        lost = next((r for r, d in zip(rows, docs) if d is None and r >= 0), None)
        if lost is not None:
            raise DocumentDamagedError(f"the document store of {self.path} lacks the live document at row {lost}: "
                                       f"it is damaged (`hylex validate` lists every problem), or a writer removed "
                                       f"this handle's snapshot (refresh it)")
        return docs

    def rows_of(self, ids: Sequence[str]) -> list[int | None]:
        """The live global row of each external id (None where the id is not live)."""
        self._check_open()
        out = []
        for rows in self.store.rows(ids):
            out.append(next((r for r in reversed(rows) if self.is_live(r)), None))
        return out

    def get(self, ids: Sequence[str]) -> list[dict | None]:
        """The live stored documents of external ids (None where absent). A stored document that fails its
        checksum, or is not of the id asked for (a damaged id -> rows entry), is a DocumentDamagedError."""
        ids = _check_ids(ids)
        docs = self.documents([-1 if r is None else r for r in self.rows_of(ids)])
        for i, d in zip(ids, docs):
            if d is not None and d["id"] != i:
                raise DocumentDamagedError(f"the document store of {self.path} maps id {i!r} to the document of "
                                           f"{d['id']!r}: it is damaged (`hylex validate` lists every problem); "
                                           f"rebuild the index")
        return docs

    def stats(self) -> dict:
        """What the index holds: counts, segments with sizes, encoder model and settings, format."""
        return manifest_stats(self.path, self.manifest)

    def devices(self) -> dict:
        """Which device each arm searches on here, and why: ``{"dense": {"device", "why", "segments"}, "sparse":
        ..., "bm25": ...}``; the dense ``segments`` lists the devices the loaded segments actually use."""
        from hylex.indexing.placement import arm_devices

        out = arm_devices(self.manifest["dense"]["factory"])
        out["dense"]["segments"] = sorted({s.dense.device for s in self.segments})
        return out

    def validate(self) -> list[str]:
        """Full check (file checksums, counts, every stored document's checksum, the id -> rows mapping); returns
        a list of problems, one line each (empty when sound). :mod:`hylex.indexing.integrity`."""
        self._check_open()
        from hylex.indexing.integrity import check_index

        return check_index(self).problems

    # metadata columns for filters, built lazily per segment (segments are immutable) by hylex.retrieval.filters
    def _columns_cache_drop(self, names: Sequence[str]) -> None:
        for key in [k for k in self.columns_cache if k[0] in set(names)]:
            del self.columns_cache[key]


# 16-bit impacts on one fixed scale (16 / 65535 ~ 2.4e-4 per step): every segment quantizes a weight the same way,
# so a multi-segment index scores exactly like one built at once. log(1 + relu(logit)) stays far below 16.
SPARSE_DEFAULTS = {"bits": 16, "block_size": 64, "keep_top": None, "keep_fraction": None, "max_weight": 16.0}


def _check_ids(ids) -> list[str]:
    """A list of document ids to look up, each valid (:func:`hylex.corpus.check_id`), or a HylexError."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise HylexError(f"ids must be a list of document id strings, got {type(ids).__name__}: wrap one id as [id]")
    return [check_id(i, "id") for i in ids]


def sparse_settings(cfg: dict | None) -> dict:
    """Checked sparse storage settings: ``bits`` 8 or 16 (impact precision per term), ``block_size`` >= 1
    (postings per block-max block), ``keep_top`` None or >= 1 and ``keep_fraction`` None or in (0, 1] (static
    pruning of each term's postings: approximate, smaller, faster; exact searches are then exact over the kept
    postings only), ``max_weight`` a number > 0 (one fixed quantization scale ``max_weight / (2**bits - 1)``,
    larger weights are refused) or None (per-term scales from each segment's own data: finer, but scores then
    depend slightly on how documents fall into segments)."""
    out = dict(SPARSE_DEFAULTS)
    for key, v in (cfg or {}).items():
        if key not in out:
            raise HylexError(f"unknown sparse setting {key!r}: use {', '.join(SPARSE_DEFAULTS)}")
        out[key] = v
    if out["bits"] not in (8, 16) or isinstance(out["bits"], bool):
        raise HylexError(f"sparse bits must be 8 or 16, got {out['bits']!r}")
    if isinstance(out["block_size"], bool) or not isinstance(out["block_size"], int) or out["block_size"] < 1:
        raise HylexError(f"sparse block_size must be an integer >= 1, got {out['block_size']!r}")
    kt = out["keep_top"]
    if kt is not None and (isinstance(kt, bool) or not isinstance(kt, int) or kt < 1):
        raise HylexError(f"keep_top must be None or an integer >= 1, got {kt!r}")
    kf = out["keep_fraction"]
    if kf is not None and (isinstance(kf, bool) or not isinstance(kf, (int, float)) or not 0 < kf <= 1):
        raise HylexError(f"keep_fraction must be None or a number in (0, 1], got {kf!r}")
    mw = out["max_weight"]
    if mw is not None and (isinstance(mw, bool) or not isinstance(mw, (int, float)) or not 0 < mw < float("inf")):
        raise HylexError(f"max_weight must be None or a finite number > 0, got {mw!r}")
    return out


def _load_sparse(d: Path, n_docs: int, vocab_size: int, mmap: bool) -> ImpactIndex:
    try:
        sparse = ImpactIndex.load(d, mmap=mmap)
    except (ValueError, OSError, KeyError) as e:
        raise IndexFormatError(f"sparse postings in {d} cannot be read ({e}): the index is damaged, rebuild it") from e
    if sparse.n_docs != n_docs or sparse.vocab_size != vocab_size:
        raise IndexFormatError(f"sparse postings in {d} hold {sparse.n_docs} documents over {sparse.vocab_size} "
                               f"terms, the manifest says {n_docs} over {vocab_size}: the index is damaged, "
                               f"rebuild it")
    return sparse


def _generation(manifest: dict) -> int:
    return int(manifest.get("generation", 0))


def _check_factory(dim: int, factory: str) -> None:
    import faiss

    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise HylexError(f"FAISS cannot build index {factory!r}: {str(e).splitlines()[0]}. Use a valid "
                         f"index-factory string such as Flat, HNSW32, IVF256,Flat or IVF256,PQ16") from e


def _lock_file(path: Path, wait: float) -> int:
    """Take ``path/.lock`` exclusively (flock: the OS releases it when the process dies), waiting up to ``wait``
    seconds; returns the open descriptor that holds it."""
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
        raise HylexError(f"wait must be a number of seconds >= 0, got {wait!r}")
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + float(wait)
    pause = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                os.close(fd)
                waited = f" (waited {wait:g} s)" if wait else ""
                raise IndexLockedError(f"another process is writing to index {path}{waited}: wait for it to "
                                       f"finish") from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)


def _only_creation_leftovers(p: Path) -> bool:
    """True when directory ``p`` is empty, or holds only what a :meth:`Index.create` killed before its manifest
    leaves behind (an empty ``segments/``, lock files, a ``readers/`` of lock files only): such a directory may be
    created into again."""
    for entry in p.iterdir():
        if entry.name == "segments" and entry.is_dir() and not any(entry.iterdir()):
            continue
        if entry.name == READERS_DIR and entry.is_dir() and all(
                f.name.startswith("gen-") and f.name.endswith(".lock") and f.is_file() for f in entry.iterdir()):
            continue
        if entry.name in (".lock", "readers.lock") and entry.is_file():
            continue
        return False
    return True


def _check_files(p: Path, segments: Sequence[dict], verify: bool) -> None:
    """Every file the manifest's ``segments`` name exists with its size (and with ``verify``, its sha256), and
    every file their loaders read is named."""
    from hylex.indexing.integrity import unlisted_files

    for seg in segments:
        unlisted = unlisted_files(p / "segments" / seg["name"], seg["files"])
        if unlisted:
            raise IndexFormatError(f"segment {seg['name']}: file {unlisted[0]} is not listed in {p / MANIFEST} (no "
                                   f"checksum covers it): the manifest is damaged; restore it or rebuild the index")
        for fname, meta in seg["files"].items():
            f = p / "segments" / seg["name"] / fname
            if not f.exists():
                raise IndexFormatError(f"index file {f} is missing: the index is damaged, rebuild it")
            if f.stat().st_size != meta["bytes"]:
                raise IndexFormatError(f"index file {f} has {f.stat().st_size} bytes, the manifest says "
                                       f"{meta['bytes']}: the file is damaged, rebuild the index")
            if verify and sha256_file(f) != meta["sha256"]:
                raise IndexFormatError(f"index file {f} does not match its checksum: the file is damaged "
                                       f"(`hylex validate {p}` lists every problem); rebuild the index")


def merge_settings(cfg: dict | None) -> dict:
    """Checked automatic merge policy: ``auto`` (merge after each commit when the policy asks), ``factor`` >= 2
    (segments whose live sizes share a power of ``factor`` are merged once ``factor`` of them exist: each
    document is rewritten about log_factor(N) times), ``max_deleted`` in (0, 1] (a segment with more than this
    fraction deleted is rewritten without them), ``max_docs`` >= 1 (an automatic merge never writes a segment of
    more live documents: a merge holds the segment it writes in memory, so this bounds indexing's peak memory
    however large the corpus grows; ``hylex merge`` is not bound by it)."""
    out = dict(MERGE_DEFAULTS)
    for key, v in (cfg or {}).items():
        if key not in out:
            raise HylexError(f"unknown merge setting {key!r}: use {', '.join(MERGE_DEFAULTS)}")
        out[key] = v
    if not isinstance(out["auto"], bool):
        raise HylexError(f"merge auto must be true or false, got {out['auto']!r}")
    f = out["factor"]
    if isinstance(f, bool) or not isinstance(f, int) or f < 2:
        raise HylexError(f"merge factor must be an integer >= 2, got {f!r}")
    md = out["max_deleted"]
    if isinstance(md, bool) or not isinstance(md, (int, float)) or not 0 < md <= 1:
        raise HylexError(f"merge max_deleted must be a number in (0, 1], got {md!r}")
    mx = out["max_docs"]
    if isinstance(mx, bool) or not isinstance(mx, int) or mx < 1:
        raise HylexError(f"merge max_docs must be an integer >= 1, got {mx!r}")
    return out


def merge_candidates(segs: Sequence[tuple[str, int, int]], factor: int, max_deleted: float,
                     max_docs: int | None = None) -> list[str]:
    """The segments the policy merges next, from ``(name, live, deleted)`` per segment (empty: none).

    A segment with no live document, or more than ``max_deleted`` of its documents deleted, is rewritten
    alone; otherwise the smallest tier (live size ``floor(log_factor(live))``) holding ``factor`` segments is
    merged whole, or, when that would write more than ``max_docs`` live documents, its smallest segments that fit
    under it, if they are still ``factor`` or more (else the tier is left as it is)."""
    for name, live, deleted in segs:
        if live == 0 or deleted / (live + deleted) > max_deleted:
            return [name]
    tiers: dict[int, list[tuple[int, str]]] = {}
    for name, live, _ in segs:
        tiers.setdefault(int(math.log(max(live, 1), factor) + 1e-9), []).append((live, name))
    for tier in sorted(tiers):
        group = tiers[tier]
        if len(group) < factor:
            continue
        if max_docs is not None and sum(live for live, _ in group) > max_docs:
            fit, total = [], 0
            for live, name in sorted(group):
                if total + live > max_docs:
                    break
                fit.append(name)
                total += live
            if len(fit) >= factor:
                return [name for _, name in group if name in set(fit)]
            continue
        return [name for _, name in group]
    return []


def write_segment_files(directory: Path, dense: np.ndarray, dense_owner: np.ndarray | None, *,
                        sparse_csr: sp.csr_matrix, bm25: Bm25Postings, factory: str, sparse_cfg: dict) -> dict:
    """Write a segment's files into the new ``directory`` (FAISS ``factory`` index of ``dense`` float32 (m, dim),
    impacts of ``sparse_csr`` float32 (n, V) stored as ``sparse_cfg`` says, BM25 postings), fsynced; returns its
    manifest entry without ``name`` and ``row_offset`` (those are given when it is committed). Needs no index
    handle, so workers of a distributed job build segments with it (:mod:`hylex.indexing.distributed`)."""
    n = sparse_csr.shape[0]
    directory.mkdir(parents=True)
    built = DenseIndex.build(dense, factory)
    built.save(directory / "dense.faiss")
    if len(dense) and not _exact_copy(built, dense):  # lossy codes (PQ, SQ): keep the vectors for merges
        np.save(directory / RAW_DENSE_FILE, np.ascontiguousarray(dense, dtype=np.float32), allow_pickle=False)
    if dense_owner is not None and len(dense_owner) != n:
        np.save(directory / OWNER_FILE, np.asarray(dense_owner, dtype=np.int32), allow_pickle=False)
    inv = ImpactIndex.from_csr(sparse_csr, bits=sparse_cfg["bits"], block_size=sparse_cfg["block_size"],
                               keep_top=sparse_cfg["keep_top"], keep_fraction=sparse_cfg["keep_fraction"],
                               forward=True, max_weight=sparse_cfg.get("max_weight"))
    inv.save(directory)
    bm25.save(directory)
    files = _seal(directory)
    return {"n_docs": n, "n_vectors": len(dense), "nnz": inv.nnz, "bm25_nnz": bm25.nnz, "bm25_terms": bm25.n_terms,
            "bm25_len": bm25.total_len, "files": files}


def _exact_copy(index: DenseIndex, vectors: np.ndarray) -> bool:
    """Whether the FAISS index gives back the first vectors bit for bit (Flat, HNSW, IVF-Flat do; PQ/SQ not)."""
    got = index.reconstruct(np.arange(min(len(vectors), 16)))
    return got is not None and np.array_equal(got, vectors[:len(got)])


def _seal(directory: Path) -> dict:
    """fsync every file of a new segment directory; their sizes and sha256 for the manifest."""
    files = {}
    for f in sorted(directory.iterdir()):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    _fsync_dir(directory)
    return files
