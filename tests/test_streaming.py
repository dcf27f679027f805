"""Streaming ingestion (issue 14): corpus formats read alike, the indexer holds one segment at a time, empty
documents are documents, and a run stopped by a bad line keeps its commits and resumes to the same index."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import FakeEncoder, assert_same_index_results, doc_line, make_docs
from hylex.corpus import CorpusReader, Document, file_format, read_corpus
from hylex.errors import CorpusError, HylexError
from hylex.indexing import Index
from hylex.indexing.builder import build_index
from hylex.retrieval.searcher import Searcher

pa = pytest.importorskip("pyarrow")  # the test extra installs it; a bare library install may lack it
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

QUERIES = ["astronomy star planet galaxy", "cooking recipe oven flour", "football goal striker match"]


def _rows(docs: list[Document]) -> list[dict]:
    return [json.loads(doc_line(d)) for d in docs]


def _write(path: Path, docs: list[Document], fmt: str) -> Path:
    text = "".join(doc_line(d) + "\n" for d in docs).encode("utf-8")
    if fmt == "jsonl":
        path.write_bytes(text)
    elif fmt == "gzip":
        path.write_bytes(gzip.compress(text))
    elif fmt == "zstd":
        path.write_bytes(zstandard.ZstdCompressor().compress(text))
    else:
        pq.write_table(pa.Table.from_pylist(_rows(docs)), path, row_group_size=7)  # metadata: a struct column
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "gzip", "zstd", "parquet"])
def test_every_format_reads_the_same_documents(tmp_path, fmt):
    docs = make_docs(40)
    path = _write(tmp_path / "corpus.data", docs, fmt)  # the suffix says nothing: the first bytes decide
    assert file_format(path) == fmt
    reader = CorpusReader(path)
    got = list(reader)
    assert got == docs and [d.metadata for d in got] == [d.metadata for d in docs]
    if fmt == "parquet":
        assert reader.unit == "row" and reader.total == 40
    else:
        assert reader.unit == "B" and reader.total == path.stat().st_size
    assert reader.position == reader.total and reader.documents == 40 and reader.empty == 0


def test_progress_position_grows_with_the_lines_read(tmp_path):
    docs = make_docs(30)
    path = _write(tmp_path / "c.jsonl", docs, "jsonl")
    reader = CorpusReader(path)
    it = reader.numbered()
    seen = []
    for _ in range(10):
        next(it)
        seen.append(reader.position)
    # plain JSONL: exactly the bytes of the lines yielded so far
    assert seen == [sum(len(doc_line(d).encode()) + 1 for d in docs[:i + 1]) for i in range(10)]


def test_bad_parquet_row_and_damaged_gzip_are_named(tmp_path):
    table = pa.Table.from_pylist([{"_id": "a", "text": "fine"}, {"_id": "b", "text": None}])
    pq.write_table(table, tmp_path / "c.parquet")
    with pytest.raises(CorpusError, match=r"c\.parquet row 2: document 'b' \"text\" must be a string"):
        list(read_corpus(tmp_path / "c.parquet"))
    rejects: list = []
    assert [d.id for d in CorpusReader(tmp_path / "c.parquet", rejects=rejects)] == ["a"]
    assert rejects[0]["line"] == 2 and '"b"' in rejects[0]["raw"]
    blob = gzip.compress("".join(doc_line(d) + "\n" for d in make_docs(200)).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorpusError, match=r"cut\.jsonl\.gz: the compressed stream is damaged after line \d+"):
        list(read_corpus(tmp_path / "cut.jsonl.gz"))


def test_a_reader_is_read_once_and_peek_is_replayed(tmp_path):
    path = _write(tmp_path / "c.jsonl", make_docs(12), "jsonl")
    reader = CorpusReader(path)
    first = reader.peek(5)
    assert [n for n, _ in first] == [1, 2, 3, 4, 5]
    assert [d.id for d in reader] == [d.id for d in make_docs(12)]
    with pytest.raises(CorpusError, match="already read"):
        list(reader)


@pytest.mark.parametrize("fmt", ["gzip", "parquet"])
def test_streamed_build_equals_a_build_from_a_list(tmp_path, fmt):
    docs = make_docs(60)
    enc = FakeEncoder()
    path = _write(tmp_path / "c.bin", docs, fmt)
    rep = build_index(path, tmp_path / "streamed", enc, chunk_size=4, segment_size=11, progress=False,
                      merge={"auto": False})
    assert rep.documents == 60 and rep.segments == math.ceil(60 / 11)
    build_index(list(read_corpus(_write(tmp_path / "plain.jsonl", make_docs(60), "jsonl"))), tmp_path / "whole",
                enc, progress=False)
    assert_same_index_results(tmp_path / "streamed", tmp_path / "whole", enc, QUERIES)
    with Index.open(tmp_path / "streamed") as ix:
        assert [s.n_docs for s in ix.segments] == [11] * 5 + [5]
        assert ix.validate() == []


def test_the_indexer_pulls_one_chunk_past_its_last_commit(tmp_path):
    """Streaming, not reading ahead: when a segment is committed the corpus has been read only up to it."""
    docs = make_docs(50)
    pulled = 0

    def source():
        nonlocal pulled
        for d in docs:
            pulled += 1
            yield d

    at_commit = []
    build_index(source(), tmp_path / "ix", FakeEncoder(), chunk_size=4, segment_size=10, progress=False,
                on_commit=lambda done, total: at_commit.append((done, pulled, total)))
    assert at_commit == [(10, 10, None), (20, 20, None), (30, 30, None), (40, 40, None), (50, 50, None)]


def test_empty_documents_are_indexed_counted_and_never_match_terms(tmp_path):
    docs = make_docs(20) + [Document("empty", ""), Document("blank", "  \n ", "", {"k": 1})]
    rep = build_index(docs, tmp_path / "ix", FakeEncoder(), progress=False)
    assert rep.documents == 22 and rep.extra["empty"] == 2
    s = Searcher(tmp_path / "ix", encoder=FakeEncoder())
    try:
        assert s.index.get(["empty", "blank"]) == [
            {"id": "empty", "title": "", "text": "", "metadata": {}},
            {"id": "blank", "title": "", "text": "  \n ", "metadata": {"k": 1}}]
        rows = s.index.rows_of(["empty", "blank"])
        seg = s.index.segments[0]
        lengths = np.asarray(seg.bm25.doc_len)
        assert [int(lengths[r - seg.row_offset]) for r in rows] == [0, 0]
        csr = seg.sparse.to_csr()
        assert [csr[r - seg.row_offset].nnz for r in rows] == [0, 0]
        for arms in (["sparse"], ["bm25"]):
            for hits in s.search(QUERIES + ["the"], k=30, arms=arms).to_list():
                assert not {"empty", "blank"} & {h["id"] for h in hits}
        # the dense arm still ranks them (a vector of the prompt alone): exhaustive search finds them
        ids = {h["id"] for h in s.search(QUERIES[:1], k=22, arms=["dense"]).to_list()[0]}
        assert {"empty", "blank"} <= ids
    finally:
        s.index.close()


def test_a_bad_line_after_a_commit_keeps_it_and_resume_completes(tmp_path):
    docs = make_docs(40)
    lines = [doc_line(d) for d in docs]
    broken = lines[:25] + ['{"_id": "x", "text": '] + lines[25:]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(broken) + "\n")
    enc = FakeEncoder()
    with pytest.raises(CorpusError) as info:
        build_index(path, tmp_path / "ix", enc, chunk_size=5, segment_size=10, progress=False)
    msg = str(info.value)
    assert "c.jsonl line 26: not valid JSON" in msg and "20 document(s) before it are committed" in msg \
        and "--resume" in msg and "\n" not in msg
    with Index.open(tmp_path / "ix") as ix:
        assert ix.n_docs == 20 and ix.validate() == []
    path.write_text("\n".join(lines) + "\n")  # fixed
    rep = build_index(path, tmp_path / "ix", enc, chunk_size=5, segment_size=10, progress=False, existing="resume")
    assert rep.documents == 20 and rep.extra["skipped"] == 20
    build_index(path, tmp_path / "whole", enc, progress=False)
    assert_same_index_results(tmp_path / "ix", tmp_path / "whole", enc, QUERIES)


def test_a_repeated_id_is_refused_or_rejected_across_segments(tmp_path):
    docs = make_docs(30)
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([doc_line(d) for d in docs] + [doc_line(docs[3])]) + "\n")
    with pytest.raises(CorpusError, match=r"c\.jsonl line 31: document id 'd0003' appears earlier in the corpus"):
        build_index(path, tmp_path / "strict", FakeEncoder(), chunk_size=4, segment_size=8, progress=False)
    rejects: list = []
    rep = build_index(path, tmp_path / "lenient", FakeEncoder(), chunk_size=4, segment_size=8, progress=False,
                      rejects=rejects)
    assert rep.documents == 30 and [r["line"] for r in rejects] == [31]
    with Index.open(tmp_path / "lenient") as ix:
        assert ix.get(["d0003"])[0]["text"] == docs[3].text


def test_a_run_that_commits_nothing_leaves_no_index(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([doc_line(d) for d in make_docs(5)] + ["[1, 2]"]) + "\n")
    with pytest.raises(CorpusError, match="line 6: expected a JSON object"):
        build_index(path, tmp_path / "new", FakeEncoder(), progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "given").mkdir()  # an empty directory the user made: kept, and left empty
    with pytest.raises(CorpusError):
        build_index(path, tmp_path / "given", FakeEncoder(), progress=False)
    assert (tmp_path / "given").is_dir() and list((tmp_path / "given").iterdir()) == []

    class Failing(FakeEncoder):
        def encode_documents(self, texts):
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        build_index(make_docs(5), tmp_path / "new", Failing(), progress=False)
    assert not (tmp_path / "new").exists()


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(HylexError, match="chunk_size and segment_size must be positive integers"):
        build_index(make_docs(3), tmp_path / "ix", FakeEncoder(), chunk_size=0)
    with pytest.raises(HylexError, match="document 2 is a dict"):
        build_index([make_docs(1)[0], {"id": "x"}], tmp_path / "ix", FakeEncoder(), progress=False)
    with pytest.raises(CorpusError, match="no documents"):
        build_index([], tmp_path / "ix", FakeEncoder(), progress=False)
    assert not (tmp_path / "ix").exists()


def test_every_line_rejected_is_an_error_and_leaves_no_index(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a"}\n[1]\n')
    rejects: list = []
    with pytest.raises(CorpusError, match=r"c\.jsonl has no valid document \(2 rejected\)"):
        build_index(path, tmp_path / "ix", FakeEncoder(), progress=False, rejects=rejects)
    assert [r["line"] for r in rejects] == [1, 2] and not (tmp_path / "ix").exists()
