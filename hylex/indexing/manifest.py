"""The index's manifest, readable without FAISS, SciPy or the Numba kernels: its format constants, the checked
reader, and the summary ``hylex stats`` prints (so that command loads in well under a second)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import hylex
from hylex.errors import IndexFormatError

FORMAT = "hylex-index"
FORMAT_VERSION = 4  # 2: BM25 per segment; 3: quantized block-max sparse postings; 4: tombstones, merges
READABLE_VERSIONS = (3, 4)  # a version-3 directory is read as version 4 without deletions (and written as 4)
READABLE = " and ".join(map(str, READABLE_VERSIONS))
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
    if manifest["format_version"] == 3:  # no deletions or merges yet: the same data, read as version 4
        manifest = {**manifest, "format_version": FORMAT_VERSION, "next_row": int(manifest["n_docs"]),
                    "generation": 0, "garbage": [], "merge": dict(MERGE_DEFAULTS)}
    return manifest


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
    store_bytes = sum(f.stat().st_size for f in (path / "docs.lmdb").iterdir() if f.is_file())
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
