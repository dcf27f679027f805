"""``hylex validate``: every check of an index directory, each read made defensively.

An index proves its integrity in three layers: the manifest's shape (:func:`hylex.indexing.manifest.manifest_problem`,
checked whenever it is read); every segment file's size and sha256 against the manifest; every stored document
record against its own checksum (:mod:`hylex.indexing.store`), with the id -> rows mapping consistent with the
records. On top, the loaded segments' counts and BM25 statistics must agree with the manifest and the store.

:func:`check_directory` never raises and never loads a file whose checksum failed (a damaged FAISS or NumPy header
made the loaders throw arbitrary errors): each problem is one line, ``segment seg-000001: file dense.faiss is
damaged (checksum mismatch)``. A check that fails unexpectedly is itself reported as a problem.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hylex.errors import HylexError
from hylex.utils import sha256_file

logger = logging.getLogger(__name__)


@dataclass
class Report:
    """What :func:`check_directory` found: ``problems`` (each one line; none when sound), ``notes`` (facts that are
    not problems, e.g. documents stored before record checksums) and the live documents counted."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_docs: int | None = None


def unlisted_files(directory: Path, listed) -> list[str]:
    """Files a segment's loaders read that its manifest entry does not list (so no checksum covers them): the
    required ones wherever they are, the optional ones (forward index, chunk owners, raw vectors) when on disk."""
    from hylex.indexing import bm25, impact
    from hylex.indexing.manifest import OWNER_FILE, RAW_DENSE_FILE

    required = {"dense.faiss", impact.META_FILE, *bm25.FILES, *(f"impact_{a}.npy" for a in impact.ARRAYS)}
    try:
        present = {f for f in os.listdir(directory)
                   if f in (OWNER_FILE, RAW_DENSE_FILE) or (f.startswith("impact_") and f.endswith(".npy"))}
    except OSError:
        present = set()
    return sorted((required | present) - set(listed))


def file_problems(path: Path, manifest: dict) -> tuple[list[str], set[str]]:
    """Each segment file the manifest lists, against its size and sha256, and every file its loaders read listed:
    ``(problems, damaged segment names)``."""
    problems: list[str] = []
    damaged: set[str] = set()
    for seg in manifest["segments"]:
        for fname in unlisted_files(path / "segments" / seg["name"], seg["files"]):
            damaged.add(seg["name"])
            problems.append(f"segment {seg['name']}: file {fname} is not listed in the manifest (no checksum covers "
                            f"it): the manifest is damaged")
        for fname, meta in seg["files"].items():
            f = path / "segments" / seg["name"] / fname
            why = None
            try:
                if not f.is_file():
                    why = "missing"
                elif f.stat().st_size != meta["bytes"]:
                    why = f"{f.stat().st_size} bytes, the manifest says {meta['bytes']}: truncated or damaged"
                elif sha256_file(f) != meta["sha256"]:
                    why = "checksum mismatch"
            except OSError as e:
                why = f"cannot be read: {e.strerror or e}"
            if why is not None:
                damaged.add(seg["name"])
                problems.append(f"segment {seg['name']}: file {fname} is "
                                f"{'missing' if why == 'missing' else f'damaged ({why})'}")
    return problems, damaged


def store_problems(store) -> tuple[list[str], list[str]]:
    """Every record of a :class:`~hylex.indexing.store.DocStore` against its checksum, and the id -> rows mapping
    against the records (each row an id lists holds a document of that id, and each document's row is listed):
    ``(problems, notes)``. Grouped by kind, the first rows named."""
    from hylex.indexing.store import parse_record, record_problem

    damaged: list[tuple[int, str]] = []
    legacy = 0
    id_of: dict[int, str] = {}
    for row, key, value in store.records():
        problem = record_problem(key, value) if row >= 0 else "its key is not a row number"
        if problem is None:
            legacy += value[:1] == b"{"
            try:
                id_of[row] = parse_record(value if value[:1] == b"{" else value[5:], row, store.path)["id"]
            except HylexError:
                problem = "not a readable document (bare JSON of an older format, no checksum)"
        if problem is not None:
            damaged.append((row, problem))
    problems = []
    if damaged:
        problems.append(f"document store: {len(damaged)} stored document(s) are damaged (row {damaged[0][0]}: "
                        f"{damaged[0][1]}" + (f"; also rows {', '.join(str(r) for r, _ in damaged[1:6])}"
                                              if len(damaged) > 1 else "") + "): upsert them again or rebuild")
    damaged_rows = {r for r, _ in damaged}
    bad_ids, wrong, listed = [], [], set()
    for ext, packed in store.id_rows():
        name = ext.decode("utf-8", "replace")
        if len(packed) % 8:
            bad_ids.append(name)
            continue
        for r in np.frombuffer(packed, dtype=">u8").tolist():
            listed.add(r)
            if r not in damaged_rows and id_of.get(r) != name:
                wrong.append((name, r))
    if bad_ids:
        problems.append(f"document store: the rows of {len(bad_ids)} id(s) are damaged (first {bad_ids[0]!r})")
    if wrong:
        name, r = wrong[0]
        problems.append(f"document store: {len(wrong)} id -> row entries point to no document of that id (first "
                        f"{name!r} -> row {r}, which holds {id_of.get(r)!r})")
    unlisted = sorted(set(id_of) - listed)
    if unlisted and not bad_ids:
        problems.append(f"document store: {len(unlisted)} stored document(s) are not listed under their id (first "
                        f"row {unlisted[0]}, id {id_of[unlisted[0]]!r})")
    notes = []
    if legacy:
        notes.append(f"{legacy} stored document(s) predate record checksums (written by index format 4 or older): "
                     f"they are read unverified; `hylex merge` rewrites them with checksums")
    return problems, notes


