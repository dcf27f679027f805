"""Small helpers shared by the layers."""
from __future__ import annotations

import hashlib
import os
import threading

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
