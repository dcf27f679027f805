"""Issue 40, section 3: a full disk during `hylex index`, a library commit and a service write (each test failed on
ee496ce). The disk fills by monkeypatching the writers of a commit to fail as each fails on a full file system
(NumPy's short write, FAISS's write error, LMDB's EIO at commit, ENOSPC on the manifest, LMDB's map full), at
chosen points; a small tmpfs, where one can be mounted, fills for real."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import lmdb
import numpy as np
import pytest

from conftest import FakeEncoder, make_docs, write_jsonl
from hylex import cli
from hylex.errors import StorageError, StorageFullError
from hylex.indexing import Index, build_index
from hylex.indexing import storage as storage_mod
from hylex.indexing.dense import DenseIndex
from hylex.indexing.store import DocStore

SEG = 10  # documents per segment (one commit each)


def _numpy_short_write(*args, **kwargs):
    raise OSError("114700 requested and 108480 written")  # numpy's tofile on a full disk (no errno)


def _faiss_write_error(*args, **kwargs):
    raise RuntimeError("Error in void faiss::write_index(const Index*, IOWriter*, int) at index_write.cpp:499: "
                       "Error: 'ret == (size * 4)' failed: write error in x/dense.faiss: 24531 != 256000 (No space "
                       "left on device)")


def _lmdb_eio(*args, **kwargs):
    raise lmdb.Error("mdb_txn_commit: Input/output error")  # LMDB's report of a short write


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _map_full(*args, **kwargs):
    raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL: Environment mapsize limit reached")


def _when(fail, test):
    """A replacement of a writer that fails (``fail``) on the calls where ``test(args, kwargs)`` holds and
    otherwise calls the original (bound later by :func:`_patch`)."""
    def make(original):
        def writer(*args, **kwargs):
            if test(args, kwargs):
                return fail(*args, **kwargs)
            return original(*args, **kwargs)
        return writer
    return make


def _second_segment(args, kwargs) -> bool:
    return any("seg-000001" in str(a) for a in args)


# where a commit writes, and how each write fails on a full disk: (object, attribute, replacement)
FAULTS = {
    "segment file (numpy short write)": (np, "save", _when(_numpy_short_write, _second_segment)),
    "dense.faiss (faiss write error)": (DenseIndex, "save", _when(_faiss_write_error, _second_segment)),
    "docs.lmdb commit (LMDB EIO)": (DocStore, "put", _when(_lmdb_eio, lambda a, k: a[1] >= SEG)),
    "docs.lmdb map full": (DocStore, "put", _when(_map_full, lambda a, k: a[1] >= SEG)),
    "manifest (ENOSPC)": (json, "dump", _when(_enospc, lambda a, k: isinstance(a[0], dict)
                                                and a[0].get("next_row", 0) >= SEG and len(a[0]["segments"]) >= 2)),
}


def _patch(monkeypatch, fault: str) -> None:
    obj, attr, make = FAULTS[fault]
    monkeypatch.setattr(obj, attr, make(getattr(obj, attr)))
    monkeypatch.setattr(storage_mod, "_free_bytes", lambda path: 0)  # the disk is full (LMDB's EIO is diagnosed so)


def _corpus(tmp_path: Path, n: int = 30) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", make_docs(n))


def _index_argv(corpus: Path, ix: Path, *extra: str) -> list[str]:
    return ["index", str(corpus), "--index", str(ix), "--encoder", "conftest:FakeEncoder", "--segment-size",
            str(SEG), "--chunk-size", str(SEG), "--no-progress", "--no-auto-merge", *extra]


def _run(capsys, argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _ids(ix: Path) -> list[str]:
    with Index.open(ix) as index:
        assert index.validate() == []
        return sorted(d.id for d in make_docs(30) if index.rows_of([d.id])[0] is not None)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_full_disk_during_hylex_index_is_one_line_and_resumable(tmp_path, capsys, monkeypatch, fault):
    """Item 1: the second commit of `hylex index` meets a full disk: one line naming the index and saying it is
    at its last commit, exit 2 (was a traceback, or "N requested and M written: check the path and its
    permissions"); the index holds exactly the first commit, validates, and --resume completes it."""
    corpus, ix = _corpus(tmp_path), tmp_path / "ix"
    with monkeypatch.context() as m:
        _patch(m, fault)
        rc, out, err = _run(capsys, _index_argv(corpus, ix))
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hylex: error: no space left on {ix}"), err
    assert "the index is at its last commit (10 documents)" in lines[0] and "rerun with --resume" in lines[0], err
    assert "committed 10 documents" in out
    assert _ids(ix) == [d.id for d in make_docs(30)][:10]
    # nothing a failed commit left is in the way: the resumed run completes the index
    rc, out, err = _run(capsys, _index_argv(corpus, ix, "--resume"))
    assert rc == 0, err
    assert _ids(ix) == sorted(d.id for d in make_docs(30))


def test_a_failed_merge_then_a_failed_commit_is_still_one_line(tmp_path, capsys, monkeypatch):
    """Item 1 (found by benchmarks/faults.py): the automatic merge after the second commit fails for lack of
    space, then the third commit does: one line, not a warning about the merge before it; the index holds the
    two commits and validates."""
    corpus, ix = _corpus(tmp_path), tmp_path / "ix"
    first_two = lambda a, k: not any(f"seg-00000{i}" in str(x) for x in a for i in (0, 1))  # noqa: E731
    with monkeypatch.context() as m:
        m.setattr(DenseIndex, "save", _when(_faiss_write_error, first_two)(DenseIndex.save))
        m.setattr(storage_mod, "_free_bytes", lambda path: 0)
        argv = [a for a in _index_argv(corpus, ix) if a != "--no-auto-merge"] + ["--merge-factor", "2"]
        rc, out, err = _run(capsys, argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "last commit (20 documents)" in err and "rerun with --resume" in err, err
    assert _ids(ix) == sorted(d.id for d in make_docs(30))[:20]


def test_full_disk_on_the_first_commit_leaves_no_index(tmp_path, capsys, monkeypatch):
    """Item 1: nothing committed yet: the new directory is removed and the line says to run again."""
    corpus, ix = _corpus(tmp_path), tmp_path / "ix"
    monkeypatch.setattr(DocStore, "put", _lmdb_eio)
    monkeypatch.setattr(storage_mod, "_free_bytes", lambda path: 0)
    rc, out, err = _run(capsys, _index_argv(corpus, ix))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "no space left" in err and "nothing was committed" in err and "run again" in err, err
    assert not ix.exists()


def test_an_io_error_that_is_not_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    """Item 1: LMDB's EIO with space left is not called a full disk."""
    enc = FakeEncoder()
    docs = make_docs(12)
    build_index(docs[:6], tmp_path / "ix", enc, progress=False)
    monkeypatch.setattr(DocStore, "put", _lmdb_eio)
    monkeypatch.setattr(storage_mod, "_free_bytes", lambda path: 10 << 30)
    with Index.open(tmp_path / "ix", writable=True) as ix:
        e = enc.encode_documents([d.full_text for d in docs[6:]])
        with pytest.raises(StorageError, match=r"cannot write to .*Input/output error.*last commit \(6 documents\)") \
                as info:
            ix.add(docs[6:], e.dense, e.sparse)
        assert not isinstance(info.value, StorageFullError)
        assert ix.n_docs == 6


@pytest.mark.parametrize("fault", ["segment file (numpy short write)", "docs.lmdb commit (LMDB EIO)"])
def test_library_commit_on_a_full_disk_raises_before_and_leaves_nothing(tmp_path, monkeypatch, fault):
    """Item 2 (library): a commit that fails before its commit point raises StorageFullError; the index is
    unchanged (same manifest, same documents) and the next commit, with space again, succeeds."""
    enc = FakeEncoder()
    docs = make_docs(30)
    build_index(docs[:SEG], tmp_path / "ix", enc, progress=False, segment_size=SEG)
    mf = tmp_path / "ix" / "manifest.json"
    before = mf.read_bytes()
    batch = docs[SEG:2 * SEG]
    e = enc.encode_documents([d.full_text for d in batch])
    with Index.open(tmp_path / "ix") as ix:
        with monkeypatch.context() as m:
            _patch(m, fault)
            with ix.writing(), pytest.raises(StorageFullError, match="no space left"):
                ix.upsert(batch, e.dense, e.sparse)
        assert mf.read_bytes() == before and ix.n_docs == SEG and ix.get([batch[0].id]) == [None]
        assert not list((tmp_path / "ix" / "segments").glob(".*.tmp"))  # the partial files are given back
        with ix.writing():
            ix.upsert(batch, e.dense, e.sparse)
        assert ix.n_docs == 2 * SEG and ix.validate() == []


def _fail_merge_output(n_vectors: int):
    """DenseIndex.save failing (FAISS on a full disk) for the index of ``n_vectors`` vectors only: a merge's."""
    return _when(_faiss_write_error, lambda a, k: a[0].ntotal == n_vectors)(DenseIndex.save)


def test_a_failed_merge_after_the_commit_point_does_not_fail_the_commit(tmp_path, monkeypatch, caplog):
    """Item 2 (library): the automatic merge after a commit meets a full disk: the upsert returns (its batch is
    committed, the failure logged) and the merge is done after the next commit (was: the exception, after the
    batch was committed)."""
    caplog.set_level(logging.INFO, logger="hylex.indexing.index")
    enc = FakeEncoder()
    docs = make_docs(40)
    with Index.create(tmp_path / "ix", enc.describe(), merge={"factor": 2}) as ix:
        e = enc.encode_documents([d.full_text for d in docs[:SEG]])
        ix.add(docs[:SEG], e.dense, e.sparse)
        batch = docs[SEG:2 * SEG]
        e = enc.encode_documents([d.full_text for d in batch])
        with monkeypatch.context() as m:
            m.setattr(DenseIndex, "save", _fail_merge_output(2 * SEG))
            m.setattr(storage_mod, "_free_bytes", lambda path: 0)
            ix.upsert(batch, e.dense, e.sparse)  # does not raise
        assert "automatic merge after it failed" in caplog.text and "no space left" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # INFO: the next write says it
        assert ix.n_docs == 2 * SEG and len(ix.segments) == 2  # committed, not merged
        assert not list((tmp_path / "ix" / "segments").glob(".*.tmp"))
        e = enc.encode_documents([d.full_text for d in docs[2 * SEG:3 * SEG]])
        ix.add(docs[2 * SEG:3 * SEG], e.dense, e.sparse)  # with space again: the merge is retried and succeeds
        assert ix.n_docs == 3 * SEG and len(ix.segments) < 3 and ix.validate() == []
    with Index.open(tmp_path / "ix") as ix:
        assert [d["id"] for d in ix.get([d.id for d in docs[:3 * SEG]])] == [d.id for d in docs[:3 * SEG]]


def test_service_write_is_answered_by_what_happened_to_it(tmp_path, monkeypatch):
    """Item 2 (service): a write that fails before its commit point is 507 with {"error"} and nothing of it is
    stored; one whose automatic merge fails after the commit point is 200 and stored (was: 500 in plain text, and
    2 of 5 such batches committed)."""
    from fastapi.testclient import TestClient

    from hylex.service.app import create_app

    enc = FakeEncoder()
    build_index(make_docs(3), tmp_path / "ix", enc, progress=False, merge={"factor": 2})
    new = [{"id": f"x{i}", "text": f"star galaxy {i}"} for i in range(3)]
    app = create_app(str(tmp_path / "ix"), encoder=enc)
    with TestClient(app) as c:
        with monkeypatch.context() as m:  # the batch's documents cannot be stored
            m.setattr(DocStore, "put", _lmdb_eio)
            m.setattr(storage_mod, "_free_bytes", lambda path: 0)
            r = c.post("/documents", json={"documents": new})
        assert r.status_code == 507 and "no space left" in r.json()["error"], r.text
        assert c.get("/documents/x0").status_code == 404
        with monkeypatch.context() as m:  # committed; the merge of the two 3-document segments after it fails
            m.setattr(DenseIndex, "save", _fail_merge_output(6))
            m.setattr(storage_mod, "_free_bytes", lambda path: 0)
            r = c.post("/documents", json={"documents": new})
        assert r.status_code == 200 and r.json() == {"committed": 3, "documents": 6}, r.text
        assert c.get("/documents/x2").json()["text"] == "star galaxy 2"
        r = c.request("DELETE", "/documents", json={"ids": ["x1"]})  # with space again, the merge catches up
        assert r.status_code == 200 and r.json() == {"deleted": 1, "documents": 5}
    with Index.open(tmp_path / "ix") as ix:
        assert ix.validate() == [] and len(ix.segments) == 1 and ix.n_docs == 5


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount") or os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def test_full_tmpfs_during_hylex_index(tmp_path, capsys):
    """Item 1 on a real full file system (a 3 MB tmpfs; skipped where one cannot be mounted): one line, exit 2,
    the index valid at its last commit, --resume completes it once there is space."""
    fs = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    if not _mount_tmpfs(fs, "3m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched tests above cover the same paths")
    try:
        docs = make_docs(3000)
        for d in docs:  # long texts: a few segments fill the disk
            object.__setattr__(d, "text", (d.text + " ") * 20)
        corpus = write_jsonl(tmp_path / "big.jsonl", docs)
        ix = fs / "ix"
        rc, out, err = _run(capsys, ["index", str(corpus), "--index", str(ix), "--encoder", "conftest:FakeEncoder",
                                     "--segment-size", "200", "--chunk-size", "200", "--no-progress"])
        assert rc == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "no space left on" in lines[0] and "rerun with --resume" in lines[0], err
        with Index.open(ix) as index:
            assert index.validate() == []
            committed = index.n_docs
        assert committed > 0 and f"committed {committed} documents" in out
        subprocess.run(["mount", "-o", "remount,size=200m", str(fs)], check=True)
        rc, out, err = _run(capsys, ["index", str(corpus), "--index", str(ix), "--encoder", "conftest:FakeEncoder",
                                     "--segment-size", "1000", "--chunk-size", "200", "--no-progress", "--resume"])
        assert rc == 0, err
        with Index.open(ix) as index:
            assert index.n_docs == 3000 and index.validate() == []
    finally:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True)
