"""Small workloads run on the kernels' NumPy twins, large ones on numba (hylex.kernels.topk: SMALL_WORK, use_numba).

The same searches through both paths give identical results (ids, rows and scores bit for bit, ties included) on
a seeded multi-segment index with tombstones: dense, sparse exact and approximate, BM25, fusions, filters. A
one-shot search on a small index (the CLI's hybrid search included) does not import numba; a large one does.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import QUERY_TEXTS, FakeEncoder, make_docs

import hylex.kernels.topk as topk
from hylex.indexing import build_index
from hylex.indexing.index import Index
from hylex.kernels import kernel_backend
from hylex.retrieval import Searcher

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    """330 synthetic documents in 4 segments (no automatic merge), 40 of them deleted (tombstones)."""
    path = tmp_path_factory.mktemp("dispatch") / "index"
    enc = FakeEncoder()
    build_index(make_docs(330, seed=3), path, enc, segment_size=90, merge={"auto": False}, progress=False)
    with Index.open(path, writable=True) as ix:
        ix.delete([f"d{i:04d}" for i in range(5, 330, 8)])
    with Index.open(path) as ix:
        assert len(ix.segments) == 4 and ix.n_deleted == 41
    return path


SEARCHES = [
    {"mode": "dense"},
    {"mode": "sparse"},
    {"mode": "sparse", "query_cut": 2},  # approximate: the cut query's exact top-k, rescored with the whole query
    {"mode": "sparse", "query_cut": 3, "candidates": 25},
    {"mode": "sparse", "heap_factor": 1.5, "query_cut": 2},  # heap_factor > 1: numba on both sides
    {"mode": "bm25"},
    {"mode": "bm25", "k1": 1.5, "b": 0.9},
    {},  # hybrid, the stored (built-in) fusion: dense + sparse + bm25
    {"fusion": "rrf"},
    {"arms": ("dense", "sparse"), "alpha": 0.3},
    {"arms": ("sparse", "bm25"), "weights": (0.5, 0.5), "depth": 7},
    {"filter": {"topic": "astronomy"}},  # selective: sparse scores the allowed rows through the forward index
    {"mode": "sparse", "filter": {"topic": {"$in": ["music", "law"]}}},
    {"mode": "dense", "filter": {"topic": {"$in": ["music", "law"]}}},  # >= 16 queries, few rows: flat_topk
    {"filter": {"n": {"$gte": 100}}, "fusion": "rrf"},
    {"mode": "bm25", "filter": {"n": {"$lt": 40}}},
    {"filter": {"topic": "no such topic"}},  # nothing allowed
]


def run_both(searcher: Searcher, queries, **kw):
    out = {}
    for backend in ("numba", "numpy"):
        with kernel_backend(backend):
            out[backend] = searcher.search(queries, **kw)
    return out["numba"], out["numpy"]


def assert_identical(a, b) -> None:
    assert a.scores.dtype == b.scores.dtype == np.float32
    assert a.rows.dtype == b.rows.dtype == np.int64
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.ids, b.ids)
    # bit for bit (-inf padding included)
    np.testing.assert_array_equal(a.scores.view(np.uint32), b.scores.view(np.uint32))


@pytest.mark.parametrize("kw", SEARCHES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "hybrid")
@pytest.mark.parametrize("k", [1, 10, 1000])
def test_numba_and_numpy_paths_give_identical_results(small_index, kw, k):
    searcher = Searcher(small_index, encoder=FakeEncoder())
    a, b = run_both(searcher, QUERY_TEXTS, k=k, **kw)  # 24 queries
    assert_identical(a, b)
    assert (a.rows >= 0).any() or kw.get("filter") == {"topic": "no such topic"}
    a1, b1 = run_both(searcher, QUERY_TEXTS[3], k=k, **kw)  # one query, as a one-shot search
    assert_identical(a1, b1)


def test_ties_break_alike(tmp_path):
    """Every document three times (ids apart), over three segments: each arm's scores tie in threes, and both paths
    order tied hits by row."""
    from hylex.corpus import Document

    docs = [Document(f"{d.id}-{c}", d.text, d.title, d.metadata) for d in make_docs(40, seed=5) for c in range(3)]
    build_index(docs, tmp_path / "ix", FakeEncoder(), segment_size=50, merge={"auto": False}, progress=False)
    with Index.open(tmp_path / "ix", writable=True) as ix:
        ix.delete(["d0001-1", "d0007-0"])
    searcher = Searcher(tmp_path / "ix", encoder=FakeEncoder())
    for kw in ({"mode": "sparse"}, {"mode": "bm25"}, {"mode": "dense"}, {}, {"fusion": "rrf"},
               {"mode": "sparse", "query_cut": 1, "candidates": 12}):
        a, b = run_both(searcher, ["star telescope", "bake flour oven", "pawn"], k=30, **kw)
        assert_identical(a, b)
        hit = (a.rows[:, 1:] >= 0) & (a.rows[:, :-1] >= 0)
        tied = hit & (a.scores[:, 1:] == a.scores[:, :-1])
        assert tied.sum() >= 5 or kw.get("fusion") == "rrf", kw  # rrf scores ranks: duplicates do not tie
        assert (a.rows[:, 1:][tied] > a.rows[:, :-1][tied]).all()


def test_auto_dispatch(monkeypatch):
    """"auto": the twins up to SMALL_WORK while a module's kernels are not compiled in the process, else numba."""
    monkeypatch.setattr(topk, "_compiled", set())
    assert not topk.use_numba(topk.SMALL_WORK, "hylex.kernels.bm25")
    assert topk.use_numba(topk.SMALL_WORK + 1, "hylex.kernels.bm25")
    topk._compiled.add("hylex.kernels.bm25")
    assert topk.use_numba(1, "hylex.kernels.bm25")
    assert not topk.use_numba(1, "hylex.kernels.fusion")
    with kernel_backend("numba"):
        assert topk.use_numba(0, "hylex.kernels.fusion")
    with kernel_backend("numpy"):
        assert not topk.use_numba(10**12, "hylex.kernels.bm25")
    with pytest.raises(ValueError, match="kernel backend"):
        with kernel_backend("fast"):
            pass


