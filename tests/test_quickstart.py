"""The README's main job (``hylex demo``) runs on the real default model and finds the obvious answers."""
from __future__ import annotations

import json
import subprocess
import sys

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


def test_search_json_on_demo_index(tmp_path):
    subprocess.run([sys.executable, "-m", "hylex", "--no-progress", "demo", "--limit", "120", "--workdir",
                    str(tmp_path)], check=True, capture_output=True, timeout=600)
    out = subprocess.run([sys.executable, "-m", "hylex", "search", str(tmp_path / "stdlib-120"),
                          "compress data with gzip", "-k", "5", "--json"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)[0]["hits"]
    ids = [h["id"] for h in hits]
    modules = {i.split(".")[0] for i in ids}
    assert modules & set(EXAMPLE_ANSWERS["compress data with gzip"]), ids
