"""Write failures of a commit, told apart and named: a full disk, or another I/O error.

A commit writes segment files (NumPy, FAISS), the document store (LMDB) and the manifest. On a full file system
each fails its own way: ``OSError`` ENOSPC from Python's file objects, ``OSError("N requested and M written")``
from NumPy's short writes, a ``RuntimeError`` naming a write error from FAISS, ``lmdb.Error`` "Input/output
error" from LMDB's commit (it reports a short write as EIO), ``lmdb.MapFullError`` when its map is full.
:func:`storage_error` turns any of them into a :class:`~hylex.errors.StorageError` whose one-line message names
the index and says that nothing of the write was committed; :class:`~hylex.errors.StorageFullError` when the
disk is (or is very nearly) full.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from hylex.errors import StorageError, StorageFullError

# errnos that mean "no room": no space, over a quota, over the file size limit
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# other errnos of a write that failed: the device, a read-only file system, permissions
_WRITE_ERRNOS = {errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}
# an EIO from LMDB is a full disk when this little is left: its failed write used up what there was
_NEARLY_FULL = 16 << 20


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, RuntimeError) and "write error" in text:  # FAISS: a C++ location, then the reason
        text = text[text.find("write error"):]
    name = getattr(exc, "filename", None)
    if name and str(name) not in text:
        text = f"{text}: {name}"
    return text[:300]


def storage_error(exc: BaseException, index_dir: Path, n_docs: int) -> StorageError | None:
    """The :class:`StorageError` a write failure ``exc`` of a commit to the index at ``index_dir`` (holding
    ``n_docs`` live documents at its last commit) means, or None when ``exc`` is not a write failure (then it
    goes up as it is)."""
    import lmdb

    full = False
    if isinstance(exc, lmdb.MapFullError):
        full = True
    elif isinstance(exc, OSError):
        full = exc.errno in _FULL_ERRNOS or ("requested and" in str(exc) and "written" in str(exc))
        if not full and exc.errno not in _WRITE_ERRNOS:
            return None  # e.g. a file the index needs is missing: not a failed write, said as it is
    elif isinstance(exc, lmdb.Error):
        text = str(exc)
        full = "No space left" in text or "quota" in text.lower()
        if not full and "Input/output error" in text:
            free = _free_bytes(Path(index_dir))
            full = free is not None and free < _NEARLY_FULL
    elif isinstance(exc, RuntimeError) and "write error" in str(exc):  # FAISS's write_index
        full = "No space left" in str(exc) or (_free_bytes(Path(index_dir)) or 0) < _NEARLY_FULL
    else:
        return None
    where = f"the index is at its last commit ({n_docs} documents)"
    if full:
        base = f"no space left on {index_dir} ({_detail(exc)}): {where}"
        return StorageFullError(f"{base}; free space and write again", base)
    base = f"cannot write to {index_dir} ({type(exc).__name__}: {_detail(exc)}): {where}"
    return StorageError(f"{base}; check the disk, then write again", base)
