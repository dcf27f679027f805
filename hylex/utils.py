"""Small helpers shared by the layers."""
from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from pathlib import Path

import lmdb


def bar_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` switch: True shows bars, False hides them, None (the default
    everywhere) shows them only when stderr is a terminal (so log files get no bar lines)."""
    return None if progress is None else not progress


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# LMDB's meta page (lmdb 0.9, mdb.c's MDB_meta after a 16-byte page header): magic, version, map address and
# size, the free and main databases (48 bytes each: the free one's first field holds the page size), the last page
# number used, the transaction id. Two meta pages (at 0 and at one page size); the one of the newer transaction is
# current.
_META = struct.Struct("=IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_MAGIC, _INVALID_PAGE = 0xBEEFC0DE, (1 << 64) - 1


def lmdb_file_problem(path: str | os.PathLike) -> str | None:
    """What keeps the LMDB data file ``path`` (``data.mdb``) from being mapped safely, or None: a file shorter
    than its current meta page says (pages past the end of a map are a SIGBUS when read, which kills the process
    with no message), or meta pages that are not LMDB's. Reads the two meta pages only."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16 + _META.size)
            if len(head) < 16 + _META.size:
                return f"{path} is {size} bytes, too short for an LMDB file (truncated)"
            psize = _META.unpack_from(head, 16)[4]
            metas = [_META.unpack_from(head, 16)]
            if psize in (4096, 8192, 16384, 32768, 65536) and size >= psize + 16 + _META.size:
                f.seek(psize + 16)
                metas.append(_META.unpack(f.read(_META.size)))
    except OSError as e:
        return f"{path} cannot be read ({e.strerror or e})"
    good = [m for m in metas if m[0] == _MAGIC and m[4] == psize]
    if not good:
        return f"{path} has no valid LMDB header (its meta pages are damaged)"
    meta = max(good, key=lambda m: m[-1])  # the newer transaction's
    last_page = meta[-2]
    roots = (meta[11], meta[19])  # the free and main databases' root pages
    if last_page >= (1 << 48) or any(r != _INVALID_PAGE and r > last_page for r in roots):
        return f"{path} has a damaged LMDB header (page numbers past its last page {last_page})"
    need = (last_page + 1) * psize
    if size < need:
        return f"{path} is truncated: {size} bytes, its LMDB header needs {need}"
    return None


# LMDB refuses to open one environment twice in a process ("already open in this process"), so every opener of
# one directory shares a reference-counted environment.
_ENVS: dict[str, list] = {}  # real path -> [env, readonly, refcount]
_ENVS_LOCK = threading.Lock()


def open_lmdb(path: str | os.PathLike, *, readonly: bool = False, **kwargs) -> lmdb.Environment:
    """Open (or share) the LMDB environment at ``path``; pair every call with :func:`close_lmdb`."""
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            data = Path(path) / "data.mdb" if kwargs.get("subdir", True) else Path(path)
            problem = lmdb_file_problem(data) if data.is_file() else None
            if problem is not None:  # read again: a meta page a writer was rewriting that very moment reads torn
                time.sleep(0.05)
                problem = lmdb_file_problem(data)
            if problem is not None:
                from hylex.errors import IndexFormatError

                raise IndexFormatError(f"{problem}: it is damaged; restore it from a copy, or rebuild what it holds")
            env = lmdb.open(str(path), readonly=readonly, lock=not readonly, **kwargs)
            entry = _ENVS[key] = [env, readonly, 0]
        elif entry[1] and not readonly:
            from hylex.errors import HylexError

            raise HylexError(f"{path} is open read-only in this process: close it before opening it for writing")
        entry[2] += 1
        return entry[0]


def close_lmdb(env: lmdb.Environment) -> None:
    """Release one reference to a shared environment; the last one closes it."""
    with _ENVS_LOCK:
        for key, entry in list(_ENVS.items()):
            if entry[0] is env:
                entry[2] -= 1
                if entry[2] > 0:
                    return
                del _ENVS[key]
                break
    env.close()
