"""The on-disk index: a versioned, self-describing directory of immutable segments plus an LMDB document store.

Layout::

    DIR/manifest.json            format, versions, encoder (model id, fingerprint, settings), dims, counts,
                                 BM25 settings (analyzer, k1, b) and total length, segments with their files'
                                 sizes and sha256
    DIR/docs.lmdb/               documents, metadata, external id <-> global row
    DIR/segments/seg-000000/     dense.faiss, impact_*.npy + impact_meta.json (quantized sparse postings in blocks
                                 and the forward index, :mod:`hylex.indexing.impact`), bm25_terms.npy, bm25_indptr.npy, bm25_docs.npy, bm25_tf.npy, bm25_doclen.npy
    DIR/.lock                    held by the one writer

Global rows are ``segment.row_offset + local row``. BM25 postings are per segment and keyed by term hashes;
their global statistics are summed over segments at query time (:mod:`hylex.indexing.bm25`). A commit writes
the new segment's files (fsynced, under a temporary name, then renamed), then the documents (one LMDB
transaction), then replaces the manifest atomically: a crash at any point leaves the previous manifest, which
names only complete segments, and rows it does not count are ignored and cleaned on the next commit. Deletions
(tombstones) and merges add fields without changing what is here.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

import hylex
from hylex.corpus import Document
from hylex.errors import HylexError, IndexFormatError
from hylex.indexing.bm25 import Bm25Postings, bm25_settings
from hylex.indexing.dense import DEFAULT_FACTORY, DenseIndex
from hylex.indexing.impact import ImpactIndex
from hylex.indexing.store import DocStore
from hylex.text import Bm25Analyzer
from hylex.utils import sha256_file

logger = logging.getLogger(__name__)

FORMAT = "hylex-index"
FORMAT_VERSION = 3  # 2: BM25 postings per segment; 3: quantized block-max sparse postings + forward index
MANIFEST = "manifest.json"
OWNER_FILE = "dense_owner.npy"


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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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


class Index:
    """A hylex index directory opened for search (and, with ``writable=True``, for adding documents).

    Use :meth:`create` for a new directory and :meth:`open` for an existing one.
    """

    def __init__(self, path: Path, manifest: dict, writable: bool, mmap: bool = True):
        self.path = path
        self.manifest = manifest
        self.writable = writable
        self._lock_fd = None
        self.store = None
        self._analyzer: Bm25Analyzer | None = None
        if writable:
            self._acquire_lock()
        try:
            self.store = DocStore(path / "docs.lmdb")
            self.segments: list[Segment] = [self._load_segment(s, mmap) for s in manifest["segments"]]
        except BaseException:
            self.close()  # release the writer lock and the store when a segment cannot be loaded
            raise

    # -- creation / opening ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, encoder: dict, dense_factory: str = DEFAULT_FACTORY,
               bm25: dict | None = None, sparse: dict | None = None) -> "Index":
        """Create an empty index at ``path`` for vectors from ``encoder`` (an ``Encoder.describe()`` dict).

        ``sparse``: how sparse postings are stored, ``{"bits": 8|16, "block_size", "keep_top", "keep_fraction"}``
        (defaults: 16-bit impacts, blocks of 64, no static pruning; see :func:`sparse_settings`).

        ``bm25``: the BM25 arm's settings, ``{"k1", "b", "stemmer", "stopwords"}`` or ``{"k1", "b", "analyzer"}``
        (defaults: k1 0.9, b 0.4, English stemming and stopwords); k1 and b are the defaults of searches.
        """
        p = Path(path)
        if (p / MANIFEST).exists():
            raise HylexError(f"{p} already holds a hylex index: open it to add documents, or choose a new "
                             f"directory")
        if p.exists() and any(p.iterdir()):
            raise HylexError(f"{p} exists and is not empty, and is not a hylex index: choose an empty or new "
                             f"directory")
        for key in ("model_id", "dim", "vocab_size", "settings"):
            if key not in encoder:
                raise HylexError(f"encoder description lacks {key!r}: pass Encoder.describe()")
        # Validate the factory string and the BM25 settings now, before anything is written.
        _check_factory(int(encoder["dim"]), dense_factory)
        bm25_cfg = bm25_settings(bm25)
        sparse_cfg = sparse_settings(sparse)
        p.mkdir(parents=True, exist_ok=True)
        (p / "segments").mkdir(exist_ok=True)
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "created": now, "updated": now,
            "libraries": _library_versions(), "encoder": encoder,
            "dense": {"factory": dense_factory, "metric": "inner_product", "dim": int(encoder["dim"])},
            "sparse": {"vocab_size": int(encoder["vocab_size"]), "format": "impact", **sparse_cfg},
            "bm25": {**bm25_cfg, "idf": "lucene", "total_len": 0},
            "n_docs": 0, "next_segment": 0, "segments": [],
        }
        _write_json_atomic(p / MANIFEST, manifest)
        return cls(p, manifest, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike, writable: bool = False, mmap: bool = True) -> "Index":
        """Open an existing index; checks its format, version and files, with errors naming what is wrong."""
        p = Path(path)
        if not p.is_dir():
            raise IndexFormatError(f"index directory {p} does not exist: build one with `hylex index CORPUS "
                                   f"--index {p}`")
        mf = p / MANIFEST
        if not mf.exists():
            raise IndexFormatError(f"{p} is not a hylex index (no {MANIFEST}): pass the directory given to "
                                   f"`hylex index --index`")
        try:
            manifest = json.loads(mf.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexFormatError(f"{mf} is damaged ({e}): rebuild the index") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise IndexFormatError(f"{p} is not a hylex index (manifest format is "
                                   f"{manifest.get('format') if isinstance(manifest, dict) else None!r}): "
                                   f"pass a directory made by `hylex index`")
        if manifest.get("format_version") in (1, 2):
            raise IndexFormatError(f"{p} has index format version {manifest.get('format_version')} (float sparse "
                                   f"postings{'' if manifest.get('format_version') == 2 else ', no BM25'}); this hylex "
                                   f"({hylex.__version__}) reads version {FORMAT_VERSION}: rebuild the index "
                                   f"(`hylex index CORPUS --index NEW_DIR`) or use the hylex version that wrote it "
                                   f"({manifest.get('libraries', {}).get('hylex')})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(f"{p} has index format version {manifest.get('format_version')}, this hylex "
                                   f"({hylex.__version__}) reads version {FORMAT_VERSION}: rebuild the index or "
                                   f"use the hylex version that wrote it ({manifest.get('libraries', {}).get('hylex')})")
        for seg in manifest["segments"]:
            for fname, meta in seg["files"].items():
                f = p / "segments" / seg["name"] / fname
                if not f.exists():
                    raise IndexFormatError(f"index file {f} is missing: the index is damaged, rebuild it")
                if f.stat().st_size != meta["bytes"]:
                    raise IndexFormatError(f"index file {f} has {f.stat().st_size} bytes, the manifest says "
                                           f"{meta['bytes']}: the file is damaged, rebuild the index")
        return cls(p, manifest, writable=writable, mmap=mmap)

    def _acquire_lock(self) -> None:
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HylexError(f"another process is writing to index {self.path}: wait for it to finish") from None
        self._lock_fd = fd

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load_segment(self, seg: dict, mmap: bool) -> Segment:
        d = self.path / "segments" / seg["name"]
        return Segment(seg["name"], int(seg["row_offset"]), int(seg["n_docs"]),
                       DenseIndex.load(d / "dense.faiss", self.manifest["dense"]["factory"], mmap=mmap),
                       _load_sparse(d, int(seg["n_docs"]), mmap),
                       Bm25Postings.load(d, mmap=mmap, total_len=seg["bm25_len"]),
                       np.load(d / OWNER_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
                       if OWNER_FILE in seg["files"] else None)

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def n_docs(self) -> int:
        return int(self.manifest["n_docs"])

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

    # -- writing ---------------------------------------------------------------------------------------------
    def add(self, docs: Sequence[Document], dense: np.ndarray, sparse: sp.csr_matrix,
            dense_owner: np.ndarray | None = None) -> int:
        """Commit ``docs`` with their encodings as one new segment; returns the segment's first global row.

        ``dense`` float32 (n, dim), or (m, dim) chunk vectors with ``dense_owner`` int (m,) giving each vector's
        document (0..n-1, ascending, every document at least once); ``sparse`` float32 csr (n, vocab_size).
        Everything is validated before anything is written; on return the batch is durable.
        """
        if not self.writable:
            raise HylexError(f"index {self.path} is open read-only: open it with writable=True to add documents")
        n = len(docs)
        if n == 0:
            raise HylexError("no documents to add: pass at least one document")
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
        ids = [d.id for d in docs]
        if len(set(ids)) != n:
            seen, dup = set(), None
            for i in ids:
                if i in seen:
                    dup = i
                    break
                seen.add(i)
            raise HylexError(f"document id {dup!r} appears twice in the batch: ids must be unique")
        existing = [i for i, r in zip(ids, self.store.rows_of(ids, self.n_docs)) if r is not None]
        if existing:
            raise HylexError(f"{len(existing)} document id(s) are already in the index (first: {existing[0]!r}): "
                             f"ids must be unique; index into a new directory to rebuild")

        # Rows beyond the manifest were left by an interrupted commit: clear them before reusing the rows.
        dropped = self.store.truncate(self.n_docs)
        if dropped:
            logger.warning("dropped %d uncommitted documents left by an interrupted commit", dropped)
        seq = int(self.manifest["next_segment"])
        name = f"seg-{seq:06d}"
        final = self.path / "segments" / name
        tmp = self.path / "segments" / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():  # an interrupted commit renamed it but never reached the manifest
            shutil.rmtree(final)
        tmp.mkdir(parents=True)
        DenseIndex.build(dense, self.manifest["dense"]["factory"]).save(tmp / "dense.faiss")
        if dense_owner is not None and rows != n:
            np.save(tmp / OWNER_FILE, dense_owner.astype(np.int32), allow_pickle=False)
        cfg = self.manifest["sparse"]
        inv = ImpactIndex.from_csr(sparse, bits=cfg["bits"], block_size=cfg["block_size"], keep_top=cfg["keep_top"],
                                   keep_fraction=cfg["keep_fraction"], forward=True,
                                   max_weight=cfg.get("max_weight"))
        inv.save(tmp)
        bm = Bm25Postings.from_tokens(self.bm25_analyzer.analyze([d.full_text for d in docs]))
        bm.save(tmp)
        files = {}
        for f in sorted(tmp.iterdir()):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(final.parent)

        first = self.n_docs
        self.store.put(first, docs)
        self.store.sync()
        manifest = dict(self.manifest)
        manifest["segments"] = list(self.manifest["segments"]) + [
            {"name": name, "row_offset": first, "n_docs": n, "n_vectors": rows, "nnz": inv.nnz, "bm25_nnz": bm.nnz,
             "bm25_terms": bm.n_terms, "bm25_len": bm.total_len, "files": files}]
        manifest["n_docs"] = first + n
        manifest["bm25"] = {**self.manifest["bm25"],
                            "total_len": int(self.manifest["bm25"]["total_len"]) + bm.total_len}
        manifest["next_segment"] = seq + 1
        manifest["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        _write_json_atomic(self.path / MANIFEST, manifest)
        self.manifest = manifest
        self.segments.append(self._load_segment(manifest["segments"][-1], mmap=True))
        logger.info("committed segment %s: %d documents, %d sparse and %d BM25 postings", name, n, inv.nnz, bm.nnz)
        return first

    # -- reading ---------------------------------------------------------------------------------------------
    def documents(self, rows: Sequence[int]) -> list[dict | None]:
        """Stored documents ``{id, title, text, metadata}`` of global rows (None for -1 / missing)."""
        return [None if r is None or r < 0 or r >= self.n_docs else d
                for r, d in zip(rows, self.store.get([int(r) if r is not None else -1 for r in rows]))]

    def rows_of(self, ids: Sequence[str]) -> list[int | None]:
        return self.store.rows_of(ids, self.n_docs)

    def stats(self) -> dict:
        """What the index holds: counts, segments with sizes, encoder model and settings, format."""
        segs = []
        for seg in self.manifest["segments"]:
            segs.append({"name": seg["name"], "documents": int(seg["n_docs"]),
                         "dense_vectors": int(seg.get("n_vectors", seg["n_docs"])),
                         "sparse_postings": int(seg["nnz"]), "bm25_postings": int(seg.get("bm25_nnz", 0)),
                         "bytes": sum(int(f["bytes"]) for f in seg["files"].values())})
        store_bytes = sum(f.stat().st_size for f in (self.path / "docs.lmdb").iterdir() if f.is_file())
        return {"path": str(self.path), "format_version": self.manifest["format_version"],
                "sparse": self.manifest["sparse"],
                "hylex_version": self.manifest["libraries"].get("hylex"), "created": self.manifest["created"],
                "updated": self.manifest["updated"], "documents": self.n_docs, "deleted": 0,
                "segments": segs, "segment_bytes": sum(s["bytes"] for s in segs), "store_bytes": store_bytes,
                "encoder": self.encoder_info, "dense": self.manifest["dense"], "bm25": self.manifest["bm25"]}

    def validate(self) -> list[str]:
        """Full check (file checksums, counts); returns a list of problems (empty when sound)."""
        problems = []
        total = 0
        for seg in self.manifest["segments"]:
            for fname, meta in seg["files"].items():
                f = self.path / "segments" / seg["name"] / fname
                if not f.exists():
                    problems.append(f"{f}: missing")
                elif sha256_file(f) != meta["sha256"]:
                    problems.append(f"{f}: checksum mismatch (damaged)")
            total += int(seg["n_docs"])
        if total != self.n_docs:
            problems.append(f"manifest counts {self.n_docs} documents but its segments hold {total}")
        for s in self.segments:
            n_vec = s.n_docs if s.dense_owner is None else len(s.dense_owner)
            if s.dense.ntotal != n_vec or s.sparse.n_docs != s.n_docs:
                problems.append(f"segment {s.name}: {s.dense.ntotal} dense vectors, expected {n_vec} for "
                                f"{s.n_docs} documents")
            if s.bm25.n_docs != s.n_docs:
                problems.append(f"segment {s.name}: BM25 lengths of {s.bm25.n_docs} documents for {s.n_docs}")
            elif int(np.asarray(s.bm25.doc_len, dtype=np.float64).sum()) != s.bm25.total_len:
                problems.append(f"segment {s.name}: BM25 document lengths sum to other than the manifest's "
                                f"{s.bm25.total_len}")
        bm25_total = sum(int(seg["bm25_len"]) for seg in self.manifest["segments"])
        if bm25_total != int(self.manifest["bm25"]["total_len"]):
            problems.append(f"manifest's BM25 total length {self.manifest['bm25']['total_len']} is not its "
                            f"segments' sum {bm25_total}")
        if self.store.count() < self.n_docs:
            problems.append(f"document store holds {self.store.count()} documents, manifest {self.n_docs}")
        return problems


# 16-bit impacts on one fixed scale (16 / 65535 ~ 2.4e-4 per step): every segment quantizes a weight the same way,
# so a multi-segment index scores exactly like one built at once. log(1 + relu(logit)) stays far below 16.
SPARSE_DEFAULTS = {"bits": 16, "block_size": 64, "keep_top": None, "keep_fraction": None, "max_weight": 16.0}


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


def _load_sparse(d: Path, n_docs: int, mmap: bool) -> ImpactIndex:
    try:
        sparse = ImpactIndex.load(d, mmap=mmap)
    except (ValueError, OSError, KeyError) as e:
        raise IndexFormatError(f"sparse postings in {d} cannot be read ({e}): the index is damaged, rebuild it") from e
    if sparse.n_docs != n_docs:
        raise IndexFormatError(f"sparse postings in {d} hold {sparse.n_docs} documents, the manifest says {n_docs}: "
                               f"the index is damaged, rebuild it")
    return sparse


def _check_factory(dim: int, factory: str) -> None:
    import faiss

    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise HylexError(f"FAISS cannot build index {factory!r}: {str(e).splitlines()[0]}. Use a valid "
                         f"index-factory string such as Flat, HNSW32, IVF256,Flat or IVF256,PQ16") from e
