"""Indexing on a real local Ray cluster (issue 14, item 4): the same index as a single process, a worker killed
mid-job, a driver killed then resumed, Parquet input, and the command line."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FakeEncoder, assert_same_index_results, doc_line, make_docs
from hylex.errors import HylexError
from hylex.indexing import Index
from hylex.indexing.builder import build_index

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
QUERIES = ["astronomy star planet galaxy", "cooking recipe oven flour", "football goal striker match",
           "chess opening pawn"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray cluster for the module (2 CPUs); workers import conftest and hylex from this checkout."""
    path = os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _corpus(tmp_path: Path, n: int = 200) -> Path:
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(gzip.compress("".join(doc_line(d) + "\n" for d in make_docs(n)).encode()))
    return path


def test_ray_index_equals_the_single_process_index(tmp_path):
    from hylex.indexing.distributed import index_with_ray

    corpus = _corpus(tmp_path)
    with pytest.raises(HylexError, match="the Ray cluster has 2 CPUs: 2 encoder actor"):
        index_with_ray(corpus, tmp_path / "ray", FakeEncoder, actors=2)  # refused: it would hang
    assert not (tmp_path / "ray" / "staging").exists()
    rep = index_with_ray(corpus, tmp_path / "ray", FakeEncoder, batch_size=16, segment_size=64)
    assert rep.documents == 200 and rep.segments == 4 and rep.extra["orphans"] == 0
    build_index(corpus, tmp_path / "one", FakeEncoder(), progress=False)
    assert_same_index_results(tmp_path / "ray", tmp_path / "one", FakeEncoder(), QUERIES)
    with Index.open(tmp_path / "ray") as ix:
        # segments of exactly --segment-size documents, the last one smaller
        assert ix.n_docs == 200 and ix.validate() == [] and sorted(s.n_docs for s in ix.segments) == [8, 64, 64, 64]
        assert not (tmp_path / "ray" / "staging").exists()
    # the same ids again are refused at the first commit, and nothing is changed
    with pytest.raises(HylexError, match="already in the index"):
        index_with_ray(corpus, tmp_path / "ray", FakeEncoder, batch_size=16, segment_size=64)
    with Index.open(tmp_path / "ray") as ix:
        assert ix.n_docs == 200 and ix.validate() == []


def test_parquet_corpus_on_ray(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from hylex.indexing.distributed import index_with_ray

    docs = make_docs(50)
    pq.write_table(pa.Table.from_pylist([json.loads(doc_line(d)) for d in docs]), tmp_path / "c.parquet")
    index_with_ray(tmp_path / "c.parquet", tmp_path / "ray", FakeEncoder, batch_size=8, segment_size=20)
    build_index(docs, tmp_path / "one", FakeEncoder(), progress=False)
    assert_same_index_results(tmp_path / "ray", tmp_path / "one", FakeEncoder(), QUERIES)
    with Index.open(tmp_path / "ray") as ix:
        assert ix.get(["d0003"])[0] == {"id": "d0003", "title": docs[3].title, "text": docs[3].text,
                                        "metadata": docs[3].metadata}


class DyingOnce(FakeEncoder):
    """Kills its own worker process (SIGKILL) on its second batch, once per marker file: a worker lost mid-job."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.batches = 0

    def encode_documents(self, texts):
        self.batches += 1
        if self.batches == 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().encode_documents(texts)


class DyingFactory:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self):
        return DyingOnce(self.marker)


def test_a_killed_worker_loses_and_duplicates_nothing(tmp_path):
    from hylex.indexing.distributed import index_with_ray

    corpus = _corpus(tmp_path)
    marker = tmp_path / "killed"
    rep = index_with_ray(corpus, tmp_path / "ray", DyingFactory(str(marker)), actors=1, batch_size=16,
                         segment_size=64)
    assert marker.exists()  # a worker was killed, and Ray restarted it and retried its batch
    assert rep.documents == 200
    with Index.open(tmp_path / "ray") as ix:
        assert ix.n_docs == 200 and ix.validate() == []
        assert all(r is not None for r in ix.rows_of([d.id for d in make_docs(200)]))
    build_index(corpus, tmp_path / "one", FakeEncoder(), progress=False)
    assert_same_index_results(tmp_path / "ray", tmp_path / "one", FakeEncoder(), QUERIES)


DRIVER = """
import os, signal, sys
from conftest import FakeEncoder
from hylex.indexing.distributed import index_with_ray
import ray
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
def die(done, total):
    os.kill(os.getpid(), signal.SIGKILL)  # the driver dies right after its first commit
index_with_ray(sys.argv[1], sys.argv[2], FakeEncoder, batch_size=16, segment_size=64, on_commit=die)
"""


def test_a_killed_driver_leaves_the_last_commit_and_resume_completes(tmp_path):
    from hylex.indexing.distributed import index_with_ray

    corpus = _corpus(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(corpus), str(tmp_path / "ray")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with Index.open(tmp_path / "ray") as ix:
        assert 0 < ix.n_docs < 200 and ix.validate() == []  # the first committed segment only
    rep = index_with_ray(corpus, tmp_path / "ray", FakeEncoder, batch_size=16, segment_size=64, existing="resume")
    assert rep.documents == 200  # the 64 committed ones replace themselves (same content): none twice
    with Index.open(tmp_path / "ray") as ix:
        assert ix.n_docs == 200 and ix.validate() == []
        assert not any(p.name != "segments" and p.name.startswith("staging") for p in (tmp_path / "ray").iterdir())
    build_index(corpus, tmp_path / "one", FakeEncoder(), progress=False)
    assert_same_index_results(tmp_path / "ray", tmp_path / "one", FakeEncoder(), QUERIES)


def test_the_command_line_indexes_on_ray(tmp_path, capsys):
    from hylex.cli import main

    corpus = _corpus(tmp_path, 60)
    rc = main(["--no-progress", "index", str(corpus), "--index", str(tmp_path / "ix"), "--ray",
               "--encoder", "conftest:FakeEncoder", "--segment-size", "25", "--chunk-size", "10"])
    out = capsys.readouterr().out
    assert rc == 0 and "indexed 60 documents" in out and "on Ray" in out
    build_index(corpus, tmp_path / "one", FakeEncoder(), progress=False)
    assert_same_index_results(tmp_path / "ix", tmp_path / "one", FakeEncoder(), QUERIES)


def test_the_real_default_model_on_ray_equals_the_single_process_index(tmp_path):
    """The packaged default model (float32, a shared encoding cache folder so the second build reuses the first's
    encodings only where they are identical by key): the same top-10 ids and scores."""
    from hylex.engine.encoder import Encoder, EncoderFactory
    from hylex.indexing.distributed import index_with_ray

    docs = make_docs(200)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(doc_line(d) + "\n" for d in docs))
    kwargs = {"progress": False, "encoding_cache": False, "threads": 1}
    factory = EncoderFactory({"dtype": "float32"}, kwargs)
    index_with_ray(corpus, tmp_path / "ray", factory, batch_size=32, segment_size=100)
    enc = Encoder(dtype="float32", progress=False, encoding_cache=False)
    build_index(corpus, tmp_path / "one", enc, progress=False)
    assert_same_index_results(tmp_path / "ray", tmp_path / "one", enc, QUERIES, atol=2e-3)
