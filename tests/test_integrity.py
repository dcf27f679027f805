"""Issue 40, section 3: damaged and missing storage (each test failed on ee496ce).

- `hylex validate` reads every file defensively: a byte flipped anywhere in any segment file (headers included)
  is one line "segment N: file F is damaged (...)", exit 1, never a traceback (item 3);
- stored documents carry a checksum: a flipped bit in docs.lmdb is found by validate and refused by get and
  search, never returned as other text (item 4); indexes of format 4 (records without one) are still read;
- a truncated data.mdb is refused with a message before LMDB maps it (was SIGBUS, item 5);
- a deleted docs.lmdb is refused (was "(no hits)" and a service that starts, item 6);
- a manifest of valid JSON but the wrong shape is one line naming the field in every command (item 7).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest

from conftest import FakeEncoder, make_docs
from hylex import cli
from hylex.errors import HylexError, IndexFormatError
from hylex.indexing import Index, build_index

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_cli(monkeypatch):
    """Every encoder the CLI makes is a FakeEncoder (no model)."""
    import hylex.engine.encoder as engine_encoder

    monkeypatch.setattr(engine_encoder, "Encoder", lambda *a, **k: FakeEncoder())


@pytest.fixture(scope="module")
def damaged_base(tmp_path_factory) -> Path:
    """Two segments, the first with tombstones: every kind of segment file there is in a Flat index."""
    path = tmp_path_factory.mktemp("integrity") / "ix"
    build_index(make_docs(40), path, FakeEncoder(), progress=False, segment_size=20, merge={"auto": False})
    with Index.open(path, writable=True) as ix:
        ix.delete(["d0001", "d0003"])
    return path


@pytest.fixture
def ix(damaged_base, tmp_path) -> Path:
    dst = tmp_path / "ix"
    shutil.copytree(damaged_base, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([*map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def problems_of(err: str) -> list[str]:
    """validate's stderr: only `problem:`, `note:` and the closing `hylex: error:` line, no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert all(x.startswith(("problem: ", "note: ", "hylex: error: ")) for x in lines), err
    assert lines[-1].startswith("hylex: error: ") and "problem(s)" in lines[-1], err
    return [x for x in lines if x.startswith("problem: ")]


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= mask
    path.write_bytes(bytes(data))




def _segment_files(path: Path) -> list[str]:
    return sorted(f.name for f in (path / "segments" / "seg-000000").iterdir())


