"""Documents, metadata and the external-id <-> row mapping in LMDB (JSON values, no pickle).

Two named databases: ``docs`` maps a row (8-byte big-endian, so keys sort numerically) to the document's JSON;
``ids`` maps the external id (UTF-8) to its row. One write transaction per committed batch: LMDB makes it
durable and atomic, and readers keep a consistent snapshot while a writer commits.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

from hylex.corpus import Document
from hylex.utils import close_lmdb, open_lmdb

_ROW = struct.Struct(">Q")

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

    def put(self, first_row: int, docs: Sequence[Document]) -> None:
        """Store ``docs`` at rows ``first_row ..`` in one transaction."""
        with self.env.begin(write=True) as txn:
            for i, d in enumerate(docs):
                row = _ROW.pack(first_row + i)
                blob = json.dumps({"id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata},
                                  ensure_ascii=False).encode("utf-8")
                txn.put(row, blob, db=self._docs)
                txn.put(d.id.encode("utf-8"), row, db=self._ids)

    def rows_of(self, ids: Iterable[str], limit: int) -> list[int | None]:
        """Rows of external ids (None when absent or at/after ``limit``, i.e. not committed)."""
        out: list[int | None] = []
        with self.env.begin(db=self._ids) as txn:
            for i in ids:
                v = txn.get(i.encode("utf-8"))
                row = None if v is None else _ROW.unpack(v)[0]
                out.append(row if row is not None and row < limit else None)
        return out

    def get(self, rows: Iterable[int]) -> list[dict | None]:
        """Documents at rows, as dicts ``{id, title, text, metadata}`` (None for a missing row)."""
        out: list[dict | None] = []
        with self.env.begin(db=self._docs) as txn:
            for r in rows:
                v = txn.get(_ROW.pack(int(r))) if r is not None and r >= 0 else None
                out.append(None if v is None else json.loads(v))
        return out

    def ids(self, rows: Iterable[int]) -> list[str | None]:
        return [None if d is None else d["id"] for d in self.get(rows)]

    def truncate(self, n_rows: int) -> int:
        """Drop rows >= n_rows (left by a crash between the store commit and the manifest). Returns the count."""
        dropped = 0
        with self.env.begin(write=True) as txn:
            cur = txn.cursor(db=self._docs)
            if cur.set_range(_ROW.pack(n_rows)):
                stale = []
                for k, v in cur:
                    stale.append((k, json.loads(v)["id"]))
                for k, ext in stale:
                    txn.delete(k, db=self._docs)
                    if txn.get(ext.encode("utf-8"), db=self._ids) == k:
                        txn.delete(ext.encode("utf-8"), db=self._ids)
                    dropped += 1
        return dropped

    def count(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self._docs)["entries"]

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close_lmdb(self.env)
