"""Regression tests of issue 12 (a hostile audit): inputs that crashed, requests that were unbounded, silent
problems. Each test failed on b891f54. The HTTP service's items are in tests/test_service_hardening.py."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FakeEncoder, make_docs, write_jsonl
from hylex import cli
from hylex.corpus import MAX_ID_BYTES, Document, clean_text, read_corpus
from hylex.errors import CorpusError, HylexError
from hylex.indexing import Index, build_index
from hylex.retrieval import Searcher, delete_where

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_cli(monkeypatch):
    """Every encoder the CLI makes is a FakeEncoder recording the settings it was given (as its own settings, so
    an index's manifest holds them the way the real encoder's describe() would)."""
    import hylex.engine.encoder as engine_encoder

    made = []

    def factory(*args, config=None, **kwargs):
        made.append(config)
        settings = None
        if config is not None:
            config.validate()
            settings = {k: v for k, v in config.to_dict().items() if k not in ("dtype",)}
        return FakeEncoder(settings=settings)

    monkeypatch.setattr(engine_encoder, "Encoder", factory)
    return made


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([*map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hylex: error: "), err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def env_for_child() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# -- 1. unbounded k ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["dense", "sparse", "bm25", "hybrid"])
def test_huge_k_is_capped_at_the_live_documents(built_index, mode):
    enc = FakeEncoder().encode_queries(["star galaxy telescope"])
    s = Searcher(built_index)
    kwargs = {"bm25_queries": ["star galaxy telescope"]} if mode in ("bm25", "hybrid") else {}
    if mode != "bm25":
        kwargs.update(dense=enc.dense, sparse=enc.sparse)
    r = s.search(None, k=10**7, depth=10**7, mode=mode,
                 arms=("dense", "sparse", "bm25") if mode == "hybrid" else ("dense", "sparse"), **kwargs)
    assert r.shape == (1, s.index.n_docs)  # was (1, 10**7): 10**9 allocated tens of GB and was OOM-killed
    D, I = s.search_bm25(["star"], 10**8)
    assert D.shape == (1, s.index.n_docs)


def test_huge_k_on_the_command_line(fake_cli, capsys, index_copy):
    rc, out, err = run(capsys, "search", index_copy, "star galaxy", "--mode", "bm25", "-k", 10**9, "--json")
    assert rc == 0, err
    hits = json.loads(out)[0]["hits"]
    assert 0 < len(hits) <= 200


def test_k_is_capped_after_deletes(tmp_path):
    docs = make_docs(30)
    enc = FakeEncoder()
    build_index(docs, tmp_path / "ix", enc, progress=False)
    with Index.open(tmp_path / "ix", writable=True) as ix:
        ix.delete([d.id for d in docs[:25]])
    r = Searcher(tmp_path / "ix").search(["star"], k=1000, mode="bm25")
    assert r.shape == (1, 5)


# -- 2. ids LMDB cannot store --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, needle", [("x" * (MAX_ID_BYTES + 1), "UTF-8 bytes"), ("é" * 256, "UTF-8 bytes"),
                                         ("", "empty"), ("   ", "whitespace"), ("a\ud800", "surrogate")])
def test_documents_with_unstorable_ids_are_refused(bad, needle):
    with pytest.raises(CorpusError, match=needle):
        Document(bad, "text")


def test_longest_id_is_stored_and_read_back(tmp_path):
    long_id = "é" * (MAX_ID_BYTES // 2) + "x"  # 511 bytes
    assert len(long_id.encode()) == MAX_ID_BYTES
    docs = [Document(long_id, "star galaxy"), Document("a/b c?#%", "bake bread")]
    build_index(docs, tmp_path / "ix", FakeEncoder(), progress=False)
    with Index.open(tmp_path / "ix") as ix:
        assert [d["id"] for d in ix.get([long_id, "a/b c?#%"])] == [long_id, "a/b c?#%"]
        with pytest.raises(HylexError, match="UTF-8 bytes"):
            ix.get([long_id + "y"])  # was lmdb.BadValsizeError


def test_deleting_unstorable_ids_is_an_error_not_a_crash(index_copy):
    with Index.open(index_copy, writable=True) as ix:
        for bad in ("", " ", "z" * 600):
            with pytest.raises(HylexError):
                ix.delete([bad])
        assert ix.n_docs == 200


def test_corpus_with_an_over_long_id(fake_cli, capsys, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [*make_docs(3), {"_id": "L" * 600, "text": "too long an id"}])
    rc, _, err = run(capsys, "index", corpus, "--index", tmp_path / "ix")
    one_line_error(rc, err, "line 4", "600 UTF-8 bytes", "511")
    assert not (tmp_path / "ix").exists()
    # --skip-invalid: that line is rejected, the valid ones are indexed (was: the commit crashed, losing them)
    rc, out, err = run(capsys, "index", corpus, "--index", tmp_path / "ix", "--skip-invalid", tmp_path / "rej.jsonl")
    assert rc == 0, err
    assert Index.open(tmp_path / "ix").n_docs == 3
    rejected = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [4] and "UTF-8 bytes" in rejected[0]["error"]


# -- 3. lone surrogates -------------------------------------------------------------------------------------------
def test_clean_text_replaces_lone_surrogates_only():
    assert clean_text("ok") == "ok"
    assert clean_text("lone \ud800 here") == "lone \ufffd here"
    assert clean_text("pair \ud83d\ude00 joined") == "pair \U0001f600 joined"
    assert clean_text("tail \udfff") == "tail \ufffd"
    assert Document("s1", "a \ud800", title="\udc00 t", metadata={"k\ud800": ["v\udfff", 1]}).metadata == \
        {"k\ufffd": ["v\ufffd", 1]}


def test_lone_surrogate_in_a_corpus_is_indexed_and_searchable(fake_cli, capsys, tmp_path):
    raw = '{"_id": "s1", "text": "lone surrogate \\ud800 here", "title": "t\\udc00"}'
    corpus = write_jsonl(tmp_path / "c.jsonl", [*make_docs(3), raw])
    rc, _, err = run(capsys, "index", corpus, "--index", tmp_path / "ix")
    assert rc == 0, err  # was a crash in the store (UnicodeEncodeError) / the tokenizer (TypeError)
    with Index.open(tmp_path / "ix") as ix:
        assert ix.get(["s1"])[0]["text"] == "lone surrogate \ufffd here"
    for mode in ("bm25", "hybrid"):
        rc, out, err = run(capsys, "search", tmp_path / "ix", "surrogate \ud800 lone", "--mode", mode, "--json")
        assert rc == 0, err
        assert json.loads(out)[0]["hits"][0]["id"] == "s1"


def test_lone_surrogate_with_the_real_tokenizer():
    from hylex.engine import Encoder

    enc = Encoder(progress=False, encoding_cache=False)
    a = enc.encode_documents(["lone surrogate \ud800 here"])  # was TypeError from the tokenizer
    b = enc.encode_documents(["lone surrogate \ufffd here"])
    np.testing.assert_array_equal(a.dense, b.dense)
    assert (a.sparse != b.sparse).nnz == 0
    q = enc.encode_queries(["\udfff query"])
    assert q.dense.shape == (1, enc.dim)


# -- 4. numeric search parameters ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    ({"fusion": "rrf", "rrf_k": -1.0}, "rrf_k"), ({"fusion": "rrf", "rrf_k": math.nan}, "rrf_k"),
    ({"fusion": "rrf", "rrf_k": math.inf}, "rrf_k"), ({"alpha": math.nan}, "alpha"), ({"alpha": "0.5"}, "alpha"),
    ({"weights": [math.nan, 1.0]}, "weights"), ({"depth": 0}, "depth"), ({"k1": math.nan}, "k1"),
    ({"b": math.nan}, "b"), ({"heap_factor": math.nan}, "heap_factor"), ({"query_cut": 0}, "query_cut"),
    ({"candidates": -3}, "candidates"), ({"k": -1}, "k must")])
def test_bad_numeric_search_parameters(built_index, kwargs, needle):
    enc = FakeEncoder().encode_queries(["star"])
    with pytest.raises(HylexError, match=needle):  # rrf_k < 0 / NaN was a ValueError from the kernel: HTTP 500
        Searcher(built_index).search(None, dense=enc.dense, sparse=enc.sparse, **kwargs)


@pytest.mark.parametrize("argv, needle", [(["--fusion", "rrf", "--rrf-k", "nan"], "rrf_k"),
                                          (["--fusion", "rrf", "--rrf-k", "-5"], "rrf_k"),
                                          (["--alpha", "nan"], "alpha")])
def test_bad_numeric_options_on_the_command_line(fake_cli, capsys, index_copy, argv, needle):
    rc, _, err = run(capsys, "search", index_copy, "star", *argv)
    one_line_error(rc, err, needle)


# -- 7. CLI failures are one line ---------------------------------------------------------------------------------
def test_delete_ids_from_a_missing_file(fake_cli, capsys, index_copy, tmp_path):
    rc, _, err = run(capsys, "delete", index_copy, "--ids", f"@{tmp_path / 'missing-file'}")
    one_line_error(rc, err, "missing-file", "not a readable file")


def test_index_into_a_file(fake_cli, capsys, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(2))
    (tmp_path / "some-file").write_text("x")
    rc, _, err = run(capsys, "index", corpus, "--index", tmp_path / "some-file")
    one_line_error(rc, err, "some-file", "is a file, not a directory")
    rc, _, err = run(capsys, "stats", tmp_path / "some-file")
    one_line_error(rc, err, "is a file, not an index directory")


def test_unreadable_corpus_is_one_line(fake_cli, capsys, tmp_path):
    corpus = tmp_path / "dir.jsonl"
    corpus.mkdir()
    rc, _, err = run(capsys, "index", corpus, "--index", tmp_path / "ix")
    one_line_error(rc, err, "dir.jsonl")


def test_broken_pipe_exits_quietly(index_copy):
    # the reader closes the pipe before hylex writes (it needs ~1 s to start): EPIPE on the first write
    p = subprocess.Popen([sys.executable, "-m", "hylex", "stats", str(index_copy)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env_for_child())
    p.stdout.close()
    err = p.stderr.read().decode()
    rc = p.wait(60)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert rc == 141


# -- 8. an empty filter does not delete everything ----------------------------------------------------------------
def test_empty_filter_deletes_nothing(fake_cli, capsys, index_copy):
    rc, _, err = run(capsys, "delete", index_copy, "--filter", "{}")
    one_line_error(rc, err, "--all")
    with Index.open(index_copy, writable=True) as ix:
        assert ix.n_docs == 200
        with pytest.raises(HylexError, match="empty filter"):
            delete_where(ix, {})
        assert ix.n_docs == 200
    rc, out, err = run(capsys, "delete", index_copy, "--all")
    assert rc == 0, err
    assert "deleted 200" in out
    with Index.open(index_copy) as ix:
        assert ix.n_docs == 0
        assert Searcher(ix).search(["star"], mode="bm25").ids.tolist() == [[None]]


def test_delete_all_then_add_again(index_copy):
    with Index.open(index_copy, writable=True) as ix:
        assert ix.delete_all() == 200 and ix.delete_all() == 0
        enc = FakeEncoder()
        new = make_docs(3, prefix="n")
        e = enc.encode_documents([d.full_text for d in new])
        ix.add(new, e.dense, e.sparse)
        assert ix.n_docs == 3


# -- 11. settings ------------------------------------------------------------------------------------------------
def test_max_length_128_alone_is_valid():
    from hylex.engine.config import EncoderConfig

    cfg = EncoderConfig(max_length=128)
    cfg.validate()  # was: chunk_overlap 64 must be < max_length / 2
    assert cfg.chunk_overlap == 32
    cfg = EncoderConfig()
    cfg.validate()
    assert cfg.chunk_overlap == 64  # unchanged for the default max_length: existing manifests still match
    with pytest.raises(HylexError, match="chunk_overlap"):
        EncoderConfig(max_length=128, chunk_overlap=64).validate()


def test_upsert_inherits_the_index_settings(fake_cli, capsys, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(4))
    more = write_jsonl(tmp_path / "more.jsonl", make_docs(2, prefix="m"))
    rc, _, err = run(capsys, "index", corpus, "--index", tmp_path / "ix", "--max-length", 128, "--sparse-topk", 64,
                     "--pooling", "mean")
    assert rc == 0, err
    rc, _, err = run(capsys, "index", more, "--index", tmp_path / "ix", "--upsert")
    assert rc == 0, err  # was: the defaults (max_length 512, ...) were used and refused by the index
    cfg = fake_cli[-1]
    assert (cfg.max_length, cfg.sparse_topk, cfg.pooling, cfg.chunk_overlap) == (128, 64, "mean", 32)
    made = len(fake_cli)
    rc, _, err = run(capsys, "index", more, "--index", tmp_path / "ix", "--upsert", "--max-length", 256)
    line = one_line_error(rc, err, "max_length: index 128, given 256")
    assert len(line) < 300 and len(fake_cli) == made  # refused before a model was made


def test_mismatch_message_names_the_key():
    from hylex.indexing.builder import encoder_mismatch

    info = {"model_id": "m", "fingerprint": "a", "dim": 4, "vocab_size": 9,
            "settings": {"max_length": 512, "pooling": "last"}}
    mine = {"model_id": "m", "fingerprint": "b", "dim": 4, "vocab_size": 9,
            "settings": {"max_length": 512, "pooling": "mean", "own_words": True}}
    assert encoder_mismatch(info, mine) == ["fingerprint: index 'a', given 'b'", "pooling: index 'last', given 'mean'"]


# -- 12. one-shot commands import what they use -------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--version"], ["stats", "{ix}"], ["stats", "{ix}", "--json"],
                                  ["search", "{ix}", "star", "--mode", "bm25"], ["get", "{ix}", "d0001"]])
def test_commands_that_do_not_encode_do_not_import_torch(index_copy, argv):
    argv = [a.replace("{ix}", str(index_copy)) for a in argv]
    code = ("import sys\nfrom hylex.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code\nsys.stderr.write('TORCH=%s TRANSFORMERS=%s RC=%s' % ('torch' in sys.modules, "
            "'transformers' in sys.modules, rc))\n")
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env_for_child(),
                       timeout=120)
    assert "TORCH=False TRANSFORMERS=False RC=0" in p.stderr, p.stderr


@pytest.mark.parametrize("argv", [["--version"], ["stats", "{ix}"], ["stats", "{ix}", "--json"]])
def test_stats_and_version_import_no_search_libraries(index_copy, argv, capsys):
    """`hylex stats` reads the manifest alone: FAISS, SciPy and Numba stay unimported (~1 s of imports here)."""
    argv = [a.replace("{ix}", str(index_copy)) for a in argv]
    code = ("import sys\nfrom hylex.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code\nsys.stderr.write('HEAVY=%s RC=%s' % (sorted(m for m in ('faiss', 'numba', 'scipy') "
            "if m in sys.modules), rc))\n")
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env_for_child(),
                       timeout=120)
    assert "HEAVY=[] RC=0" in p.stderr, p.stderr
    if argv[0] == "stats":
        from hylex.indexing.index import Index

        with Index.open(index_copy) as ix:
            want = ix.stats()
        if "--json" in argv:
            got = json.loads(p.stdout)
            # plus the fusion a plain search uses (retrieval's, not the index layer's) and where each arm runs here
            assert got.pop("fusion")["source"] == "builtin"
            assert got.pop("devices")["sparse"]["device"] == "cpu"
            assert got == json.loads(json.dumps(want))
        else:
            assert f"{want['documents']} documents" in p.stdout


# -- 13. silent problems become visible ----------------------------------------------------------------------------
def test_eval_warns_when_judged_documents_are_not_indexed(fake_cli, capsys, tmp_path):
    docs = make_docs(20)
    beir = tmp_path / "beir"
    write_jsonl(beir / "corpus.jsonl", docs)
    write_jsonl(beir / "queries.jsonl", [{"_id": "q1", "text": "star galaxy"}, {"_id": "q2", "text": "bake"}])
    (beir / "qrels").mkdir()
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0000\t1\nq1\td0015\t1\n"
                                             "q2\td0001\t1\nq2\td0019\t0\n")
    build_index(docs[:10], tmp_path / "ix", FakeEncoder(), progress=False)  # a subset of the corpus
    rc, out, err = run(capsys, "eval", beir, "--index", tmp_path / "ix", "--json")
    assert rc == 0
    warning = [x for x in err.splitlines() if x.startswith("hylex: warning:")]
    assert len(warning) == 1 and "2 of the 4 documents judged" in warning[0] and "1 of them relevant" in warning[0]
    assert json.loads(out)["judged_missing"] == 2
    build_index(docs[10:], tmp_path / "ix", FakeEncoder(), progress=False)
    rc, out, err = run(capsys, "eval", beir, "--index", tmp_path / "ix", "--json")
    assert rc == 0 and "warning" not in err and json.loads(out)["judged_missing"] == 0


def test_nan_metadata_is_refused_with_the_line(fake_cli, capsys, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "t", "metadata": {"score": NaN}}\n')
    rc, _, err = run(capsys, "index", corpus, "--index", tmp_path / "ix")
    one_line_error(rc, err, "line 2", "NaN")
    with pytest.raises(CorpusError, match="infinity"):
        list(read_corpus(write_jsonl(tmp_path / "d.jsonl", ['{"_id": "a", "text": "t", "x": Infinity}'])))
    with pytest.raises(CorpusError, match="nested"):
        Document("a", "t", metadata={"x": json.loads("[" * 40 + "]" * 40)})


def test_deeply_nested_json_line_is_one_line(fake_cli, capsys, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "t", "m": ' + "[" * 100000 + "]" * 100000 + "}\n")
    rc, _, err = run(capsys, "index", corpus, "--index", tmp_path / "ix")
    one_line_error(rc, err, "line 1", "nested")


def test_index_summary_counts_truncated_documents(capsys, tmp_path):
    from hylex.engine import Encoder

    enc = Encoder(progress=False, encoding_cache=False, max_length=64)
    docs = [Document("long", "word " * 200_000), Document("short", "a short text")]
    rep = build_index(docs, tmp_path / "ix", enc, progress=False)
    assert rep.truncated == 1  # was an INFO log only


def test_index_command_warns_about_truncation(monkeypatch, capsys, tmp_path):
    import hylex.engine.encoder as engine_encoder

    class Truncating(FakeEncoder):
        def encode_documents(self, texts):
            self.stats = type("S", (), {"tokens": 10, "cache_hits": 0, "truncated": 1})()
            return super().encode_documents(texts)

    monkeypatch.setattr(engine_encoder, "Encoder", lambda *a, **k: Truncating())
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(3))
    rc, out, err = run(capsys, "index", corpus, "--index", tmp_path / "ix", "--chunk-size", 1)
    assert rc == 0
    assert "3 of 3 documents were longer than max_length" in err


# -- 14. progress bars and logs ------------------------------------------------------------------------------------
def test_no_loading_bar_and_no_bar_for_a_few_queries(capfd):
    from hylex.engine import Encoder

    capfd.readouterr()
    enc = Encoder(progress=True, encoding_cache=False)  # even asked for bars: loading and 1 query draw none
    enc.encode_queries(["one query"])
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "encode queries" not in err, err


def test_no_bars_when_stderr_is_not_a_terminal(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(40))
    code = ("import sys, time\nsys.path.insert(0, %r)\nfrom conftest import FakeEncoder\n"
            "class Slow(FakeEncoder):\n    progress = None\n    def encode_documents(self, t):\n"
            "        time.sleep(0.1)\n        return super().encode_documents(t)\n"
            "from hylex.indexing import build_index\nbuild_index(%r, %r, Slow(), chunk_size=4)\n"
            % (str(ROOT / "tests"), str(corpus), str(tmp_path / "ix")))
    log = tmp_path / "log.txt"
    with open(log, "w") as f:  # stderr is a file, as under nohup or a service manager
        subprocess.run([sys.executable, "-c", code], stderr=f, env=env_for_child(), timeout=120, check=True)
    assert log.read_text() == ""  # was dozens of bar lines


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_flags_after_the_subcommand(where):
    argv = ["stats", "IX"]
    argv = ["--no-progress", "-v", *argv] if where == "before" else [*argv, "--no-progress", "-v"]
    args = cli.build_parser().parse_args(argv)
    assert args.progress is False and args.verbose is True
    args = cli.build_parser().parse_args(["stats", "IX"])
    assert args.progress is None and args.verbose is False


def test_create_killed_before_its_manifest_can_be_created_again(tmp_path, fake_encoder):
    """A `hylex index` killed between mkdir and the manifest leaves an empty segments/: a rerun (or --resume)
    creates the index there (the crash test caught this refused as "not empty")."""
    from hylex.indexing import build_index

    ix = tmp_path / "ix"
    (ix / "segments").mkdir(parents=True)
    (ix / ".lock").write_text("")
    build_index(make_docs(5), ix, fake_encoder, progress=False, existing="resume")
    with Index.open(ix) as opened:
        assert opened.n_docs == 5
    other = tmp_path / "other"
    (other / "segments").mkdir(parents=True)
    (other / "segments" / "seg-000001").mkdir()  # not a leftover of a create: refused
    with pytest.raises(HylexError, match="not empty"):
        build_index(make_docs(5), other, fake_encoder, progress=False)
