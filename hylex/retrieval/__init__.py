"""Retrieval: dense, sparse and BM25 search, fusion, metadata filters, the one Results type, evaluation."""
from hylex.retrieval.filters import FilterError, check_filter, delete_where, matching_rows
from hylex.retrieval.results import Results
from hylex.retrieval.searcher import Searcher, fuse_arms

__all__ = ["FilterError", "Results", "Searcher", "check_filter", "delete_where", "fuse_arms", "matching_rows"]