CHILD = textwrap.dedent("""
    import sys, types
    sys.path.insert(0, {tests!r})
    import hylex.engine.config
    from conftest import FakeEncoder
    # the CLI loads the index's model through hylex.engine.encoder: a fake one here (no torch either)
    stub = types.ModuleType("hylex.engine.encoder")
    stub.EncoderConfig = hylex.engine.config.EncoderConfig
    stub.Encoder = lambda *args, **kwargs: FakeEncoder()
    sys.modules["hylex.engine.encoder"] = stub
    import hylex.kernels.topk
    hylex.kernels.topk.SMALL_WORK = {small_work}
    from hylex.cli import main
    rc = main(["search", {ix!r}, "star galaxy telescope", "-k", "3", "--no-progress"])
    rc += main(["search", {ix!r}, "bake bread", "--fusion", "rrf", "--filter", '{{"n": {{"$gte": 10}}}}'])
    rc += main(["search", {ix!r}, "volcano", "--mode", "sparse", "--query-cut", "1", "--candidates", "5"])
    from hylex.retrieval import Searcher
    res = Searcher({ix!r}, encoder=FakeEncoder()).search(["chess opening"], filter={{"topic": "chess"}})
    sys.stderr.write("NUMBA=%s LLVMLITE=%s RC=%s HIT=%s" % ("numba" in sys.modules, "llvmlite" in sys.modules, rc,
                                                            res.ids[0][0]))
""")


@pytest.mark.parametrize("small_work,numba", [(topk.SMALL_WORK, False), (0, True)])
def test_one_shot_search_on_a_small_index_does_not_import_numba(small_index, small_work, numba):
    code = CHILD.format(tests=str(TESTS), ix=str(small_index), small_work=small_work)
    env = {**__import__("os").environ}
    env["PYTHONPATH"] = str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert f"NUMBA={numba} LLVMLITE={numba} RC=0 HIT=d" in p.stderr, p.stderr
    assert p.stdout.count("query:") == 3, p.stdout
