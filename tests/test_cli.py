"""The command line, in-process with a fake encoder (no LLM): index, search, eval, and one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import QUERY_TEXTS, TOPICS, FakeEncoder, doc_line, make_docs, write_jsonl
from hylex import cli
from hylex.engine.models import DEFAULT_MODEL
from hylex.indexing import Index
from hylex.retrieval import Searcher


@pytest.fixture
def fake_cli(monkeypatch):
    """Route every encoder the CLI makes (``_make_encoder`` and the Searcher's lazy load) to FakeEncoder."""
    import hylex.engine.encoder as engine_encoder

    calls = []

    def factory(*args, **kwargs):
        calls.append((args, kwargs))
        return FakeEncoder()

    monkeypatch.setattr(engine_encoder, "Encoder", factory)
    return calls


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["--no-progress", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {err!r}"
    line = lines[0]
    assert line.startswith("hylex: error: "), line
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    return line


def snapshot(path: Path):
    """n_docs, manifest bytes and a few search results of an index (pre-encoded queries: no encoder)."""
    enc = FakeEncoder().encode_queries(QUERY_TEXTS)
    with Index.open(path) as ix:
        s = Searcher(ix)
        r = s.search(None, k=10, mode="hybrid", dense=enc.dense, sparse=enc.sparse)
        return ix.n_docs, (path / "manifest.json").read_bytes(), r.ids.tolist(), r.scores.tolist(), ix.validate()


# -- happy paths -------------------------------------------------------------------------------------------------
def test_index_then_search(tmp_path, capsys, fake_cli, corpus_writer, docs):
    corpus = corpus_writer(docs)
    ix = tmp_path / "ix"
    rc, out, err = run(capsys, "index", corpus, "--index", ix, "--segment-size", 150, "--chunk-size", 64)
    assert rc == 0, err
    # each batch is acknowledged once durable, then the summary
    assert out.splitlines()[:2] == ["committed 150 documents (75% of corpus.jsonl)",
                                   "committed 200 documents (100% of corpus.jsonl)"]
    assert out.splitlines()[-1].startswith(f"indexed 200 documents into {ix}")
    assert fake_cli and fake_cli[0][1]["config"].model == DEFAULT_MODEL  # the default model name went through
    with Index.open(ix) as index:
        assert index.n_docs == 200 and len(index.segments) == 2
        assert index.encoder_info == FakeEncoder().describe()

    rc, out, err = run(capsys, "search", ix, "star galaxy telescope", "recipe oven flour butter", "-k", 3, "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert [d["query"] for d in data] == ["star galaxy telescope", "recipe oven flour butter"]
    by_id = {d.id: d for d in docs}
    for item, topic in zip(data, ("astronomy", "cooking")):
        hits = item["hits"]
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert all(set(h) >= {"rank", "id", "score", "title", "text", "metadata"} for h in hits)
        assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
        assert hits[0]["metadata"]["topic"] == topic
        assert hits[0]["title"] == by_id[hits[0]["id"]].title and hits[0]["text"] == by_id[hits[0]["id"]].text

    # the same search in the library gives the same hits
    with Index.open(ix) as index:
        lib = Searcher(index, encoder=FakeEncoder()).search(["star galaxy telescope"], k=3)
    assert [h["id"] for h in data[0]["hits"]] == lib.ids[0].tolist()

    rc, out, err = run(capsys, "search", ix, "star galaxy telescope", "-k", 2, "--mode", "sparse")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "query: star galaxy telescope"
    assert len(lines) == 3
    for rank, line in enumerate(lines[1:], 1):
        parts = line.split()
        assert parts[0] == str(rank) and parts[2].startswith("d")
        assert "Astronomy note" in line
        float(parts[1])

    rc, out, err = run(capsys, "search", ix, "chess pawn", "-k", 4, "--fusion", "rrf", "--json")
    assert rc == 0, err
    assert len(json.loads(out)[0]["hits"]) == 4


def test_eval_on_beir_dir(tmp_path, capsys, fake_cli, docs):
    beir = tmp_path / "toy"
    write_jsonl(beir / "corpus.jsonl", docs)
    topics = list(TOPICS)
    queries = [{"_id": f"q{i}", "text": f"{t} {' '.join(TOPICS[t].split()[1:4])}"} for i, t in enumerate(topics)]
    write_jsonl(beir / "queries.jsonl", queries + [{"_id": "unjudged", "text": "nothing"}])
    qrels = ["query-id\tcorpus-id\tscore"] + [f"q{i}\t{d.id}\t1" for i, t in enumerate(topics)
                                              for d in docs if d.metadata["topic"] == t]
    (beir / "qrels").mkdir()
    (beir / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    ix = tmp_path / "ix"
    rc, _, err = run(capsys, "index", beir / "corpus.jsonl", "--index", ix)
    assert rc == 0, err
    runs = tmp_path / "runs"
    rc, out, err = run(capsys, "eval", beir, "--index", ix, "--json", "--runs-dir", runs)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["queries"] == len(topics) and res["runs_dir"] == str(runs)
    for mode in ("dense", "sparse", "bm25", "hybrid"):
        for metric in ("ndcg@10", "recall@100"):
            assert 0.0 <= res[mode][metric] <= 1.0
        assert res[mode]["ndcg@10"] > 0.5, (mode, res[mode])  # topical queries find their topic's docs
    assert res["sparse"]["ndcg@10"] > 0.9 and res["sparse"]["recall@100"] > 0.9
    assert res["bm25"]["ndcg@10"] > 0.9 and res["bm25"]["recall@100"] > 0.9
    files = sorted(p.name for p in runs.iterdir())
    assert files == ["toy.test.bm25.trec", "toy.test.dense.trec", "toy.test.hybrid.trec", "toy.test.sparse.trec"]
    for mode in ("dense", "sparse", "bm25", "hybrid"):
        rows = [line.split() for line in (runs / f"toy.test.{mode}.trec").read_text().splitlines()]
        assert rows and all(len(r) == 6 and r[1] == "Q0" and r[5] == f"hylex-{mode}" for r in rows)
        assert {r[0] for r in rows} == {q["_id"] for q in queries}
        q0 = [r for r in rows if r[0] == "q0"]
        assert [int(r[3]) for r in q0] == list(range(1, len(q0) + 1))
        assert len(q0) <= 100 and (mode in ("sparse", "bm25") or len(q0) == 100)
        scores = [float(r[4]) for r in q0]
        assert scores == sorted(scores, reverse=True)

    rc, out, err = run(capsys, "eval", beir, "--index", ix, "--runs-dir", runs)
    assert rc == 0, err
    assert "nDCG@10" in out and "sparse" in out and "bm25" in out


# -- errors ------------------------------------------------------------------------------------------------------
GOOD = {"_id": "g1", "title": "Good", "text": "a good document about chess"}


@pytest.mark.parametrize("lines,needles", [
    ([json.dumps(GOOD), '{"_id": "x", "text": '], ["corpus.jsonl line 2", "not valid JSON"]),
    ([json.dumps(GOOD), "", json.dumps({"text": "no id here"})], ["corpus.jsonl line 3", "no id"]),
    ([json.dumps({"_id": "t1", "title": "only a title"})], ["corpus.jsonl line 1", "'t1'", '"text"']),
    ([], ["corpus.jsonl", "no documents"]),
    (["", "   "], ["corpus.jsonl", "no documents"]),
    ([json.dumps(GOOD), json.dumps(GOOD)], ["'g1'", "appears earlier in the corpus"]),
])
def test_bad_corpus(tmp_path, capsys, fake_cli, index_copy, corpus_writer, lines, needles):
    corpus = corpus_writer(lines)
    before = snapshot(index_copy)
    # into the existing index: refused, nothing changed
    rc, out, err = run(capsys, "index", corpus, "--index", index_copy)
    assert_one_line_error(rc, err, *needles)
    assert out == ""
    assert snapshot(index_copy) == before
    # into a new directory: refused before anything is created (and before a model is made)
    new = tmp_path / "new-index"
    rc, out, err = run(capsys, "index", corpus, "--index", new)
    assert_one_line_error(rc, err, *needles)
    assert not new.exists()
    assert fake_cli == []


def test_missing_corpus_file(tmp_path, capsys, fake_cli, index_copy):
    before = snapshot(index_copy)
    rc, _, err = run(capsys, "index", tmp_path / "nope.jsonl", "--index", index_copy)
    assert_one_line_error(rc, err, "nope.jsonl", "does not exist")
    assert snapshot(index_copy) == before


def test_index_repeating_existing_id(capsys, fake_cli, index_copy, corpus_writer, docs):
    before = snapshot(index_copy)
    new = make_docs(3, seed=9, prefix="fresh")
    corpus = corpus_writer([doc_line(d) for d in new] + [doc_line(docs[17])])
    rc, out, err = run(capsys, "index", corpus, "--index", index_copy)
    assert_one_line_error(rc, err, "already in", "'d0017'")
    assert snapshot(index_copy) == before
    with Index.open(index_copy) as ix:
        assert ix.rows_of(["fresh0000"]) == [None]
    # the lock was released: a valid addition then works
    rc, out, err = run(capsys, "index", corpus_writer([doc_line(d) for d in new], name="ok.jsonl"),
                       "--index", index_copy)
    assert rc == 0, err
    with Index.open(index_copy) as ix:
        assert ix.n_docs == before[0] + 3


def test_index_with_bad_factory(tmp_path, capsys, fake_cli, corpus_writer, docs):
    new = tmp_path / "ix"
    rc, _, err = run(capsys, "index", corpus_writer(docs[:10]), "--index", new, "--dense-factory", "Bogus77")
    assert_one_line_error(rc, err, "'Bogus77'")
    assert not new.exists()


def test_search_missing_index_dir(tmp_path, capsys, fake_cli):
    rc, out, err = run(capsys, "search", tmp_path / "absent", "query")
    assert_one_line_error(rc, err, str(tmp_path / "absent"), "does not exist")
    assert out == "" and not (tmp_path / "absent").exists()


def test_search_foreign_directory(tmp_path, capsys, fake_cli):
    d = tmp_path / "foreign"
    d.mkdir()
    (d / "data.bin").write_bytes(b"\x00\x01")
    rc, out, err = run(capsys, "search", d, "query")
    assert_one_line_error(rc, err, "not a hylex index", "manifest.json")
    assert sorted(p.name for p in d.iterdir()) == ["data.bin"]
    # a foreign manifest, too
    (d / "manifest.json").write_text(json.dumps({"format": "elastic"}))
    rc, out, err = run(capsys, "search", d, "query")
    assert_one_line_error(rc, err, "not a hylex index", "'elastic'")


@pytest.mark.parametrize("k", ["0", "-1"])
def test_search_bad_k(capsys, fake_cli, index_copy, k):
    before = snapshot(index_copy)
    rc, out, err = run(capsys, "search", index_copy, "chess pawn", "-k", k)
    assert_one_line_error(rc, err, "k must be a positive integer", f"got {k}")
    assert out == ""
    assert snapshot(index_copy) == before


def test_eval_missing_beir_dir(tmp_path, capsys, fake_cli, index_copy):
    rc, _, err = run(capsys, "eval", tmp_path / "nobeir", "--index", index_copy)
    assert_one_line_error(rc, err, "nobeir", "does not exist")


def test_index_passes_encoder_settings(fake_cli, capsys, tmp_path):
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, make_docs(5))
    code, _, err = run(capsys, "index", str(corpus), "--index", str(tmp_path / "idx"), "--prompt", "echo",
                       "--pooling", "mean", "--expansion", "4", "--no-own-words", "--stopwords", "foo, bar",
                       "--long-docs", "chunk", "--chunk-overlap", "32", "--dense-agg", "mean",
                       "--max-length", "256", "--sparse-topk", "64")
    assert code == 0, err
    cfg = fake_cli[0][1]["config"]
    assert cfg.model == DEFAULT_MODEL
    assert cfg.prompt == "echo" and cfg.pooling == "mean" and cfg.expansion == 4
    assert cfg.own_words is False and cfg.stopwords == ["foo", "bar"]
    assert cfg.long_docs == "chunk" and cfg.chunk_overlap == 32 and cfg.dense_agg == "mean"
    assert cfg.max_length == 256 and cfg.sparse_topk == 64


def test_index_rejects_unknown_setting_choice(fake_cli, capsys, tmp_path):
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, make_docs(2))
    with pytest.raises(SystemExit) as e:
        run(capsys, "index", str(corpus), "--index", str(tmp_path / "idx"), "--pooling", "median")
    assert e.value.code == 2
    assert "median" in capsys.readouterr().err


def test_stats_and_validate(fake_cli, capsys, tmp_path):
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, make_docs(30))
    idx = tmp_path / "idx"
    assert run(capsys, "index", str(corpus), "--index", str(idx), "--segment-size", "10")[0] == 0
    code, out, _ = run(capsys, "stats", str(idx), "--json")
    assert code == 0
    st = json.loads(out)
    assert st["documents"] == 30 and len(st["segments"]) == 3 and st["encoder"]["model_id"] == "fake"
    assert sum(s["documents"] for s in st["segments"]) == 30 and all(s["bytes"] > 0 for s in st["segments"])
    code, out, _ = run(capsys, "stats", str(idx))
    assert code == 0 and "30 documents" in out and "seg-000002" in out
    code, out, _ = run(capsys, "validate", str(idx))
    assert code == 0 and "ok" in out
    # damage one byte of a segment file (same size): validate names the file and exits non-zero
    f = idx / "segments" / "seg-000001" / "impact_impacts.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    code, _, err = run(capsys, "validate", str(idx))
    assert code == 1 and "impact_impacts.npy" in err and "checksum" in err


def test_sparse_storage_and_approximate_search_flags(fake_cli, capsys, tmp_path, corpus_writer, docs):
    corpus = corpus_writer(docs)
    ix = tmp_path / "ix"
    rc, out, err = run(capsys, "index", corpus, "--index", ix, "--sparse-bits", 8, "--keep-top", 4)
    assert rc == 0, err
    with Index.open(ix) as index:
        assert index.manifest["sparse"]["bits"] == 8 and index.manifest["sparse"]["keep_top"] == 4
    rc, out, err = run(capsys, "search", ix, "star galaxy telescope", "-k", 3, "--mode", "sparse", "--query-cut", 2,
                       "--candidates", 20, "--json")
    assert rc == 0, err
    hits = json.loads(out)[0]["hits"]
    assert len(hits) == 3 and hits[0]["metadata"]["topic"] == "astronomy"
    # bad knobs fail in one line before any encoding
    rc, out, err = run(capsys, "search", ix, "star", "--heap-factor", 0.5)
    assert_one_line_error(rc, err, "heap_factor must be a number >= 1")
    rc, out, err = run(capsys, "index", corpus, "--index", tmp_path / "ix2", "--keep-fraction", 2)
    assert_one_line_error(rc, err, "keep_fraction must be None or a number in (0, 1]")
    assert not (tmp_path / "ix2").exists()


# -- a living index from the command line (issue 5) ---------------------------------------------------------------
def test_skip_invalid_writes_every_rejected_line(tmp_path, capsys, fake_cli, docs):
    """The bad-input catalogue of a corpus: each malformed line is named (file and line) or, with
    --skip-invalid, written to the rejects file with its reason; valid lines are indexed, nothing dropped
    silently."""
    good = [doc_line(d) for d in docs[:5]]
    bad = ['{"_id": "x1", "text": "unterminated', '{"text": "no id here"}', '{"_id": "x3", "title": "t"}',
           '{"_id": "x4", "text": "  ", "title": ""}', '{"_id": "x5", "text": "m", "metadata": [1, 2]}',
           doc_line(docs[0]), '["not", "an", "object"]']
    path = tmp_path / "c.jsonl"
    with open(path, "wb") as f:
        for line in good[:2] + bad[:3] + good[2:] + bad[3:]:
            f.write(line.encode() + b"\n")
        f.write(b'{"_id": "x8", "text": "caf\xe9"}\n')  # latin-1 byte: invalid UTF-8
    rc, _, err = run(capsys, "index", path, "--index", tmp_path / "strict")
    assert_one_line_error(rc, err, "c.jsonl line 3", "not valid JSON")
    assert not (tmp_path / "strict").exists()
    rej = tmp_path / "rejects.jsonl"
    rc, out, err = run(capsys, "index", path, "--index", tmp_path / "ix", "--skip-invalid", rej)
    assert rc == 0, err
    rows = [json.loads(x) for x in rej.read_text().splitlines()]
    # a repeated id is found when its chunk is checked, after the reader rejected the later malformed lines
    assert sorted(r["line"] for r in rows) == [3, 4, 5, 10, 11, 12, 13]
    reasons = " | ".join(r["error"] for r in rows)
    for needle in ("not valid JSON", "has no id", "no \"text\" field", "\"metadata\" must be a JSON "
                   "object", "appears earlier in the corpus", "expected a JSON object", "not valid UTF-8"):
        assert needle in reasons, needle
    # the empty document (x4, line 9) is a document: indexed and counted, not rejected
    assert "7 invalid line(s) rejected" in out and "skipped 7 invalid line(s)" in err and "1 empty" in out
    with Index.open(tmp_path / "ix") as ix:
        assert ix.n_docs == 6 and ix.validate() == [] and ix.get(["x4"])[0]["text"] == "  "


def test_megabyte_document_is_stored_whole(tmp_path, capsys, fake_cli):
    big = "word " * 210_000  # ~1 MB
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "big", "text": big}, {"_id": "small", "text": "star galaxy"}])
    rc, _, err = run(capsys, "index", path, "--index", tmp_path / "ix")
    assert rc == 0, err
    rc, out, _ = run(capsys, "get", tmp_path / "ix", "big")
    assert rc == 0 and json.loads(out)["text"] == big


