"""The index's manifest, readable without FAISS, SciPy or the Numba kernels: its format constants, the checked
reader, and the summary ``hylex stats`` prints (so that command loads in well under a second)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import hylex
from hylex.errors import IndexFormatError

FORMAT = "hylex-index"
# 2: BM25 per segment; 3: quantized block-max sparse postings; 4: tombstones, merges; 5: a checksum in every
# stored document record (hylex.indexing.store)
FORMAT_VERSION = 5
# versions 3 and 4 are read as 5 (3: without deletions; both: their stored documents without checksums, which
# `hylex merge` adds) and written as 5
READABLE_VERSIONS = (3, 4, 5)
READABLE = ", ".join(map(str, READABLE_VERSIONS[:-1])) + f" and {READABLE_VERSIONS[-1]}"
MANIFEST = "manifest.json"
OWNER_FILE = "dense_owner.npy"
RAW_DENSE_FILE = "dense_raw.npy"  # float32 vectors, kept where the FAISS index cannot give them back exactly
# max_docs: the largest segment an automatic merge writes. Building a segment holds it in memory, ~10 KB per
# document here (benchmarks/scale.py: merging ten 100,000-document segments peaked at 10.1 GiB with a 64-d stub
# encoder), so the cap is what bounds indexing's peak memory however large the corpus grows. Manifests written
# before it existed read as this default.
MERGE_DEFAULTS = {"auto": True, "factor": 10, "max_deleted": 0.5, "max_docs": 250_000}


def read_manifest(path: str | os.PathLike) -> dict:
    """The checked manifest of an index directory (format and version), without loading any segment: a cheap
    way to fail early on a missing or foreign directory."""
    return _read_manifest(Path(path))


def _read_manifest(p: Path) -> dict:
    """The manifest of index directory ``p``, checked (format, version; version 3 read as 4)."""
    if p.exists() and not p.is_dir():
        raise IndexFormatError(f"{p} is a file, not an index directory: pass the directory given to "
                               f"`hylex index --index`")
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
                               f"({hylex.__version__}) reads versions {READABLE}: rebuild the index "
                               f"(`hylex index CORPUS --index NEW_DIR`) or use the hylex version that wrote it "
                               f"({manifest.get('libraries', {}).get('hylex')})")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise IndexFormatError(f"{p} has index format version {manifest.get('format_version')}, this hylex "
                               f"({hylex.__version__}) reads versions {READABLE}: rebuild the index or "
                               f"use the hylex version that wrote it ({manifest.get('libraries', {}).get('hylex')})")
    if manifest["format_version"] == 3:  # no deletions or merges yet: the same data, read as version 5
        manifest = {**manifest, "next_row": manifest.get("n_docs"), "generation": 0, "garbage": [],
                    "merge": dict(MERGE_DEFAULTS)}
    manifest = {**manifest, "format_version": FORMAT_VERSION}  # 4: records without checksums, read as they are
    problem = manifest_problem(manifest)
    if problem is not None:
        raise IndexFormatError(f"{mf} is damaged: {problem}: restore it from a copy, or rebuild the index")
    return manifest


# -- the manifest's shape ---------------------------------------------------------------------------------------
# A manifest of valid JSON may still be of the wrong shape (edited by hand, damaged): every field the code reads
# is checked when it is read, so each command fails in one line naming the field instead of deep inside.
_SEGMENT_NAME = re.compile(r"^seg-\d{6,}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # no path separators, no "..", no hidden files
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _kind(v) -> str:
    return "null" if v is None else {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                                     list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


class _Bad(Exception):
    pass


def _need(value, want: str, where: str):
    """``value`` if it is of kind ``want`` (int: a non-negative integer, pos: a positive one, num: a finite number,
    str, list, dict, name: a segment name, file: a file name), else _Bad naming ``where``."""
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
          "pos": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
          "num": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < float("inf"),
          "str": lambda v: isinstance(v, str), "list": lambda v: isinstance(v, list),
          "dict": lambda v: isinstance(v, dict),
          "name": lambda v: isinstance(v, str) and _SEGMENT_NAME.match(v) is not None,
          "file": lambda v: isinstance(v, str) and _FILE_NAME.match(v) is not None}[want](value)
    if not ok:
        what = {"int": "an integer >= 0", "pos": "an integer > 0", "num": "a number", "str": "a string",
                "list": "a list", "dict": "an object", "name": "a segment name (seg-NNNNNN)",
                "file": "a plain file name"}[want]
        shown = repr(value) if isinstance(value, (str, int, float)) and len(repr(value)) < 60 else _kind(value)
        raise _Bad(f"{where} must be {what}, got {shown}")
    return value


def _field(obj: dict, key: str, want: str, where: str, optional: bool = False):
    if key not in obj:
        if optional:
            return None
        raise _Bad(f"{where + '.' if where else ''}{key} is missing")
    return _need(obj[key], want, f"{where + '.' if where else ''}{key}")


def manifest_problem(m: dict) -> str | None:
    """What is wrong with the shape of a manifest (as read, version 3 and 4 converted), or None: the first field
    of the wrong type, missing, or out of order, named by its path (``segments[2].n_docs``)."""
    try:
        for key, want in (("n_docs", "int"), ("next_row", "int"), ("next_segment", "int"), ("generation", "int"),
                          ("segments", "list"), ("garbage", "list"), ("created", "str"), ("updated", "str"),
                          ("libraries", "dict"), ("encoder", "dict"), ("dense", "dict"), ("sparse", "dict"),
                          ("bm25", "dict")):
            _field(m, key, want, "")
        _field(m, "merge", "dict", "", optional=True)
        enc = m["encoder"]
        _field(enc, "model_id", "str", "encoder")
        _field(enc, "dim", "pos", "encoder")
        _field(enc, "vocab_size", "pos", "encoder")
        _field(enc, "settings", "dict", "encoder", optional=True)
        _field(m["dense"], "factory", "str", "dense")
        _field(m["dense"], "dim", "pos", "dense")
        _field(m["sparse"], "vocab_size", "pos", "sparse")
        for key in ("k1", "b"):
            _field(m["bm25"], key, "num", "bm25")
        _field(m["bm25"], "analyzer", "dict", "bm25")
        _field(m["bm25"], "total_len", "int", "bm25")
        names, end = set(), 0
        for i, seg in enumerate(m["segments"]):
            where = f"segments[{i}]"
            _need(seg, "dict", where)
            name = _field(seg, "name", "name", where)
            if name in names:
                raise _Bad(f"{where}.name {name!r} is listed twice")
            names.add(name)
            first, n = _field(seg, "row_offset", "int", where), _field(seg, "n_docs", "int", where)
            if first < end or first + n > m["next_row"]:
                raise _Bad(f"{where} holds rows {first}..{first + n}, overlapping the segment before it or past "
                           f"next_row {m['next_row']}")
            end = first + n
            for key in ("nnz", "bm25_len"):
                _field(seg, key, "int", where)
            for key in ("n_vectors", "bm25_nnz", "bm25_terms", "deleted", "bm25_deleted_len"):
                _field(seg, key, "int", where, optional=True)
            if seg.get("deleted", 0) > n:
                raise _Bad(f"{where}.deleted {seg['deleted']} exceeds its {n} documents")
            files = _field(seg, "files", "dict", where)
            if "dense.faiss" not in files:
                raise _Bad(f"{where}.files does not list dense.faiss")
            for fname, meta in files.items():
                _need(fname, "file", f"{where}.files key")
                _need(meta, "dict", f"{where}.files[{fname!r}]")
                _field(meta, "bytes", "int", f"{where}.files[{fname!r}]")
                if not _SHA256.match(str(_field(meta, "sha256", "str", f"{where}.files[{fname!r}]"))):
                    raise _Bad(f"{where}.files[{fname!r}].sha256 is not a sha256 hex digest")
            for key in ("deleted_file", "bm25_deleted_file"):
                if seg.get(key) is not None and _field(seg, key, "file", where) not in files:
                    raise _Bad(f"{where}.{key} {seg[key]!r} is not among its files")
            if seg.get("deleted_file") and seg.get("bm25_deleted_file") is None:
                raise _Bad(f"{where} has deleted_file but no bm25_deleted_file")
        for i, g in enumerate(m["garbage"]):
            where = f"garbage[{i}]"
            _need(g, "dict", where)
            _field(g, "generation", "int", where, optional=True)
            for j, pair in enumerate(_field(g, "files", "list", where, optional=True) or []):
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise _Bad(f"{where}.files[{j}] must be [segment, file]")
                _need(pair[0], "name", f"{where}.files[{j}][0]")
                _need(pair[1], "file", f"{where}.files[{j}][1]")
            for j, rows in enumerate(_field(g, "rows", "list", where, optional=True) or []):
                if not (isinstance(rows, list) and len(rows) == 2):
                    raise _Bad(f"{where}.rows[{j}] must be [first, stop]")
                _need(rows[0], "int", f"{where}.rows[{j}][0]")
                _need(rows[1], "int", f"{where}.rows[{j}][1]")
            for j, name in enumerate(_field(g, "segments", "list", where, optional=True) or []):
                _need(name, "name", f"{where}.segments[{j}]")
    except _Bad as e:
        return str(e)
    return None


def manifest_stats(path: str | os.PathLike, manifest: dict) -> dict:
    """What the index at ``path`` with ``manifest`` holds: counts, segments with sizes, encoder model and
    settings, format (:meth:`Index.stats`)."""
    path = Path(path)
    segs = []
    for seg in manifest["segments"]:
        segs.append({"name": seg["name"], "documents": int(seg["n_docs"]) - int(seg.get("deleted", 0)),
                     "deleted": int(seg.get("deleted", 0)), "first_row": int(seg["row_offset"]),
                     "dense_vectors": int(seg.get("n_vectors", seg["n_docs"])),
                     "sparse_postings": int(seg["nnz"]), "bm25_postings": int(seg.get("bm25_nnz", 0)),
                     "bytes": sum(int(f["bytes"]) for f in seg["files"].values())})
    store = path / "docs.lmdb"
    if not (store / "data.mdb").is_file() and manifest["segments"]:
        raise IndexFormatError(f"the document store {store} is missing (no data.mdb): the index is damaged; "
                               f"restore the directory from a copy or rebuild the index")
    store_bytes = sum(f.stat().st_size for f in store.iterdir() if f.is_file()) if store.is_dir() else 0
    return {"path": str(path), "format_version": manifest["format_version"],
            "generation": manifest.get("generation", 0), "sparse": manifest["sparse"],
            "hylex_version": manifest["libraries"].get("hylex"), "created": manifest["created"],
            "updated": manifest["updated"], "documents": int(manifest["n_docs"]),
            "deleted": sum(s["deleted"] for s in segs), "segments": segs,
            "segment_bytes": sum(s["bytes"] for s in segs), "store_bytes": store_bytes,
            "merge": {**MERGE_DEFAULTS, **manifest.get("merge", {})},
            "encoder": manifest["encoder"], "dense": manifest["dense"], "bm25": manifest["bm25"]}


def index_stats(path: str | os.PathLike) -> dict:
    """:func:`manifest_stats` of the index directory ``path``, from its manifest alone."""
    return manifest_stats(Path(path), _read_manifest(Path(path)))
