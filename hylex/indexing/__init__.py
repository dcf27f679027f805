"""Index layer: FAISS dense index, hylex's inverted index, BM25 postings, LMDB document store, segments, manifest.

The names are loaded on first use (PEP 562), so that a light module of this package (the manifest, the document
store) can be imported without FAISS, SciPy and the Numba kernels.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Bm25Postings": "hylex.indexing.bm25", "bm25_search": "hylex.indexing.bm25",
    "build_index": "hylex.indexing.builder", "DenseIndex": "hylex.indexing.dense",
    "FORMAT_VERSION": "hylex.indexing.index", "Index": "hylex.indexing.index",
    "ImpactIndex": "hylex.indexing.impact", "TextEncoder": "hylex.indexing.protocols",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from hylex.indexing.bm25 import Bm25Postings, bm25_search
    from hylex.indexing.builder import build_index
    from hylex.indexing.dense import DenseIndex
    from hylex.indexing.impact import ImpactIndex
    from hylex.indexing.index import FORMAT_VERSION, Index
    from hylex.indexing.protocols import TextEncoder


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hylex.indexing' has no attribute {name!r}")