def test_resume_upsert_delete_merge_get_and_filters(tmp_path, capsys, fake_cli, docs):
    corpus = write_jsonl(tmp_path / "all.jsonl", docs[:60])
    part = write_jsonl(tmp_path / "part.jsonl", docs[:25])
    ix = tmp_path / "ix"
    assert run(capsys, "index", part, "--index", ix, "--segment-size", 10, "--no-auto-merge")[0] == 0
    rc, _, err = run(capsys, "index", corpus, "--index", ix)
    assert_one_line_error(rc, err, "already in", "--resume", "--upsert")
    rc, out, err = run(capsys, "index", corpus, "--index", ix, "--resume", "--segment-size", 10)
    assert rc == 0, err
    assert "25 already indexed, skipped" in out and out.splitlines()[0].startswith("committed 10 documents (")
    changed = [docs[3].__class__(id=docs[3].id, text="a changed text", title="", metadata={"topic": "new"})]
    chg = write_jsonl(tmp_path / "chg.jsonl", changed)
    rc, _, err = run(capsys, "index", chg, "--index", ix, "--resume")
    assert_one_line_error(rc, err, docs[3].id, "other content", "--upsert")
    assert run(capsys, "index", chg, "--index", ix, "--upsert")[0] == 0
    rc, out, _ = run(capsys, "get", ix, docs[3].id, "nope")
    assert rc == 1 and json.loads(out.splitlines()[0])["text"] == "a changed text"
    rc, out, err = run(capsys, "delete", ix, "--ids", f"{docs[0].id},{docs[1].id},nope")
    assert rc == 0 and out.startswith("deleted 2 document(s)") and "58 left" in out
    topic = docs[5].metadata["topic"]
    rc, out, err = run(capsys, "delete", ix, "--filter", json.dumps({"topic": topic}))
    n_topic = sum(d.metadata["topic"] == topic for d in docs[2:60] if d.id != docs[3].id)
    assert rc == 0 and out.startswith(f"deleted {n_topic} document(s)")
    rc, out, _ = run(capsys, "stats", ix)
    assert f"{58 - n_topic} documents ({2 + n_topic + 1} deleted)" in out
    rc, out, err = run(capsys, "search", ix, "star galaxy", "-k", 5, "--json", "--filter",
                       json.dumps({"n": {"$lt": 30}}))
    assert rc == 0, err
    hits = json.loads(out)[0]["hits"]
    assert hits and all(h["metadata"]["n"] < 30 for h in hits)
    rc, out, _ = run(capsys, "merge", ix)
    assert rc == 0 and "into 1" in out
    rc, out, _ = run(capsys, "stats", ix)
    assert f"{58 - n_topic} documents (0 deleted) in 1 segment(s)" in out
    assert run(capsys, "validate", ix)[0] == 0


