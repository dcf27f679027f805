"""Crash safety: `hylex index` killed with SIGKILL at random moments (benchmarks/crash.py; CI runs a reduced
number of trials, the benchmark 20): every reopened index validates, holds every acknowledged batch and only
whole batches, and `--resume` completes it."""
from __future__ import annotations

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def crash():
    return load_benchmark("crash")


def test_sigkill_during_indexing_loses_nothing_acknowledged(crash, tmp_path):
    recs = crash.run_trials(3, tmp_path, n_docs=48, seed=1, log=lambda _: None)
    for r in recs:
        assert r["ok"], r
        assert r["resumed"], r
        assert r["n_docs"] >= r["acknowledged"]


def test_acknowledgement_lines_are_parsed(crash):
    out = "committed 8/64 documents\nnoise\ncommitted 16/64 documents\n"
    assert crash.acknowledged(out) == 16 and crash.acknowledged("") == 0
    # what `hylex index` prints (was never matched: every trial counted 0 acknowledged documents)
    assert crash.acknowledged("committed 8 documents (12% of corpus.jsonl)\ncommitted 24 documents (37% of "
                              "corpus.jsonl)\n") == 24
