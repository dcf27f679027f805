"""Retrieval: dense, sparse and BM25 search, fusion, metadata filters, the one Results type, evaluation.

The names are loaded on first use (PEP 562), so that a light module of this package (the stored fusion read by
``hylex stats``) can be imported without FAISS, SciPy and the Numba kernels.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FilterError": "hylex.retrieval.filters", "check_filter": "hylex.retrieval.filters",
    "delete_where": "hylex.retrieval.filters", "matching_rows": "hylex.retrieval.filters",
    "Results": "hylex.retrieval.results", "Searcher": "hylex.retrieval.searcher",
    "fuse_arms": "hylex.retrieval.searcher", "stored_fusion": "hylex.retrieval.fusion",
    "choose_fusion": "hylex.retrieval.fusion",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from hylex.retrieval.filters import FilterError, check_filter, delete_where, matching_rows
    from hylex.retrieval.fusion import choose_fusion, stored_fusion
    from hylex.retrieval.results import Results
    from hylex.retrieval.searcher import Searcher, fuse_arms


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hylex.retrieval' has no attribute {name!r}")