@pytest.mark.parametrize("argv, needles", [
    (["delete", "IX"], ["--ids, --filter or --all"]),
    (["delete", "IX", "--ids", "a", "--filter", "{}"], ["--ids, --filter or --all"]),
    (["delete", "IX", "--filter", "{bad"], ["filter is not valid JSON"]),
    (["search", "IX", "q", "--filter", '{"a": {"$regex": "x"}}'], ["unknown operator '$regex'"]),
    (["merge", "IX", "--segments", "seg-999999"], ["no segment named seg-999999"]),
])
def test_living_index_command_errors(tmp_path, capsys, fake_cli, docs, argv, needles):
    ix = tmp_path / "ix"
    assert run(capsys, "index", write_jsonl(tmp_path / "c.jsonl", docs[:20]), "--index", ix)[0] == 0
    before = snapshot(ix)
    rc, _, err = run(capsys, *[str(ix) if a == "IX" else a for a in argv])
    assert_one_line_error(rc, err, *needles)
    assert snapshot(ix) == before


def test_second_writer_is_refused(tmp_path, capsys, fake_cli, docs):
    ix = tmp_path / "ix"
    assert run(capsys, "index", write_jsonl(tmp_path / "c.jsonl", docs[:20]), "--index", ix)[0] == 0
    with Index.open(ix, writable=True):
        rc, _, err = run(capsys, "delete", ix, "--ids", docs[0].id)
        assert_one_line_error(rc, err, "another process is writing")
        rc, _, err = run(capsys, "index", write_jsonl(tmp_path / "d.jsonl", docs[20:30]), "--index", ix)
        assert_one_line_error(rc, err, "another process is writing")
    with Index.open(ix) as index:
        assert index.n_docs == 20


