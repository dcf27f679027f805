"""The README's main job (``hylex demo``) runs on the real default model and finds the obvious answers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hylex.sample import EXAMPLE_ANSWERS


def test_demo_indexes_sample_and_answers(tmp_path):
    cmd = [sys.executable, "-m", "hylex", "--no-progress", "demo", "--limit", "120", "--workdir", str(tmp_path),
           "-k", "3"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "indexing 120 docstrings" in out.stdout
    assert (tmp_path / "stdlib-120" / "manifest.json").exists()
    blocks = out.stdout.split("\nquery: ")[1:]
    assert len(blocks) == 6
    # every example query has at least one hit, printed with rank, score and id
    assert all("    1 " in b for b in blocks)
    # a second run reuses the index
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "using the sample index" in again.stdout


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, "-m", "hylex", "--no-progress", "demo", "--limit", "120", "--workdir",
                    str(work)], check=True, capture_output=True, timeout=600)
    return work / "stdlib-120"


def search_json(index: Path, query: str, k: int) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "hylex", "search", str(index), query, "-k", str(k), "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]["hits"]


def test_search_json_on_demo_index(demo_index):
    ids = [h["id"] for h in search_json(demo_index, "compress data with gzip", 5)]
    modules = {i.split(".")[0] for i in ids}
    assert modules & set(EXAMPLE_ANSWERS["compress data with gzip"]), ids


def test_serve_with_two_workers_on_the_real_model(demo_index, tmp_path):
    """`hylex serve --workers 2` with the default model in each worker: the same hits and scores over HTTP,
    from either worker, as `hylex search`; an upsert through one worker is found through both."""
    import shutil

    from test_workers import Serve

    index = tmp_path / "ix"
    shutil.copytree(demo_index, index, ignore=shutil.ignore_patterns(".lock"))
    query = "compress data with gzip"
    want = search_json(index, query, 5)
    s = Serve(index, "--workers", "2")
    try:
        assert "(2 workers" in s.line
        s.stats_until(lambda by: len(by) == 2)
        for _ in range(4):
            code, out = s.call("POST", "/search", {"queries": [query], "k": 5})
            hits = out["results"][0]["hits"]
            assert code == 200 and [h["id"] for h in hits] == [h["id"] for h in want]
            np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in want], rtol=1e-4)
        doc = {"id": "my.gzip.notes", "text": "Notes on gzip: compress and decompress data streams with zlib."}
        assert s.call("POST", "/documents", {"documents": [doc]})[1]["committed"] == 1
        for _ in range(6):  # either worker finds it
            out = s.call("POST", "/search", {"queries": ["gzip notes compress"], "k": 3})[1]
            assert "my.gzip.notes" in [h["id"] for h in out["results"][0]["hits"]]
    finally:
        rc = s.stop()
    assert rc == 0
