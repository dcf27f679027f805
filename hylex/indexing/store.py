"""Documents, metadata and the external-id -> rows mapping in LMDB (JSON values, no pickle).

Two named databases: ``docs`` maps a global row (8-byte big-endian, so keys sort numerically) to the document's
JSON; ``ids`` maps the external id (UTF-8) to every row that ever held it, packed ascending (an upsert appends
a row, a merge appends the document's new row). The store may hold more than the index's manifest: rows of a
commit that never reached the manifest, or of segments merged away. The manifest decides which rows are live
(:meth:`hylex.indexing.Index.rows_of` picks an id's newest live row), so a crash between the store's transaction
and the manifest's replacement loses nothing that was acknowledged. LMDB transactions are durable and atomic,
and readers keep a consistent snapshot while a writer commits.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from hylex.corpus import Document
from hylex.utils import close_lmdb, open_lmdb

_ROW = struct.Struct(">Q")


def _pack(rows: Sequence[int]) -> bytes:
    return np.asarray(rows, dtype=">u8").tobytes()


def _unpack(blob: bytes) -> list[int]:
    return np.frombuffer(blob, dtype=">u8").astype(np.int64).tolist()


def doc_json(d: Document) -> bytes:
    return json.dumps({"id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata},
                      ensure_ascii=False).encode("utf-8")


class DocStore:
    def __init__(self, path: str | os.PathLike, readonly: bool = False, map_size: int = 1 << 40):
        self.path = Path(path)
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        # map_size reserves address space only; the file grows with the data.
        self.env = open_lmdb(self.path, readonly=readonly, map_size=map_size, max_dbs=2, subdir=True,
                             readahead=False)
        self._closed = False
        self._docs = self.env.open_db(b"docs", create=not readonly)
        self._ids = self.env.open_db(b"ids", create=not readonly)

    def put(self, first_row: int, docs: Sequence[Document] | Sequence[bytes], ids: Sequence[str] | None = None) -> None:
        """Store documents at rows ``first_row ..`` in one transaction, each row appended to its id's rows.

        ``docs``: :class:`Document` objects, or their stored JSON blobs with ``ids`` (a merge copying documents).
        """
        with self.env.begin(write=True) as txn:
            for i, d in enumerate(docs):
                row = first_row + i
                if isinstance(d, Document):
                    ext, blob = d.id, doc_json(d)
                else:
                    ext, blob = ids[i], d
                txn.put(_ROW.pack(row), blob, db=self._docs)
                key = ext.encode("utf-8")
                old = txn.get(key, db=self._ids)
                rows = [] if old is None else [r for r in _unpack(old) if r != row]
                txn.put(key, _pack(sorted(rows + [row])), db=self._ids)

    def rows(self, ids: Iterable[str]) -> list[list[int]]:
        """Every row each id has had (ascending; the caller decides which is live)."""
        out = []
        with self.env.begin(db=self._ids) as txn:
            for i in ids:
                v = txn.get(i.encode("utf-8"))
                out.append([] if v is None else _unpack(v))
        return out

    def get(self, rows: Iterable[int]) -> list[dict | None]:
        """Documents at rows, as dicts ``{id, title, text, metadata}`` (None for a missing row)."""
        return [None if v is None else json.loads(v) for v in self.get_raw(rows)]

    def get_raw(self, rows: Iterable[int]) -> list[bytes | None]:
        out: list[bytes | None] = []
        with self.env.begin(db=self._docs) as txn:
            for r in rows:
                out.append(txn.get(_ROW.pack(int(r))) if r is not None and r >= 0 else None)
        return out

    def scan(self, start: int, stop: int) -> Iterator[tuple[int, dict]]:
        """``(row, document)`` for the stored rows in ``[start, stop)``, in row order."""
        with self.env.begin(db=self._docs) as txn:
            cur = txn.cursor()
            if not cur.set_range(_ROW.pack(start)):
                return
            for k, v in cur:
                row = _ROW.unpack(k)[0]
                if row >= stop:
                    break
                yield row, json.loads(v)

    def drop(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Delete the documents of rows in the half-open ``ranges`` and those rows from their ids. Returns the
        number of documents removed (rows left by interrupted commits, or of segments merged away)."""
        dropped = 0
        with self.env.begin(write=True) as txn:
            for start, stop in ranges:
                cur = txn.cursor(db=self._docs)
                stale = []
                if cur.set_range(_ROW.pack(start)):
                    for k, v in cur:
                        if _ROW.unpack(k)[0] >= stop:
                            break
                        stale.append((k, json.loads(v)["id"]))
                for k, ext in stale:
                    txn.delete(k, db=self._docs)
                    key = ext.encode("utf-8")
                    old = txn.get(key, db=self._ids)
                    if old is not None:
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
        with self.env.begin() as txn:
            return txn.stat(self._docs)["entries"]

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close_lmdb(self.env)