def test_serve_refuses_an_unset_api_key_variable(tmp_path, capsys, fake_cli, docs, monkeypatch):
    ix = tmp_path / "ix"
    assert run(capsys, "index", write_jsonl(tmp_path / "c.jsonl", docs[:5]), "--index", ix)[0] == 0
    monkeypatch.delenv("HYLEX_TEST_KEY", raising=False)
    rc, _, err = run(capsys, "serve", ix, "--api-key-env", "HYLEX_TEST_KEY")
    assert_one_line_error(rc, err, "HYLEX_TEST_KEY is unset or empty")
    rc, _, err = run(capsys, "serve", tmp_path / "nowhere")
    assert_one_line_error(rc, err, "does not exist")
    rc, _, err = run(capsys, "serve", ix, "--port", "70000")
    assert_one_line_error(rc, err, "port must be an integer in [0, 65535]")
    rc, _, err = run(capsys, "serve", ix, "--write-wait-s", "-1")
    assert_one_line_error(rc, err, "--write-wait-s must be >= 0")
    rc, _, err = run(capsys, "serve", ix, "--encoder", "no_colon")
    assert_one_line_error(rc, err, "must be given as module:callable")
    with pytest.raises(SystemExit):
        run(capsys, "serve", ix, "--workers", "0")
