"""Issue 40, section 4 (each test failed on ee496ce): huge integers and corrupt Parquet in a corpus, a closed
Index handle, dry-run deletes that say how many, and the CLI's writers waiting for the service's writer lock."""
from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import FakeEncoder, make_docs, write_jsonl
from hylex import cli
from hylex.corpus import Document
from hylex.errors import CorpusError, HylexError
from hylex.indexing import Index, build_index
from hylex.retrieval import Searcher, delete_where


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([*map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hylex: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


ENC = ["--encoder", "conftest:FakeEncoder"]


# -- item 8: integers past Python's 4,300 digits; a corrupt Parquet file -------------------------------------------
def _huge_lines(tmp_path):
    big = "9" * 5000
    return write_jsonl(tmp_path / "c.jsonl", [
        {"_id": "a", "text": "star galaxy"},
        f'{{"_id": {big}, "text": "an id of 5000 digits"}}',
        f'{{"_id": "b", "text": "a metadata value of 5000 digits", "metadata": {{"n": {big}}}}}',
        {"_id": "c", "text": "bake bread"}])


def test_integers_of_more_than_4300_digits_are_refused_with_their_line(tmp_path, capsys):
    """Item 8: an id or metadata value of 5,000 digits: one line naming the line (was: a traceback, "Exceeds the
    limit (4300 digits)", also with --skip-invalid); with --skip-invalid both lines go to the rejects file."""
    corpus = _huge_lines(tmp_path)
    rc, out, err = run(capsys, "index", corpus, "--index", tmp_path / "ix", *ENC)
    one_line(rc, err, "c.jsonl line 2", "too many digits", "as a string")
    rejects = tmp_path / "rejects.jsonl"
    rc, out, err = run(capsys, "index", corpus, "--index", tmp_path / "ix", *ENC, "--skip-invalid", rejects)
    assert rc == 0, err
    got = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [g["line"] for g in got] == [2, 3] and all("too many digits" in g["error"] for g in got)
    with Index.open(tmp_path / "ix") as ix:
        assert ix.n_docs == 2


def test_huge_integer_in_library_metadata_is_a_corpus_error():
    """Item 8: the same value through the library (and the service's upsert) is a CorpusError, not a ValueError
    from json.dumps at commit time."""
    with pytest.raises(CorpusError, match="more than 4,300 digits"):
        Document("x", "text", metadata={"n": 10 ** 5000})
    assert Document("x", "text", metadata={"n": 10 ** 4000}).metadata["n"] == 10 ** 4000  # under the limit: kept


def test_corrupt_parquet_names_the_file_not_permissions(tmp_path, capsys):
    """Item 8: a Parquet file whose pages are corrupt: "bad.parquet: the Parquet file is corrupt ..." (was:
    "Corrupt snappy compressed data.: check the path and its permissions", naming no file)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"_id": f"d{i}", "text": "star galaxy " * 20 + str(i), "title": ""} for i in range(3000)]
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(rows), good, compression="snappy", row_group_size=1000)
    data = bytearray(good.read_bytes())
    for off in range(len(data) // 3, len(data) // 3 + 200):
        data[off] ^= 0xFF
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    rc, out, err = run(capsys, "index", bad, "--index", tmp_path / "ix", *ENC)
    line = one_line(rc, err, "bad.parquet: the Parquet file is corrupt", "rewrite it")
    assert "permissions" not in line


# -- item 9: a closed Index ------------------------------------------------------------------------------------------
def test_closed_index_refuses_every_use(tmp_path):
    """Item 9: get, documents, search, writing() + upsert and the writes on a closed handle raise
    IndexClosedError, also while another handle of the process keeps the shared LMDB environment open (was:
    lmdb.Error, or silently working through the other handle's environment)."""
    from hylex.errors import IndexClosedError

    enc = FakeEncoder()
    docs = make_docs(20)
    build_index(docs[:10], tmp_path / "ix", enc, progress=False)
    e = enc.encode_documents([d.full_text for d in docs[10:]])
    other = Index.open(tmp_path / "ix")  # shares the LMDB environment
    try:
        for writable in (False, True):
            ix = Index.open(tmp_path / "ix", writable=writable)
            s = Searcher(ix, encoder=enc)
            ix.close()
            calls = {
                "get": lambda: ix.get(["d0001"]), "documents": lambda: ix.documents([1]),
                "rows_of": lambda: ix.rows_of(["d0001"]),
                "search": lambda: s.search(["star"], k=3, mode="bm25", with_documents=False),
                "search dense": lambda: s.search(["star"], k=3, mode="dense", with_documents=False),
                "upsert": lambda: ix.upsert(docs[10:], e.dense, e.sparse),
                "delete": lambda: ix.delete(["d0001"]), "merge": lambda: ix.merge(),
                "validate": lambda: ix.validate(),
            }
            if not writable:
                calls["writing"] = lambda: ix.writing().__enter__()
            for name, call in calls.items():
                with pytest.raises(IndexClosedError, match="index .* is closed"):
                    call()
        assert other.get(["d0001"])[0]["id"] == "d0001" and other.n_docs == 10  # the other handle is untouched
    finally:
        other.close()


# -- item 10: deletes say how many; dry runs ----------------------------------------------------------------------
@pytest.fixture
def small(tmp_path):
    build_index(make_docs(30), tmp_path / "ix", FakeEncoder(), progress=False)
    return tmp_path / "ix"


def test_cli_delete_dry_run_counts_and_a_delete_of_everything_says_so(small, capsys):
    """Item 10: `hylex delete --dry-run` counts what a filter matches and deletes nothing; a filter matching
    every document deletes them all (the semantics kept) and the answer says it was every document."""
    everything = '{"nope": {"$exists": false}}'
    rc, out, err = run(capsys, "delete", small, "--filter", everything, "--dry-run")
    assert rc == 0 and "would delete 30 document(s)" in out and "(every document)" in out and "dry run" in out, out
    rc, out, err = run(capsys, "delete", small, "--filter", '{"topic": "chess"}', "--dry-run")
    assert rc == 0 and "would delete 1 document(s)" in out, out
    rc, out, err = run(capsys, "delete", small, "--ids", "d0001,d0002,nope", "--dry-run")
    assert rc == 0 and "would delete 2 document(s)" in out, out
    with Index.open(small) as ix:
        assert ix.n_docs == 30
    rc, out, err = run(capsys, "delete", small, "--filter", '{"x": {"$nin": []}}')
    assert rc == 0 and "deleted 30 document(s)" in out and "(every document); 0 left" in out, out


def test_library_dry_run_needs_no_writer(small):
    """Item 10 (library): dry runs on a read-only handle count, write nothing."""
    with Index.open(small) as ix:
        assert delete_where(ix, {"topic": "chess"}, dry_run=True) == 1
        assert ix.delete(["d0001", "d0001", "zz"], dry_run=True) == 1
        assert ix.delete_all(dry_run=True) == 30
        with pytest.raises(HylexError, match="read-only"):
            ix.delete(["d0001"])
        assert ix.n_docs == 30


def test_http_delete_dry_run(small):
    """Item 10 (HTTP): `"dry_run": true` answers the count and deletes nothing; a strict boolean in the schema."""
    from fastapi.testclient import TestClient

    from hylex.service.app import create_app

    with TestClient(create_app(str(small), encoder=FakeEncoder())) as c:
        r = c.request("DELETE", "/documents", json={"filter": {"nope": {"$exists": False}}, "dry_run": True})
        assert r.status_code == 200 and r.json() == {"deleted": 30, "documents": 30}, r.text
        r = c.request("DELETE", "/documents", json={"all": True, "dry_run": 1})
        assert r.status_code == 422 and "dry_run" in r.json()["error"], r.text
        assert c.get("/stats").json()["documents"] == 30
        r = c.request("DELETE", "/documents", json={"ids": ["d0001"], "dry_run": False})
        assert r.json() == {"deleted": 1, "documents": 29}
        schema = c.get("/openapi.json").json()["components"]["schemas"]["DeleteRequest"]
        assert schema["properties"]["dry_run"]["type"] == "boolean" and len(schema["oneOf"]) == 3


# -- item 11: the CLI waits for the writer lock -----------------------------------------------------------------
class _Writer:
    """Another writer of the index (as hylex serve is while it commits): holds the writer lock until released
    (by :meth:`release`, or after ``seconds``)."""

    def __init__(self, path, seconds: float | None = None):
        self.index = Index.open(path)
        self.index.acquire_writer()
        self.timer = threading.Timer(seconds, self.release) if seconds is not None else None
        if self.timer is not None:
            self.timer.start()

    def release(self) -> None:
        if self.index is not None:
            ix, self.index = self.index, None
            ix.release_writer()
            ix.close()


@pytest.mark.parametrize("command", ["index --upsert", "delete", "merge"])
def test_cli_writers_wait_for_the_writer_lock(small, tmp_path, capsys, command):
    """Item 11: while another writer (hylex serve committing) holds the lock, `hylex index --upsert`, `delete` and
    `merge` wait up to --write-wait-s (default 10 s) instead of failing at once; with 0 they are refused."""
    corpus = write_jsonl(tmp_path / "new.jsonl", make_docs(3, seed=5, prefix="n"))
    argv = {"index --upsert": ["index", corpus, "--index", small, "--upsert", *ENC],
            "delete": ["delete", small, "--ids", "d0004"], "merge": ["merge", small]}[command]
    held = _Writer(small)
    try:
        rc, out, err = run(capsys, *argv, "--write-wait-s", "0")
        one_line(rc, err, "another process is writing")
    finally:
        held.release()
    held = _Writer(small, seconds=1.0)  # released after a second: the default wait outlasts it
    try:
        t0 = time.monotonic()
        rc, out, err = run(capsys, *argv)
        assert rc == 0, err
        assert time.monotonic() - t0 >= 0.9
    finally:
        held.timer.join()
    assert cli.build_parser().parse_args([*map(str, argv)]).write_wait_s == 10.0
