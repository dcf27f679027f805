"""benchmarks/faults.py in its quick mode (one trial of each kind, small corpora; the benchmark runs five or more
of each): a full disk during `hylex index` and during service writes (where a tmpfs can be mounted), byte flips
in segment files, bit flips in docs.lmdb, a truncated data.mdb, a deleted store, a malformed manifest. Every
trial must pass: one-line refusals, no traceback, no signal, nothing silently wrong. The kill -9 trials are
tests/test_crash.py's."""
from __future__ import annotations

import pytest

from conftest import load_benchmark


@pytest.mark.slow
def test_fault_trials_quick(tmp_path):
    faults = load_benchmark("faults")
    kinds = [k for k in faults.KINDS if k != "kill_during_index"]
    lines = []
    rows = faults.run(kinds, 1, tmp_path, seed=1, quick=True, log=lines.append, verbose=False)
    assert [r["kind"] for r in rows] == kinds
    for r in rows:
        if r.get("skipped"):  # no tmpfs without root: tests/test_disk_full.py covers those paths by monkeypatching
            assert r["kind"].startswith("disk_full"), r
            continue
        assert r["tried"] >= 1 and r["passed"] == r["tried"], r
