"""Index layer: FAISS dense index, hylex's inverted index, BM25 postings, LMDB document store, segments, manifest."""
from hylex.indexing.bm25 import Bm25Postings, bm25_search
from hylex.indexing.builder import build_index
from hylex.indexing.dense import DenseIndex
from hylex.indexing.index import FORMAT_VERSION, Index
from hylex.indexing.impact import ImpactIndex
from hylex.indexing.protocols import TextEncoder

__all__ = ["FORMAT_VERSION", "Bm25Postings", "DenseIndex", "ImpactIndex", "Index", "TextEncoder", "bm25_search",
           "build_index"]
