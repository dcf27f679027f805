"""Exception types raised at hylex's public API.

Every error a user can cause derives from :class:`HylexError`; its message says what was wrong and how to fix
it, in one line, so the command line can print it as is.
"""
from __future__ import annotations


class HylexError(Exception):
    """Base class of every user-facing hylex error."""


class CorpusError(HylexError, ValueError):
    """A corpus file or document is malformed (bad JSON, missing id or text, empty corpus)."""


class IndexFormatError(HylexError):
    """An index directory is missing, foreign, of another format version, or damaged."""


class ModelError(HylexError):
    """A model cannot be found, installed or loaded."""


class ResultTooLargeError(HylexError):
    """A search's documents would take more bytes than the caller allowed (``max_document_bytes``)."""


class IndexLockedError(HylexError):
    """Another writer holds an index's writer lock (and did not release it within the time waited)."""