# -- item 3: byte flips in every segment file ------------------------------------------------------------------
def test_validate_reports_a_flipped_byte_in_every_segment_file_without_a_traceback(ix, capsys, fake_cli):
    """Every file of a segment (dense.faiss, impact_*.npy, impact_meta.json, bm25_*.npy, tombstones), a byte
    flipped in its header (0, 2, 8, 30, 60) and in its data (middle, last): validate exits 1 with exactly one
    problem, "segment seg-000000: file F is damaged (checksum mismatch)" (was: RuntimeError from FAISS for
    dense.faiss byte 2, tokenize.TokenError for impact_docs.npy byte 60, ValueError for bm25_terms.npy byte
    30). Opening without checksums gives an IndexFormatError naming the file, or a sound load; never another
    exception."""
    files = _segment_files(ix)
    assert {"dense.faiss", "impact_docs.npy", "impact_meta.json", "bm25_terms.npy"} <= set(files)
    assert any(f.startswith("deleted-") for f in files) and any(f.startswith("bm25_deleted-") for f in files)
    tried = 0
    for fname in files:
        f = ix / "segments" / "seg-000000" / fname
        original = f.read_bytes()
        for offset in sorted({0, 2, 8, 30, 60, len(original) // 2, len(original) - 1}):
            if offset >= len(original):
                continue
            flip(f, offset)
            rc, out, err = run(capsys, "validate", ix)
            assert rc == 1, (fname, offset, out, err)
            got = problems_of(err)
            assert got == [f"problem: segment seg-000000: file {fname} is damaged (checksum mismatch)"], \
                (fname, offset, err)
            try:
                Index.open(ix, verify=False).close()
            except IndexFormatError as e:
                assert "seg-000000" in str(e) and "damaged" in str(e), (fname, offset, e)
            f.write_bytes(original)
            tried += 1
    assert tried >= 100
    assert run(capsys, "validate", ix)[0] == 0
    # search verifies checksums when it opens the index: one line naming the file, exit 2
    flip(ix / "segments" / "seg-000001" / "dense.faiss", 2)
    rc, out, err = run(capsys, "search", ix, "star galaxy", "--mode", "bm25")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "dense.faiss does not match its checksum" in err, err


def test_truncated_and_missing_segment_files_are_reported_per_file(ix, capsys):
    """Item 3: a truncated file and a missing one: one problem each, both named."""
    f = ix / "segments" / "seg-000000" / "bm25_terms.npy"
    f.write_bytes(f.read_bytes()[:30])
    (ix / "segments" / "seg-000001" / "impact_docs.npy").unlink()
    rc, _, err = run(capsys, "validate", ix)
    assert rc == 1
    got = problems_of(err)
    assert len(got) == 2, err
    assert "segment seg-000000: file bm25_terms.npy is damaged (30 bytes, the manifest says" in got[0]
    assert got[1] == "problem: segment seg-000001: file impact_docs.npy is missing"


# -- item 4: the document store's checksums --------------------------------------------------------------------
def _data_mdb(ix: Path) -> Path:
    return ix / "docs.lmdb" / "data.mdb"


def _flip_in_text(ix: Path, needle: bytes, at: int = 1, mask: int = 0x20) -> None:
    """Flip one bit of the stored bytes ``needle`` at offset ``at`` within them, wherever data.mdb holds them (a
    page LMDB copied on write may keep a stale copy: the live one is among them)."""
    f = _data_mdb(ix)
    data = bytearray(f.read_bytes())
    pos = data.find(needle)
    assert pos >= 0
    while pos >= 0:
        data[pos + at] ^= mask
        pos = data.find(needle, pos + 1)
    f.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_stored_text_is_found_and_never_returned(ix, capsys, fake_cli):
    """Item 4: one bit of a stored document's text flipped in data.mdb ("populations" -> "pOpulations"): validate
    says which row is damaged (was: "every checksum matches"); get and a search with documents refuse it with
    a DocumentDamagedError (was: the changed text)."""
    with Index.open(ix) as index:
        doc = index.get(["d0007"])[0]
    needle = json.dumps(doc["text"]).encode()
    _flip_in_text(ix, needle, at=3)
    rc, _, err = run(capsys, "validate", ix)
    got = problems_of(err)
    assert rc == 1 and len(got) == 1 and "document store: 1 stored document(s) are damaged (row 7: its checksum " \
        "does not match)" in got[0], err
    with Index.open(ix) as index:
        with pytest.raises(IndexFormatError, match=r"stored document at row 7 of .* is damaged \(its checksum"):
            index.get(["d0007"])
        assert index.get(["d0008"])[0]["id"] == "d0008"  # the others are read as ever
    rc, out, err = run(capsys, "search", ix, doc["text"], "--mode", "bm25", "-k", "40")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "row 7" in err and "damaged" in err, err
    rc, out, err = run(capsys, "get", ix, "d0007")
    assert rc == 2 and "damaged" in err
    from fastapi.testclient import TestClient

    from hylex.service.app import create_app

    with TestClient(create_app(str(ix), encoder=FakeEncoder())) as c:  # a server fault, said in JSON
        r = c.get("/documents/d0007")
        assert r.status_code == 500 and "row 7" in r.json()["error"], r.text
        assert c.get("/documents/d0008").json()["id"] == "d0008"


def test_a_flipped_bit_in_the_json_structure_is_a_problem_not_a_crash(ix, capsys):
    """Item 4: a flipped bit that breaks the record's JSON (was: JSONDecodeError out of validate)."""
    _flip_in_text(ix, b'{"id": "d0011"', at=0, mask=0x01)
    rc, _, err = run(capsys, "validate", ix)
    got = problems_of(err)
    assert rc == 1 and len(got) == 1 and "row 11" in got[0], err


def test_a_damaged_id_mapping_is_refused_by_get(ix, capsys):
    """Item 4: the id -> rows entry of d0005 pointing at d0006's row: get refuses instead of returning d0006;
    validate names it."""
    env = lmdb.open(str(ix / "docs.lmdb"), max_dbs=2, map_size=1 << 30)
    ids = env.open_db(b"ids")
    with env.begin(write=True, db=ids) as txn:
        txn.put(b"d0005", np.asarray([6], dtype=">u8").tobytes())
    env.close()
    with Index.open(ix) as index:
        with pytest.raises(IndexFormatError, match="maps id 'd0005' to the document of 'd0006'"):
            index.get(["d0005"])
    rc, _, err = run(capsys, "validate", ix)
    assert rc == 1 and any("'d0005' -> row 6" in p for p in problems_of(err)), err


def test_format_4_store_without_checksums_is_read_and_upgraded_by_merge(ix, capsys):
    """Item 4: an index written before record checksums (format 4: bare JSON records) opens, reads and validates
    (a note counts its unverified documents); `hylex merge` rewrites them with checksums."""
    env = lmdb.open(str(ix / "docs.lmdb"), max_dbs=2, map_size=1 << 30)
    docs = env.open_db(b"docs")
    with env.begin(write=True, db=docs) as txn:
        for k, v in list(txn.cursor()):
            txn.put(k, v[5:])  # what format 4 stored: the JSON alone
    env.close()
    mf = ix / "manifest.json"
    m = json.loads(mf.read_text())
    m["format_version"] = 4
    mf.write_text(json.dumps(m))
    with Index.open(ix) as index:
        assert index.get(["d0010"])[0]["id"] == "d0010" and index.validate() == []
    rc, out, err = run(capsys, "validate", ix)
    assert rc == 0 and "predate record checksums" in err and "hylex merge" in err, err
    assert run(capsys, "merge", ix)[0] == 0
    rc, out, err = run(capsys, "validate", ix)
    assert rc == 0 and "note:" not in err and "ok (38 documents" in out, err
    assert json.loads(mf.read_text())["format_version"] == 5


# -- items 5 and 6: a truncated or missing document store ------------------------------------------------------
def _child(*code_or_argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *code_or_argv], capture_output=True, text=True, env=env, timeout=120)


def test_truncated_data_mdb_is_refused_not_a_sigbus(ix):
    """Item 5: data.mdb cut to half: validate, search and Index.open end with one line naming the file (was:
    killed by SIGBUS, no message). In child processes: a SIGBUS would kill pytest itself."""
    f = _data_mdb(ix)
    os.truncate(f, f.stat().st_size // 2)
    runs = {
        "validate": _child("-m", "hylex", "validate", str(ix)),
        "search": _child("-m", "hylex", "search", str(ix), "star", "--mode", "bm25"),
        "open": _child("-c", f"from hylex.indexing import Index\nfrom hylex.errors import HylexError\n"
                             f"try:\n    Index.open({str(ix)!r})\nexcept HylexError as e:\n    print(e)\n"
                             f"    raise SystemExit(3)"),
    }
    for what, r in runs.items():
        assert r.returncode > 0, (what, r.returncode, r.stderr)  # not killed by a signal
        text = (r.stdout + r.stderr).strip()
        assert "Traceback" not in text and f"{f} is truncated" in text, (what, text)
    assert runs["validate"].returncode == 1 and runs["search"].returncode == 2


def test_deleted_document_store_is_refused(ix, capsys, fake_cli):
    """Item 6: docs.lmdb deleted: search, stats, validate and Index.open refuse it, and the service does not start
    (was: "(no hits)", exit 0, and a new empty store)."""
    from hylex.service.app import create_app

    shutil.rmtree(ix / "docs.lmdb")
    for argv in (("search", ix, "star", "--mode", "bm25"), ("stats", ix), ("get", ix, "d0002")):
        rc, out, err = run(capsys, *argv)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "document store" in err and "missing" in err, \
            (argv, out, err)
    rc, _, err = run(capsys, "validate", ix)
    assert rc == 1 and "missing" in err
    with pytest.raises(IndexFormatError, match="document store .* is missing"):
        Index.open(ix)
    with pytest.raises(HylexError, match="missing"):
        create_app(str(ix), encoder=FakeEncoder())
    assert not (ix / "docs.lmdb").exists()  # nothing was created in its place


def test_store_of_an_index_with_no_segments_may_be_made_again(tmp_path):
    """Item 6's limit (a guard, not a regression: it passes on ee496ce too): an index created but killed before
    its store existed (no segments) still opens."""
    with Index.create(tmp_path / "ix", FakeEncoder().describe()):
        pass
    shutil.rmtree(tmp_path / "ix" / "docs.lmdb")
    with Index.open(tmp_path / "ix") as index:
        assert index.n_docs == 0


# -- item 7: manifests of the wrong shape ----------------------------------------------------------------------
def _set(path: str, value):
    def change(m: dict) -> None:
        *parents, last = path.split(".")
        obj = m
        for p in parents:
            obj = obj[int(p)] if isinstance(obj, list) else obj[p]
        if value is KeyError:
            del obj[last]
        elif isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value
    return change


MALFORMED = {
    "segments: null": (_set("segments", None), "segments must be a list, got null"),
    "no dense": (_set("dense", KeyError), "dense is missing"),
    'n_docs: "many"': (_set("n_docs", "many"), "n_docs must be an integer >= 0, got 'many'"),
    "next_row: -1": (_set("next_row", -1), "next_row must be an integer >= 0, got -1"),
    "encoder.dim: null": (_set("encoder.dim", None), "encoder.dim must be an integer > 0, got null"),
    "bm25.k1: a string": (_set("bm25.k1", "0.9"), "bm25.k1 must be a number, got '0.9'"),
    "a segment's files: null": (_set("segments.0.files", None), "segments[0].files must be an object, got null"),
    "a file's size: a string": (_set("segments.0.files.dense.faiss", {"bytes": "1", "sha256": "0" * 64}),
                                "segments[0].files['dense.faiss'].bytes must be an integer >= 0, got '1'"),
    "a segment named ../x": (_set("segments.1.name", "../x"), "segments[1].name must be a segment name"),
    "overlapping segments": (_set("segments.1.row_offset", 5), "segments[1] holds rows 5..25, overlapping"),
    "a garbage file outside the index": (_set("garbage", [{"files": [["seg-000000", "../../etc/x"]]}]),
                                         "garbage[0].files[0][1] must be a plain file name"),
    "a segment is a string": (_set("segments.0", "seg-000000"), "segments[0] must be an object, got 'seg-000000'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_manifest_of_the_wrong_shape_is_one_line_naming_the_field(ix, capsys, fake_cli, case):
    """Item 7: valid JSON of the wrong shape: stats, search, validate and Index.open each say, in one line, which
    field is wrong (was: TypeError, KeyError or ValueError tracebacks in every command)."""
    change, needle = MALFORMED[case]
    mf = ix / "manifest.json"
    m = json.loads(mf.read_text())
    if case == "a file's size: a string":  # the key holds a dot: set it by hand
        m["segments"][0]["files"]["dense.faiss"] = {"bytes": "1", "sha256": "0" * 64}
    else:
        change(m)
    mf.write_text(json.dumps(m))
    for argv in (("stats", ix), ("search", ix, "star", "--mode", "bm25"), ("get", ix, "d0002")):
        rc, out, err = run(capsys, *argv)
        assert rc == 2, (argv, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "manifest.json" in lines[0], (argv, err)
    rc, _, err = run(capsys, "validate", ix)
    got = problems_of(err)
    assert rc == 1 and len(got) == 1 and needle in got[0], err
    with pytest.raises(IndexFormatError, match="manifest.json .*is damaged"):
        Index.open(ix)


def test_a_live_document_missing_from_the_store_is_refused_not_shifted(ix, capsys, fake_cli):
    """Item 4 (found by benchmarks/faults.py: a flipped bit in a record's key): a live row whose document the
    store lacks made a search drop that hit and pair every later hit with the document of the one before it
    (silently wrong text under another id). Now searches and get refuse in one line; Results.to_list pairs
    documents by column."""
    from hylex.retrieval.results import Results

    env = lmdb.open(str(ix / "docs.lmdb"), max_dbs=2, map_size=1 << 30)
    docs = env.open_db(b"docs")
    with env.begin(write=True, db=docs) as txn:
        assert txn.delete((16).to_bytes(8, "big"))
    env.close()
    with Index.open(ix) as index:
        with pytest.raises(IndexFormatError, match="lacks the live document at row 16"):
            index.get(["d0016"])
        assert index.get(["d0017"])[0]["id"] == "d0017"
    rc, out, err = run(capsys, "search", ix, make_docs(40)[16].text, "--mode", "bm25", "-k", "40")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "row 16" in err, err
    res = Results(ids=np.array([[None, "a", "b"]], dtype=object), scores=np.array([[3.0, 2.0, 1.0]], np.float32),
                  rows=np.array([[5, 6, 7]]), documents=[[None, {"id": "a", "text": "A"}, {"id": "b", "text": "B"}]])
    assert [(h["id"], h["text"]) for h in res.to_list()[0]] == [("a", "A"), ("b", "B")]


def test_a_segment_file_left_out_of_the_manifest_is_refused(ix, capsys, fake_cli):
    """Item 7 (found by benchmarks/faults.py): a file the loaders read, dropped from its segment's listing, was
    loaded with no checksum over it. Opening refuses it in one line naming the file; validate reports it; stats
    (the manifest alone) still answers."""
    mf = ix / "manifest.json"
    m = json.loads(mf.read_text())
    del m["segments"][0]["files"]["bm25_terms.npy"]
    mf.write_text(json.dumps(m))
    for argv in (("search", ix, "star", "--mode", "bm25"), ("get", ix, "d0002")):
        rc, out, err = run(capsys, *argv)
        assert rc == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert "segment seg-000000: file bm25_terms.npy is not listed in" in err, err
    rc, _, err = run(capsys, "validate", ix)
    got = problems_of(err)
    assert rc == 1 and len(got) == 1 and "bm25_terms.npy is not listed in the manifest" in got[0], err
    assert run(capsys, "stats", ix)[0] == 0