def loaded_problems(index) -> list[str]:
    """Checks of an open :class:`~hylex.indexing.Index` beyond its files: counts against the manifest, BM25
    statistics against the tombstones, every live document stored and its id's live row. Damaged records are
    skipped here (:func:`store_problems` reports them)."""
    from hylex.indexing.bm25 import deleted_df
    from hylex.indexing.store import parse_record, record_problem

    problems = []
    live = sum(int(seg["n_docs"]) - int(seg.get("deleted", 0)) for seg in index.manifest["segments"])
    if live != index.n_docs:
        problems.append(f"manifest counts {index.n_docs} live documents but its segments hold {live}")
    for s in index.segments:
        n_vec = s.n_docs if s.dense_owner is None else len(s.dense_owner)
        if s.dense.ntotal != n_vec or s.sparse.n_docs != s.n_docs:
            problems.append(f"segment {s.name}: {s.dense.ntotal} dense vectors, expected {n_vec} for "
                            f"{s.n_docs} documents")
        if s.bm25.n_docs != s.n_docs:
            problems.append(f"segment {s.name}: BM25 lengths of {s.bm25.n_docs} documents for {s.n_docs}")
        elif int(np.asarray(s.bm25.doc_len, dtype=np.float64).sum()) != s.bm25.total_len:
            problems.append(f"segment {s.name}: BM25 document lengths sum to other than the manifest's "
                            f"{s.bm25.total_len}")
        if s.deleted is not None:
            if not np.array_equal(deleted_df(s.bm25, s.deleted), s.bm25_deleted[0]):
                problems.append(f"segment {s.name}: the deleted documents' BM25 frequencies do not match its "
                                f"tombstones")
        stored: dict[int, str | None] = {}  # row -> id (None: damaged, reported by store_problems)
        for row, key, value in index.store.records(s.row_offset, s.row_offset + s.n_docs):
            try:
                ok = record_problem(key, value) is None
                stored[row] = parse_record(value if value[:1] == b"{" else value[5:], row, index.path)["id"] \
                    if ok else None
            except HylexError:
                stored[row] = None
        live_rows = [s.row_offset + i for i in range(s.n_docs) if s.deleted is None or not s.deleted[i]]
        missing = [r for r in live_rows if r not in stored]
        if missing:
            problems.append(f"segment {s.name}: the document store lacks {len(missing)} of its live documents "
                            f"(first row {missing[0]})")
            continue
        bad = []
        for r in live_rows:
            if stored[r] is None:
                continue
            try:
                if index.rows_of([stored[r]])[0] != r:
                    bad.append(stored[r])
            except HylexError:
                bad.append(stored[r])
        if bad:
            problems.append(f"segment {s.name}: {len(bad)} live documents are not their id's live row (first "
                            f"{bad[0]!r}): an id is live twice, or its rows are damaged")
    bm25_total = sum(int(seg["bm25_len"]) - int(seg.get("bm25_deleted_len", 0)) for seg in index.manifest["segments"])
    if bm25_total != int(index.manifest["bm25"]["total_len"]):
        problems.append(f"manifest's BM25 total length {index.manifest['bm25']['total_len']} is not its segments' "
                        f"live sum {bm25_total}")
    return problems


def check_index(index) -> Report:
    """Every check of an open index handle (:meth:`hylex.indexing.Index.validate`)."""
    report = Report(n_docs=index.n_docs)
    report.problems += _guarded("the segment files", lambda: file_problems(index.path, index.manifest)[0])
    report.problems += _guarded("the loaded segments", lambda: loaded_problems(index))
    report.problems += _guarded("the document store", lambda: _store_into(report, index.store))
    return report


def check_directory(path: str | os.PathLike) -> Report:
    """Every check of the index directory ``path``; never raises. Segments whose files fail their checksums are
    not loaded: their files are reported, the document store is still checked on its own."""
    from hylex.indexing.index import Index
    from hylex.indexing.manifest import read_manifest
    from hylex.indexing.store import DocStore

    path = Path(path)
    report = Report()
    try:
        manifest = read_manifest(path)
    except HylexError as e:
        report.problems.append(str(e))
        return report
    except Exception as e:  # noqa: BLE001 - validate reports, it does not crash
        report.problems.append(f"the manifest of {path} cannot be read ({type(e).__name__}: {e})")
        return report
    report.n_docs = int(manifest["n_docs"])
    problems, damaged = file_problems(path, manifest)
    report.problems += problems
    if not damaged:
        def whole() -> list[str]:
            with Index.open(path, verify=False) as ix:  # every file's sha256 was just checked
                out = loaded_problems(ix)
                return out + _store_into(report, ix.store)
        report.problems += _guarded("the index", whole)
        return report

    def store_only() -> list[str]:
        store = DocStore(path / "docs.lmdb", create=False)
        try:
            return _store_into(report, store)
        finally:
            store.close()
    report.problems += _guarded("the document store", store_only)
    return report


def _store_into(report: Report, store) -> list[str]:
    problems, notes = store_problems(store)
    report.notes += notes
    return problems


def _guarded(what: str, check: Callable[[], list[str]]) -> list[str]:
    """``check()``'s problems; a check that raises is one problem line (a HylexError's message as it is)."""
    try:
        return check()
    except HylexError as e:
        return [str(e)]
    except Exception as e:  # noqa: BLE001 - lmdb.Error on damaged pages, a loader's error: reported, not raised
        logger.debug("checking %s failed", what, exc_info=True)
        return [f"{what} cannot be checked ({type(e).__name__}: {' '.join(str(e).split())[:200]}): damaged"]
