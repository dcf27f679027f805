"""QueryBatcher: forward passes bounded by a token budget, requests answered batch by batch, deadlines that
refuse or drop work that cannot be served in time (issue 12 item 9: 200 concurrent queries used to share one
pass and all wait for it)."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp

from hylex.service.batching import Busy, QueryBatcher


class SlowEncode:
    """Fake encode: ``per_text`` seconds per text; records each batch's texts and start time."""

    def __init__(self, per_text: float = 0.0):
        self.per_text = per_text
        self.batches: list[list[str]] = []
        self.starts: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, texts):
        self.starts.append(time.monotonic())
        self.batches.append(list(texts))
        time.sleep(self.per_text * len(texts))
        dense = np.array([[float(len(t)), 1.0] for t in texts], np.float32)
        return dense, sp.csr_matrix(dense)


async def _gather(batcher, texts_per_request, timeout=None, stagger=0.0):
    answered: dict[int, float] = {}

    async def one(i, texts):
        await asyncio.sleep(stagger * i)
        try:
            d, s = await batcher.encode(texts, timeout=timeout)
            answered[i] = time.monotonic()
            return d
        except Busy as e:
            return e

    out = await asyncio.gather(*(one(i, t) for i, t in enumerate(texts_per_request)))
    return out, answered


def test_batches_stay_within_the_token_budget_and_results_are_each_requests_own():
    enc = SlowEncode(0.01)
    b = QueryBatcher(enc, max_wait=0.05, max_batch_tokens=50, count_tokens=lambda t: 10)
    try:
        reqs = [[f"q{i}" + "x" * i] for i in range(23)]
        out, _ = asyncio.run(_gather(b, reqs))
    finally:
        b.close()
    assert all(len(x) <= 5 for x in enc.batches) and sum(map(len, enc.batches)) == 23
    assert len(enc.batches) >= 5
    for req, d in zip(reqs, out):
        assert d.shape == (1, 2) and d[0, 0] == len(req[0])  # each request gets its own rows back
    assert max(b.batch_tokens) <= 50


def test_a_request_over_the_budget_runs_alone():
    enc = SlowEncode()
    b = QueryBatcher(enc, max_wait=0.05, max_batch_tokens=20, count_tokens=lambda t: 10)
    try:
        out, _ = asyncio.run(_gather(b, [["a"], ["b"] * 5, ["c"]]))
    finally:
        b.close()
    assert ["b"] * 5 in enc.batches and all(isinstance(x, np.ndarray) for x in out)


def test_early_requests_are_answered_before_later_batches_finish():
    enc = SlowEncode(0.05)
    b = QueryBatcher(enc, max_wait=0.02, max_batch_tokens=40, count_tokens=lambda t: 10)
    try:
        out, answered = asyncio.run(_gather(b, [[f"q{i}"] for i in range(16)]))
    finally:
        b.close()
    assert len(enc.batches) == 4
    first = min(answered.values())
    # the first batch's requests had their answers before the last batch was even started
    assert first < enc.starts[-1]


def test_requests_past_their_deadline_get_busy_and_are_not_encoded():
    enc = SlowEncode(0.2)
    b = QueryBatcher(enc, max_wait=0.0, max_batch_tokens=10, count_tokens=lambda t: 10)
    try:
        out, _ = asyncio.run(_gather(b, [[f"q{i}"] for i in range(8)], timeout=0.5))
    finally:
        b.close()
    ok = [x for x in out if isinstance(x, np.ndarray)]
    busy = [x for x in out if isinstance(x, Busy)]
    assert ok and busy and len(ok) + len(busy) == 8
    encoded = {t for batch in enc.batches for t in batch}
    assert len(encoded) < 8  # expired requests were dropped before their forward pass
    assert b.expired >= 1 and all(e.retry_after >= 1 for e in busy)


def test_a_request_that_cannot_make_its_deadline_is_refused_at_once():
    enc = SlowEncode(0.05)
    b = QueryBatcher(enc, max_wait=0.0, max_batch_tokens=10, count_tokens=lambda t: 10)

    async def scenario():
        await b.encode(["warm"])  # one measured batch: ~0.005 s per token
        slow = [asyncio.ensure_future(b.encode([f"q{i}"])) for i in range(20)]  # ~1 s of work queued
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(Busy, match="over the 0.2 s request timeout") as e:
            await b.encode(["late"], timeout=0.2)
        refused_in = time.monotonic() - t0
        await asyncio.gather(*slow)
        return refused_in, e.value

    try:
        refused_in, err = asyncio.run(scenario())
    finally:
        b.close()
    assert refused_in < 0.2 and b.refused == 1 and err.retry_after >= 1
    assert ["late"] not in enc.batches
