"""Documents, metadata and the external-id -> rows mapping in LMDB (JSON values, no pickle).

Two named databases: ``docs`` maps a global row (8-byte big-endian, so keys sort numerically) to the document's
record; ``ids`` maps the external id (UTF-8) to every row that ever held it, packed ascending (an upsert appends
a row, a merge appends the document's new row). The store may hold more than the index's manifest: rows of a
commit that never reached the manifest, or of segments merged away. The manifest decides which rows are live
(:meth:`hylex.indexing.Index.rows_of` picks an id's newest live row), so a crash between the store's transaction
and the manifest's replacement loses nothing that was acknowledged. LMDB transactions are durable and atomic,
and readers keep a consistent snapshot while a writer commits.

A record (index format 5) is a tag byte ``0x01``, the CRC-32 of the row's key and the JSON (4 bytes, big-endian),
then the JSON: written in the same transaction as the document, checked on every read, so a damaged record (or
one moved to another row) is a :class:`~hylex.errors.DocumentDamagedError`, never other text. Records written
by format 3 and 4 are the bare JSON (they begin with ``{``): still read, unverified; ``hylex merge`` rewrites
them with checksums, and ``hylex validate`` counts them.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from hylex.corpus import Document
from hylex.errors import DocumentDamagedError, IndexClosedError, IndexFormatError
from hylex.utils import close_lmdb, open_lmdb

_ROW = struct.Struct(">Q")


def _pack(rows: Sequence[int]) -> bytes:
    return np.asarray(rows, dtype=">u8").tobytes()


def _unpack(blob: bytes, ext: bytes = b"") -> list[int]:
    if len(blob) % _ROW.size:
        raise DocumentDamagedError(f"the rows of document id {ext.decode('utf-8', 'replace')!r} in the document "
                                   f"store are damaged ({len(blob)} bytes): `hylex validate` lists every problem; "
                                   f"rebuild the index")
    return np.frombuffer(blob, dtype=">u8").astype(np.int64).tolist()


def doc_json(d: Document) -> bytes:
    return json.dumps({"id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata},
                      ensure_ascii=False).encode("utf-8")


RECORD_TAG = 0x01  # a record with its checksum (index format 5); bare JSON (formats 3 and 4) begins with "{"


def encode_record(key: bytes, blob: bytes) -> bytes:
    """The stored value of the document JSON ``blob`` at row key ``key``: tag, CRC-32 of key + JSON, JSON."""
    return bytes((RECORD_TAG,)) + zlib.crc32(blob, zlib.crc32(key)).to_bytes(4, "big") + blob


def record_problem(key: bytes, value: bytes) -> str | None:
    """What is wrong with a stored value (None if sound, or a bare JSON record of formats 3 and 4, which carries
    no checksum): its checksum, its tag, or (bare) its JSON."""
    if value[:1] == b"{":
        return None
    if len(value) < 5 or value[0] != RECORD_TAG:
        return f"unknown record tag {value[:1].hex() or 'none'}"
    if zlib.crc32(value[5:], zlib.crc32(key)) != int.from_bytes(value[1:5], "big"):
        return "its checksum does not match"
    return None


def decode_record(key: bytes, value: bytes, where: Path) -> bytes:
    """The document JSON of a stored value, checked (:class:`DocumentDamagedError` naming the row if damaged)."""
    problem = record_problem(key, value)
    if problem is not None:
        raise DocumentDamagedError(f"the stored document at row {_ROW.unpack(key)[0]} of {where} is damaged "
                                   f"({problem}): `hylex validate` lists every problem; upsert the document again "
                                   f"or rebuild the index")
    return value if value[:1] == b"{" else value[5:]


def parse_record(blob: bytes, row: int, where: Path) -> dict:
    """A document dict from its JSON (checked: a bare record of formats 3 and 4 may be damaged unnoticed)."""
    try:
        doc = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as e:
        doc, why = None, f"not JSON: {e}"
    else:
        why = "not a document"
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("text"), str):
        raise DocumentDamagedError(f"the stored document at row {row} of {where} is damaged ({why}): rebuild the "
                                   f"index or upsert the document again")
    return doc


class DocStore:
    def __init__(self, path: str | os.PathLike, readonly: bool = False, map_size: int = 1 << 40,
                 create: bool = True):
        """Open the store at ``path``; ``create``: make it when missing (else a missing store is an
        :class:`IndexFormatError`: LMDB would silently make an empty one)."""
        self.path = Path(path)
        self._closed = True
        if not (self.path / "data.mdb").is_file():
            if not create or readonly:
                raise IndexFormatError(f"the document store {self.path} is missing (no data.mdb): the index is "
                                       f"damaged; restore the directory from a copy or rebuild the index")
            self.path.mkdir(parents=True, exist_ok=True)
        # map_size reserves address space only; the file grows with the data.
        self.env = open_lmdb(self.path, readonly=readonly, map_size=map_size, max_dbs=2, subdir=True,
                             readahead=False)
        self._closed = False
        try:
            self._docs = self.env.open_db(b"docs", create=not readonly)
            self._ids = self.env.open_db(b"ids", create=not readonly)
        except Exception as e:  # lmdb.Error: the main database's pages are damaged
            self.close()
            raise IndexFormatError(f"the document store {self.path} cannot be read ({e}): it is damaged; restore "
                                   f"it or rebuild the index") from None

    def _check_open(self) -> None:
        if self._closed:
            raise IndexClosedError(f"the document store {self.path} is closed: open the index again")

    def put(self, first_row: int, docs: Sequence[Document] | Sequence[bytes], ids: Sequence[str] | None = None) -> None:
        """Store documents at rows ``first_row ..`` in one transaction, each row appended to its id's rows, each
        record with its checksum.

        ``docs``: :class:`Document` objects, or their JSON blobs with ``ids`` (a merge copying documents).
        """
        self._check_open()
        with self.env.begin(write=True) as txn:
            for i, d in enumerate(docs):
                row = first_row + i
                if isinstance(d, Document):
                    ext, blob = d.id, doc_json(d)
                else:
                    ext, blob = ids[i], d
                key = _ROW.pack(row)
                txn.put(key, encode_record(key, blob), db=self._docs)
                key = ext.encode("utf-8")
                old = txn.get(key, db=self._ids)
                rows = [] if old is None else [r for r in _unpack(old, key) if r != row]
                txn.put(key, _pack(sorted(rows + [row])), db=self._ids)

    def rows(self, ids: Iterable[str]) -> list[list[int]]:
        """Every row each id has had (ascending; the caller decides which is live)."""
        self._check_open()
        out = []
        with self.env.begin(db=self._ids) as txn:
            for i in ids:
                key = i.encode("utf-8")
                v = txn.get(key)
                out.append([] if v is None else _unpack(v, key))
        return out

    def get(self, rows: Iterable[int]) -> list[dict | None]:
        """Documents at rows, as dicts ``{id, title, text, metadata}`` (None for a missing row); a damaged record
        is a :class:`DocumentDamagedError`."""
        rows = list(rows)
        return [None if v is None else parse_record(v, r, self.path) for r, v in zip(rows, self.get_raw(rows))]

    def get_raw(self, rows: Iterable[int]) -> list[bytes | None]:
        """The document JSON at rows (checked against its checksum; None for a missing row)."""
        self._check_open()
        out: list[bytes | None] = []
        with self.env.begin(db=self._docs) as txn:
            for r in rows:
                if r is None or r < 0:
                    out.append(None)
                    continue
                key = _ROW.pack(int(r))
                v = txn.get(key)
                out.append(None if v is None else decode_record(key, v, self.path))
        return out

    def records(self, start: int = 0, stop: int = 1 << 62) -> Iterator[tuple[int, bytes, bytes]]:
        """``(row, key, value)`` of the stored rows in ``[start, stop)``, unchecked, in row order (for ``hylex
        validate``, which reports what :func:`record_problem` finds instead of stopping at it)."""
        self._check_open()
        with self.env.begin(db=self._docs) as txn:
            cur = txn.cursor()
            if not cur.set_range(_ROW.pack(start)):
                return
            for k, v in cur:
                row = _ROW.unpack(k)[0] if len(k) == _ROW.size else -1
                if row >= stop:
                    break
                yield row, k, v

    def id_rows(self) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(id, packed rows)`` of the ids database, unchecked (``hylex validate``)."""
        self._check_open()
        with self.env.begin(db=self._ids) as txn:
            yield from txn.cursor().iternext()

    def scan(self, start: int, stop: int) -> Iterator[tuple[int, dict]]:
        """``(row, document)`` for the stored rows in ``[start, stop)``, in row order."""
        self._check_open()
        with self.env.begin(db=self._docs) as txn:
            cur = txn.cursor()
            if not cur.set_range(_ROW.pack(start)):
                return
            for k, v in cur:
                row = _ROW.unpack(k)[0]
                if row >= stop:
                    break
                yield row, parse_record(decode_record(k, v, self.path), row, self.path)

    def drop(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Delete the documents of rows in the half-open ``ranges`` and those rows from their ids. Returns the
        number of documents removed (rows left by interrupted commits, or of segments merged away)."""
        self._check_open()
        dropped = 0
        with self.env.begin(write=True) as txn:
            for start, stop in ranges:
                cur = txn.cursor(db=self._docs)
                stale = []
                if cur.set_range(_ROW.pack(start)):
                    for k, v in cur:
                        if _ROW.unpack(k)[0] >= stop:
                            break
                        try:
                            ext = parse_record(decode_record(k, v, self.path), 0, self.path)["id"]
                        except DocumentDamagedError:  # it goes anyway; its id's row list keeps a row nobody reads
                            ext = None
                        stale.append((k, ext))
                for k, ext in stale:
                    txn.delete(k, db=self._docs)
                    if ext is None:
                        dropped += 1
                        continue
                    key = ext.encode("utf-8")
                    old = txn.get(key, db=self._ids)
                    if old is not None and len(old) % _ROW.size == 0:
                        row = _ROW.unpack(k)[0]
                        rows = [r for r in _unpack(old) if r != row]
                        if rows:
                            txn.put(key, _pack(rows), db=self._ids)
                        else:
                            txn.delete(key, db=self._ids)
                    dropped += 1
        return dropped

    def truncate(self, n_rows: int) -> int:
        """Drop rows >= n_rows (left by a crash between the store commit and the manifest). Returns the count."""
        return self.drop([(n_rows, 1 << 62)])

    def count(self) -> int:
        self._check_open()
        with self.env.begin() as txn:
            return txn.stat(self._docs)["entries"]

    def sync(self) -> None:
        self._check_open()
        self.env.sync(True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close_lmdb(self.env)
