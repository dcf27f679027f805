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


class IndexClosedError(HylexError):
    """An :class:`~hylex.indexing.Index` handle was used after :meth:`~hylex.indexing.Index.close`."""


class StorageError(HylexError):
    """Writing to an index failed before its commit point (an I/O error): nothing of that write was committed,
    the index is as its last commit left it. ``status`` is the HTTP status the service answers with."""

    status = 503

    def __init__(self, message: str, base: str | None = None):
        super().__init__(message)
        # the message without its closing advice, for callers that give their own (``hylex index``: --resume)
        self.base = base if base is not None else message


class StorageFullError(StorageError):
    """The file system holding an index has no space left (ENOSPC, a quota, a short write, LMDB's map full)."""

    status = 507


class DocumentDamagedError(IndexFormatError):
    """A stored document does not match its checksum, is missing under a live row, or the document store's id
    mapping is inconsistent. The service answers it as a server fault (500 with ``{"error"}``), not a client
    mistake."""

    status = 500
