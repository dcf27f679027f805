"""Tests of hylex.corpus (corpus/queries/qrels reading) and hylex.sample (the stdlib sample corpus)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hylex.corpus import Document, load_beir, read_corpus, read_qrels, read_queries
from hylex.errors import CorpusError, HylexError
from hylex.sample import EXAMPLE_ANSWERS, EXAMPLE_QUERIES, stdlib_corpus, write_stdlib_corpus


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------- corpus


def test_read_beir_and_plain_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"_id": "d1", "title": "Title", "text": "Body one.", "metadata": {"url": "u"}}),
        "",
        "   ",
        json.dumps({"id": 7, "text": "Body two.", "lang": "en"}),
        json.dumps({"id": "d3", "title": "Only a title", "text": "  "}),
        json.dumps({"_id": "d4", "text": "x", "source": "s", "metadata": {"source": "explicit"}}),
    ]
    path = _write(tmp_path / "corpus.jsonl", "\n".join(lines) + "\n")
    docs = list(read_corpus(path))
    assert [d.id for d in docs] == ["d1", "7", "d3", "d4"]
    assert docs[0] == Document(id="d1", text="Body one.", title="Title", metadata={"url": "u"})
    assert docs[0].full_text == "Title. Body one."
    assert docs[1].title == "" and docs[1].metadata == {"lang": "en"}
    assert docs[1].full_text == "Body two."
    assert docs[2].full_text == "Only a title"
    assert docs[3].metadata == {"source": "explicit"}  # the metadata object wins over a stray key
    assert isinstance(hash(docs[0]), int)


def test_read_corpus_tolerates_bom_and_crlf(tmp_path: Path) -> None:
    raw = b'\xef\xbb\xbf{"_id": "a", "text": "t\xc3\xa9"}\r\n{"_id": "b", "text": "u"}\r\n'
    path = _write(tmp_path / "c.jsonl", raw)
    assert [(d.id, d.text) for d in read_corpus(path)] == [("a", "t\u00e9"), ("b", "u")]


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ('{"_id": "d2", "text": "unterminated', "not valid JSON"),
        ('["d2", "text"]', "expected a JSON object"),
        ('{"text": "no id here"}', "has no id"),
        ('{"_id": "", "text": "empty id"}', "id is empty"),
        ('{"_id": "  ", "text": "blank id"}', "id is empty"),
        ('{"_id": 1.5, "text": "float id"}', "string or an integer"),
        ('{"_id": true, "text": "bool id"}', "string or an integer"),
        ('{"_id": "d2", "title": "no text"}', "no \\\"text\\\" field"),
        ('{"_id": "d2", "text": 5}', "must be a string"),
        ('{"_id": "d2", "text": null}', "must be a string"),
        ('{"_id": "d2", "text": "x", "metadata": [1]}', "\"metadata\" must be a JSON object"),
        ('{"_id": "d2", "text": "x", "title": 3}', "\"title\" must be a string"),
    ],
)
def test_bad_corpus_line_names_line_number(tmp_path: Path, bad_line: str, fragment: str) -> None:
    good = json.dumps({"_id": "d1", "text": "fine"})
    path = _write(tmp_path / "corpus.jsonl", f"{good}\n\n{bad_line}\n{good}\n")
    with pytest.raises(CorpusError) as info:
        list(read_corpus(path))
    msg = str(info.value)
    assert "corpus.jsonl line 3:" in msg
    assert fragment.replace("\\\"", '"') in msg
    assert "\n" not in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, HylexError)


def test_invalid_utf8_names_line_number(tmp_path: Path) -> None:
    path = _write(tmp_path / "corpus.jsonl", b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "\xff\xfe"}\n')
    with pytest.raises(CorpusError, match=r"corpus\.jsonl line 2: not valid UTF-8"):
        list(read_corpus(path))


def test_documents_before_an_error_are_streamed(tmp_path: Path) -> None:
    path = _write(tmp_path / "corpus.jsonl", '{"_id": "a", "text": "ok"}\nnot json\n')
    it = read_corpus(path)
    assert next(it).id == "a"
    with pytest.raises(CorpusError, match="line 2"):
        next(it)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_corpus(tmp_path: Path, content: str) -> None:
    path = _write(tmp_path / "empty.jsonl", content)
    with pytest.raises(CorpusError, match=r"^empty\.jsonl has no documents"):
        list(read_corpus(path))


def test_missing_corpus_file_raises_at_call(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------------------------- queries/qrels


def test_read_queries(tmp_path: Path) -> None:
    path = _write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "hello"}\n\n{"id": 2, "text": "world"}\n')
    assert read_queries(path) == {"q1": "hello", "2": "world"}


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("{oops", "not valid JSON"),
        ('{"text": "x"}', "has no id"),
        ('{"_id": "q2"}', "no \"text\" field"),
        ('{"_id": "q2", "text": "  "}', "empty text"),
        ('{"_id": "q1", "text": "dup"}', "appears twice"),
    ],
)
def test_bad_queries(tmp_path: Path, bad_line: str, fragment: str) -> None:
    path = _write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "hello"}\n' + bad_line + "\n")
    with pytest.raises(CorpusError) as info:
        read_queries(path)
    assert "queries.jsonl line 2:" in str(info.value) and fragment in str(info.value)


def test_read_qrels_beir_and_trec(tmp_path: Path) -> None:
    beir = _write(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n\nq2\td3\t2\n")
    assert read_qrels(beir) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    trec = _write(tmp_path / "qrels.txt", "q1 0 d1 1\nq2 0 d3 2\n")
    assert read_qrels(trec) == {"q1": {"d1": 1}, "q2": {"d3": 2}}


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("q1\td1", "expected 3 tab-separated fields"),
        ("q1\td1\thigh", "not an integer"),
        ("q1\td1\t0.5", "not an integer"),
    ],
)
def test_bad_qrels(tmp_path: Path, bad_line: str, fragment: str) -> None:
    path = _write(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td0\t1\n" + bad_line + "\n")
    with pytest.raises(CorpusError) as info:
        read_qrels(path)
    assert "test.tsv line 3:" in str(info.value) and fragment in str(info.value)


def test_empty_qrels(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no relevance judgments"):
        read_qrels(_write(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\n"))


def _beir_dir(root: Path) -> Path:
    root.mkdir()
    _write(root / "corpus.jsonl", '{"_id": "d1", "title": "", "text": "a"}\n{"_id": "d2", "text": "b"}\n')
    queries = [f'{{"_id": "q{i}", "text": "{t}"}}' for i, t in ((1, "x"), (2, "y"), (3, "z"))]
    _write(root / "queries.jsonl", "\n".join(queries) + "\n")
    (root / "qrels").mkdir()
    _write(root / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq2\td1\t1\nq1\td2\t1\n")
    return root


def test_load_beir(tmp_path: Path) -> None:
    root = _beir_dir(tmp_path / "ds")
    corpus_path, queries, qrels = load_beir(root)
    assert corpus_path == root / "corpus.jsonl"
    assert queries == {"q2": "y", "q1": "x"}  # q3 is not judged in the split
    assert qrels == {"q2": {"d1": 1}, "q1": {"d2": 1}}
    assert [d.id for d in read_corpus(corpus_path)] == ["d1", "d2"]


def test_load_beir_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        load_beir(tmp_path / "missing")
    root = _beir_dir(tmp_path / "ds")
    with pytest.raises(CorpusError, match=r"no qrels/dev\.tsv \(available splits: test\)"):
        load_beir(root, split="dev")
    _write(root / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq9\td1\t1\n")
    with pytest.raises(CorpusError, match="missing from queries.jsonl"):
        load_beir(root)
    (root / "queries.jsonl").unlink()
    with pytest.raises(CorpusError, match="has no queries.jsonl"):
        load_beir(root)


# ------------------------------------------------------------------------------------------------ sample corpus


@pytest.fixture(scope="module")
def sample() -> list[Document]:
    return stdlib_corpus()


def test_sample_corpus_properties(sample: list[Document]) -> None:
    assert len(sample) == 300
    ids = [d.id for d in sample]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    for d in sample:
        assert d.text.strip() and d.title == d.id
        assert len(d.text.split()) <= 120
        assert d.metadata["kind"] in ("module", "function", "class")
        assert d.id == d.metadata["module"] or d.id.startswith(d.metadata["module"] + ".")
    texts = {d.id: d.text.lower() for d in sample}
    assert "json" in texts["json"] and "gzip" in texts["gzip"] and "uuid" in texts["uuid"]
    assert len({d.metadata["module"] for d in sample}) > 100  # spread over many topics
    assert len(EXAMPLE_QUERIES) >= 6
    for query in EXAMPLE_QUERIES:
        assert all(doc_id in texts for doc_id in EXAMPLE_ANSWERS[query])


def test_sample_corpus_deterministic_and_limited(sample: list[Document]) -> None:
    assert stdlib_corpus() == sample
    small = stdlib_corpus(limit=10)
    assert len(small) == 10 and len({d.metadata["module"] for d in small}) == 10
    assert stdlib_corpus(limit=0) == []
    full = stdlib_corpus(limit=None)
    assert len(full) > 1000
    assert {d.id for d in sample} <= {d.id for d in full}
    with pytest.raises(ValueError):
        stdlib_corpus(limit=-1)


def test_write_stdlib_corpus_round_trips(tmp_path: Path, sample: list[Document]) -> None:
    path = tmp_path / "sub" / "sample.jsonl"
    assert write_stdlib_corpus(path, limit=40) == 40
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"_id", "title", "text", "metadata"}
    docs = list(read_corpus(path))
    assert docs == stdlib_corpus(limit=40)
