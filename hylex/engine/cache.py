"""An LMDB cache of encodings keyed by model fingerprint, encoder settings, prompt kind and text hash.

Encoding is the expensive step (minutes to hours on a CPU); everything after it (index type, fusion, evaluation)
is cheap to redo. Rebuilding an index with the same encoder settings therefore never re-encodes a text.
Values are raw little-endian arrays behind a small header: no pickle.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

import numpy as np

from hylex.engine.settings import NEUTRAL_SETTINGS
from hylex.utils import close_lmdb, open_lmdb

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2 (2026-12-07): bfloat16 bodies split their weights (hylex.engine.native.Linear)
# A setting at its neutral value (hylex.engine.settings.NEUTRAL_SETTINGS) is left out of the key, so adding a
# setting does not orphan the cache; any other value changes the key. Bump CACHE_FORMAT when the encoder's output
# changes for the same key.
# Settings that choose which units (whole text, chunk i) are encoded, not how: a unit's key carries its chunk.
UNIT_SETTINGS = ("long_docs", "chunk_overlap", "dense_agg")
_HEADER = struct.Struct("<II")  # dim, nnz


def namespace(describe: dict, kind: str) -> bytes:
    """Key prefix for one encoder configuration and prompt kind (``query`` / ``passage``)."""
    settings = {k: v for k, v in describe.get("settings", {}).items()
                if not (k in NEUTRAL_SETTINGS and NEUTRAL_SETTINGS[k] == v) and k not in UNIT_SETTINGS}
    blob = json.dumps({"format": CACHE_FORMAT, "encoder": {**describe, "settings": settings}, "kind": kind},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).digest()[:16]


class EncodingCache:
    """Persistent map ``(namespace, text) -> (dense float32 (H,), term ids int32 (nnz,), weights float32 (nnz,))``.

    Safe for several processes at once (LMDB's own locking); each ``put_many`` is one transaction.
    """

    def __init__(self, path: str | os.PathLike, map_size: int = 1 << 38):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # map_size is address space, not disk: LMDB files grow as data is written.
        self.env = open_lmdb(self.path, map_size=map_size, subdir=True, max_dbs=0, readahead=False)

    @staticmethod
    def key(ns: bytes, text: str) -> bytes:
        return ns + hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()

    def get_many(self, keys: list[bytes]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
        out: list = []
        with self.env.begin(buffers=False) as txn:
            for k in keys:
                v = txn.get(k)
                out.append(None if v is None else self._unpack(v))
        return out

    def put_many(self, keys: list[bytes], dense: np.ndarray, terms: list[np.ndarray],
                 weights: list[np.ndarray]) -> None:
        """Cache encodings (one transaction). A cache that cannot be written (a full disk) only costs re-encoding
        later: the failure is logged, not raised, so indexing goes on (its own commits report a full disk)."""
        import lmdb

        try:
            with self.env.begin(write=True) as txn:
                for k, d, t, w in zip(keys, dense, terms, weights):
                    txn.put(k, self._pack(d, t, w))
        except lmdb.Error as e:
            logger.warning("cannot write the encoding cache %s (%s): these encodings are not cached", self.path, e)

    @staticmethod
    def _pack(dense: np.ndarray, terms: np.ndarray, weights: np.ndarray) -> bytes:
        return (_HEADER.pack(len(dense), len(terms)) + np.asarray(dense, "<f4").tobytes()
                + np.asarray(terms, "<i4").tobytes() + np.asarray(weights, "<f4").tobytes())

    @staticmethod
    def _unpack(v: bytes):
        dim, nnz = _HEADER.unpack_from(v)
        o = _HEADER.size
        dense = np.frombuffer(v, "<f4", dim, o)
        terms = np.frombuffer(v, "<i4", nnz, o + 4 * dim)
        weights = np.frombuffer(v, "<f4", nnz, o + 4 * dim + 4 * nnz)
        return dense, terms, weights

    def __len__(self) -> int:
        return self.env.stat()["entries"]

    def close(self) -> None:
        if self.env is not None:
            close_lmdb(self.env)
            self.env = None
