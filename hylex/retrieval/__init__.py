"""Retrieval: dense, sparse and BM25 search, fusion, the one Results type, evaluation."""
from hylex.retrieval.results import Results
from hylex.retrieval.searcher import Searcher, fuse_arms

__all__ = ["Results", "Searcher", "fuse_arms"]
