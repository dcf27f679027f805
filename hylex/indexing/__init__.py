"""Index layer: FAISS dense index, hylex's inverted index, LMDB document store, segments and manifest."""
from hylex.indexing.builder import build_index
from hylex.indexing.dense import DenseIndex
from hylex.indexing.index import FORMAT_VERSION, Index
from hylex.indexing.inverted import InvertedIndex
from hylex.indexing.protocols import TextEncoder

__all__ = ["FORMAT_VERSION", "DenseIndex", "Index", "InvertedIndex", "TextEncoder", "build_index"]
