"""Which manifest generations open handles hold, so that a commit can remove what it superseded at once.

A commit (add, upsert, delete, merge) supersedes files (merged segments, older tombstones) and stored rows;
they are listed as ``garbage`` in the manifest with the generation of the commit that superseded them. A handle
that loaded an older generation may still read them, so they may go only once no handle holds a generation
older than the garbage's.

Every open handle registers the generation it has loaded by holding a shared ``flock`` on
``DIR/readers/gen-<N>.lock`` for as long as it keeps that snapshot (:meth:`Index.open` takes it,
:meth:`Index.refresh` moves it to the new generation, :meth:`Index.close` releases it; the OS releases it when
the process dies). After publishing generation C, the writer (holding the writer lock, its own handle moved to
C) tries ``LOCK_EX | LOCK_NB`` on the lock file of every generation below C: a generation whose lock is taken
is free, one whose lock is refused is held. Garbage of generation G is removed when no held generation is below
G; the lock files of free generations are unlinked (under the exclusive lock).

Races, and why they are safe:

* A reader reads manifest N while a writer publishes N+1 and sweeps before the reader locks gen-N: the reader
  locks gen-N and then reads the manifest's generation again; it moved, so it lets go and starts over (the
  snapshot may have lost files). If it did not move, the writer's sweep comes after the reader's lock and sees
  it (the file was created before the lock, the lock before the re-read, the re-read before the publication,
  the publication before the sweep).
* A lock file is unlinked (by the writer's sweep, or by the last holder closing) while another process has
  opened it and waits to lock it: after locking, a holder checks that the path still names its inode and
  otherwise opens the path again, so no lock is ever held on a file nobody can see.
* flock locks belong to the open file description: two handles of one process are two holders, and the
  writer's test through its own descriptor conflicts with a reader's in the same process.

What this does not protect: a reader that cannot create or open ``DIR/readers/gen-N.lock`` (no write access
to the directory and no lock file yet) reads unregistered, and a hylex older than this module does not
register; their snapshot may lose superseded files at the next commit. A handle kept open without refreshing
keeps the garbage of every later commit on disk until it refreshes or closes.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
from pathlib import Path

from hylex.indexing.manifest import MANIFEST

logger = logging.getLogger(__name__)

READERS_DIR = "readers"
_NAME = re.compile(r"^gen-(\d+)\.lock$")


def lock_path(index_dir: Path, generation: int) -> Path:
    return Path(index_dir) / READERS_DIR / f"gen-{int(generation):09d}.lock"


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _open(path: Path, create: bool) -> int | None:
    try:
        return os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
    except FileNotFoundError:
        if not create:
            return None
        raise
    except PermissionError:  # a lock file made by another user: a read-only descriptor locks it as well
        return os.open(path, os.O_RDONLY)


class ReaderMark:
    """A shared lock on ``DIR/readers/gen-<N>.lock``: this handle holds generation N."""

    def __init__(self, path: Path, fd: int, generation: int):
        self.path, self.fd, self.generation = path, fd, int(generation)
        self.pid = os.getpid()

    @classmethod
    def take(cls, index_dir: Path, generation: int) -> ReaderMark | None:
        """Register generation ``generation`` of the index at ``index_dir``; None when the lock file cannot be
        made (the snapshot is then read unregistered)."""
        path = lock_path(index_dir, generation)
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError:
            pass  # read-only: an existing lock file can still be locked
        for _ in range(100):
            try:
                fd = _open(path, create=True)
            except OSError as e:
                logger.debug("cannot register as a reader of %s (%s): its superseded files may be removed while "
                             "this handle reads them", index_dir, e)
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)  # a writer holds it exclusively only while it removes garbage
            except OSError:
                os.close(fd)
                raise
            if _same_file(path, fd):
                return cls(path, fd, generation)
            os.close(fd)  # unlinked meanwhile: open the path again
        logger.debug("cannot register as a reader of %s: its lock file keeps being replaced", index_dir)
        return None

    def release(self) -> None:
        """Let go of the generation; the last holder removes the lock file."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        if os.getpid() != self.pid:  # a forked child's copy: the lock is the parent's (one open file description)
            os.close(fd)
            return
        try:
            # the last holder unlinks the file: exclusive (so nobody else holds it) and still the path's inode
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(self.path, fd):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)

    def __del__(self):  # a handle dropped without close() does not keep its generation for the process' life
        try:
            self.release()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class Sweep:
    """The writer's look at the generations below ``current`` (it holds the writer lock and has published
    ``current``): ``oldest_held`` is the smallest generation some handle holds (``current`` if none below it).
    The free generations' lock files stay locked exclusively until :meth:`close`, which unlinks them."""

    def __init__(self, index_dir: Path, current: int):
        self.oldest_held = int(current)
        self._free: list[tuple[Path, int]] = []
        d = Path(index_dir) / READERS_DIR
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return
        for name in names:
            m = _NAME.match(name)
            if not m or int(m.group(1)) >= current:
                continue
            gen, path = int(m.group(1)), d / name
            try:
                fd = _open(path, create=False)
            except OSError:
                self.oldest_held = min(self.oldest_held, gen)  # cannot tell: count it as held
                continue
            if fd is None:
                continue  # gone: its last holder closed
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    logger.debug("cannot test reader lock %s: %s", path, e)
                self.oldest_held = min(self.oldest_held, gen)
                continue
            if not _same_file(path, fd):  # replaced meanwhile: a new holder may have it; count it as held
                os.close(fd)
                self.oldest_held = min(self.oldest_held, gen)
                continue
            self._free.append((path, fd))

    def close(self) -> None:
        """Unlink the free generations' lock files (still locked exclusively) and let go of them."""
        free, self._free = self._free, []
        for path, fd in free:
            try:
                path.unlink()
            except OSError:
                pass
            finally:
                os.close(fd)

    def __enter__(self) -> Sweep:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_generation(index_dir: Path) -> int | None:
    """The generation of the manifest now on disk (None if it cannot be read)."""
    try:
        with open(Path(index_dir) / MANIFEST, "rb") as f:
            return int(json.load(f).get("generation", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
