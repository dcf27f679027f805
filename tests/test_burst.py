"""Issue 40 item 1: the service under a burst. Admission from the measured cost of what was encoded (prompt
included, texts capped where the encoder truncates) that cannot lock itself out, a request's search right after its
own forward pass, the deadline applied to the search itself."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp
from test_service import CountingEncoder, Server, concurrent

from hylex.service import create_app
from hylex.service.batching import Busy, CostModel, QueryBatcher, approx_tokens


def _rows(texts):
    dense = np.array([[float(len(t)), 1.0] for t in texts], np.float32)
    return dense, sp.csr_matrix(dense)


def test_a_wrong_first_estimate_cannot_lock_the_service_out():
    """The audit's lock-out: the first batch is slow and the prompt's size is learned inside it (as the service
    learns it from the encoder). Every later lone request used to be refused forever ("~91.5 s to encode")."""
    calls = []

    def encode(texts):
        if not calls:
            b.prompt_tokens = 54  # known only once the encoder is loaded, during the first encode
            time.sleep(0.5)
        calls.append(list(texts))
        return _rows(texts)

    b = QueryBatcher(encode, max_wait=0.0, count_tokens=lambda t: 20)

    async def scenario():
        await b.encode(["first"])
        return [await b.encode([f"q{i}"], timeout=0.2) for i in range(5)]

    try:
        out = asyncio.run(scenario())
    finally:
        b.close()
    assert len(out) == 5 and b.refused == 0 and len(calls) == 6
    # the first batch was costed with the prompt it was encoded with: 74 tokens, not 20
    assert b.batch_tokens[0] == 74


def test_an_idle_batcher_admits_even_on_a_high_estimate():
    b = QueryBatcher(lambda texts: _rows(texts), max_wait=0.0, count_tokens=lambda t: 10)
    b.cost.add(10, 100.0)  # a stale, absurd measurement: 10 s per token

    async def one():
        return await b.encode(["x"], timeout=0.5)

    try:
        d, _ = asyncio.run(one())
    finally:
        b.close()
    assert d.shape == (1, 2) and b.refused == 0
    assert b.cost.seconds(10, 1) < 100.0  # the new batch corrected the model


def test_long_queries_cost_their_truncated_length():
    """A 10 MB query is encoded as at most ``max_tokens`` tokens: it was refused by its raw length (~2.5M tokens,
    "~10,030 s") although the encoder truncates it."""
    release = threading.Event()
    seen = []

    def encode(texts):
        seen.append([len(t) for t in texts])
        if len(seen) == 2:
            release.wait(10)  # keeps a request in flight, so the next one is admitted by estimate
        time.sleep(0.01)
        return _rows(texts)

    b = QueryBatcher(encode, max_wait=0.0, max_tokens=512, prompt_tokens=50)
    huge = "word " * 2_000_000

    async def scenario():
        await b.encode(["x" * 400])  # measured: ~151 tokens in ~0.01 s
        ahead = asyncio.ensure_future(b.encode(["blocker"]))
        await asyncio.sleep(0.05)
        assert b._pending == 1
        late = asyncio.ensure_future(b.encode([huge], timeout=5.0))
        await asyncio.sleep(0.05)
        release.set()
        return await ahead, await late

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        b.close()
    assert b.text_tokens(huge) == 512 and approx_tokens(huge) > 2_000_000
    assert b.refused == 0 and seen[-1] == [len(huge)]  # the batcher counts, the encoder truncates


def test_cost_model_fits_a_per_batch_and_a_per_token_cost():
    m = CostModel()
    for tokens in (100, 400, 1600, 2000, 800):
        m.add(tokens, 0.05 + 0.001 * tokens)
    assert m.a == pytest.approx(0.05, abs=1e-6) and m.b == pytest.approx(0.001, rel=1e-6)
    assert m.seconds(4000, 2) == pytest.approx(0.1 + 4.0)
    one = CostModel()
    one.add(100, 0.2)  # one size only: no intercept, the mean per token (an overestimate for larger batches)
    assert one.a == 0 and one.b == pytest.approx(0.002)


class TimedEncoder(CountingEncoder):
    """CountingEncoder that records when each forward pass starts."""

    def __init__(self, delay: float):
        super().__init__(delay)
        self.starts: list[float] = []

    def encode_queries(self, texts):
        self.starts.append(time.monotonic())
        return super().encode_queries(texts)


def _timed_concurrent(server, bodies):
    """Like ``concurrent``, also recording when each answer arrived and how long it took."""
    out = [None] * len(bodies)

    def go(i):
        t = time.monotonic()
        code, body = server.call("POST", "/search", bodies[i])
        out[i] = (code, body, time.monotonic(), time.monotonic() - t)
    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_a_search_is_answered_right_after_its_own_forward_pass(index_copy):
    """30 concurrent text searches, 10 per pass: the first pass's requests are answered while the second pass
    runs, before the third starts. They used to wait behind every text queued for encoding (their searches were
    queued after them: the first answers came after the third pass)."""
    enc = TimedEncoder(delay=0.3)
    with Server(create_app(index_copy, encoder=enc, batch_wait_ms=20, max_batch_tokens=40,
                           request_timeout=None)) as s:
        assert s.call("POST", "/search", {"queries": ["warm up"], "k": 3})[0] == 200
        enc.starts.clear()
        results = _timed_concurrent(s, [{"queries": [f"star planet {i}"], "k": 3} for i in range(30)])
    assert all(code == 200 for code, *_ in results)
    assert len(enc.starts) >= 3
    first_answer = min(at for _, _, at, _ in results)
    assert first_answer < enc.starts[2], (first_answer - enc.starts[0], [x - enc.starts[0] for x in enc.starts])


def test_a_burst_is_answered_or_refused_at_once_never_late(index_copy):
    """80 concurrent searches against ~2.4 s of encoding with a 2 s request timeout: what cannot be served in time
    is refused on arrival (503 well before the timeout), what is admitted is answered (none dropped late)."""
    enc = CountingEncoder(delay=0.3)  # per pass of at most 10 texts
    app = create_app(index_copy, encoder=enc, batch_wait_ms=20, max_batch_tokens=40, request_timeout=2.0)
    app.state.service.calibrate(n=8)  # as hylex serve does before serving: passes of one and of several texts
    with Server(app) as s:
        results = _timed_concurrent(s, [{"queries": [f"star planet {i}"], "k": 3} for i in range(80)])
        stats = s.call("GET", "/stats")[1]["service"]
    codes = [c for c, *_ in results]
    assert set(codes) <= {200, 503} and codes.count(200) >= 30, codes
    refused = [took for c, _, _, took in results if c == 503]
    answered = [took for c, _, _, took in results if c == 200]
    assert refused and max(refused) < 1.0, sorted(refused)
    assert max(answered) < 2.0
    assert stats["timed_out"] == 0 and stats["refused"] == len(refused)


def test_one_request_too_large_for_its_timeout_is_413_not_retry_after(index_copy):
    """A request whose own texts would take longer than the timeout on an idle service can never succeed:
    413 naming the fix, not 503 with Retry-After."""
    enc = CountingEncoder(delay=0.3)
    app = create_app(index_copy, encoder=enc, batch_wait_ms=1, max_batch_tokens=40, request_timeout=2.0)
    b = app.state.service.batcher
    with Server(app) as s:
        assert s.call("POST", "/search", {"queries": ["warm up"], "k": 3})[0] == 200
        # one pass measured (one size): its per-token cost overstates larger passes, so it refuses nothing alone
        assert not b.cost.fitted
        assert s.call("POST", "/search", {"queries": [f"star planet {i}" for i in range(20)], "k": 3})[0] == 200
        assert b.cost.fitted  # 2 passes of 10: now both terms are measured
        code, out = s.call("POST", "/search", {"queries": [f"star planet {i}" for i in range(100)], "k": 3})
        assert code == 413 and "fewer queries" in out["error"], out
        assert s.call("POST", "/search", {"queries": ["star planet"] * 5, "k": 3})[0] == 200


def test_the_deadline_bounds_the_search_itself(index_copy):
    """A search of many queries that runs past the request timeout is stopped between groups of queries (503),
    not run to the end; a small one still runs."""
    app = create_app(index_copy, encoder=CountingEncoder(), request_timeout=0.5)
    searcher = app.state.service.searcher
    real = searcher.search

    def slow(*a, **k):
        time.sleep(0.3)
        return real(*a, **k)

    searcher.search = slow
    with Server(app) as s:
        t = time.monotonic()
        code, out = s.call("POST", "/search", {"queries": [f"star {i}" for i in range(300)], "mode": "bm25",
                                               "k": 3})
        took = time.monotonic() - t
        assert code == 503 and "ran past" in out["error"], out
        assert took < 1.2  # two groups of 64 at most, not all five
        assert s.call("POST", "/search", {"queries": ["star"], "mode": "bm25", "k": 3})[0] == 200


def test_queries_are_costed_at_the_encoders_length(index_copy):
    """The service tells the batcher where the encoder truncates: the index's recorded max_length before the
    model is loaded, the encoder's own once it is."""
    from types import SimpleNamespace

    app = create_app(index_copy)  # the index's own model, loaded on first use: not loaded here
    assert app.state.service.batcher.max_tokens == 512
    app.state.service.close()
    enc = CountingEncoder()
    enc.row_tokens = lambda kind: (30, 98)  # hylex's Encoder: the prompt's tokens per row, a text's most
    enc.tokenizer = SimpleNamespace(backend_tokenizer=_word_tokenizer())
    app = create_app(index_copy, encoder=enc)
    b = app.state.service.batcher
    assert (b.max_tokens, b.prompt_tokens) == (128, 30) and b.text_tokens("x " * 10_000) == 128
    assert b.text_tokens("two words") == 32  # counted by the model's tokenizer, not characters / 4
    app.state.service.calibrate(n=12)
    assert b.cost.known and enc.query_calls[0] == 1 and sum(enc.query_calls) == 12
    app.state.service.close()


def _word_tokenizer():
    """A ``tokenizers`` tokenizer of whitespace-separated words (ids from a tiny vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "two": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def test_the_real_encoder_reports_what_a_row_costs():
    """Encoder.row_tokens: the prompt's tokens minus the cached prefix, and the text's share of max_length; the
    token counter reads the same ids as the encoder's tokenizer."""
    from hylex.engine import Encoder
    from hylex.service.app import _token_counter

    enc = Encoder("smollm2-135m", encoding_cache=False, progress=False, max_length=128)
    layout = enc._layouts["query"]
    prompt, cap = enc.row_tokens("query")
    assert prompt == layout.overhead - len(layout.pieces[0]) and prompt + cap <= 128
    assert enc._units(["word " * 500], "query")[0].ids.__len__() <= len(layout.pieces[0]) + prompt + cap
    count = _token_counter(enc.tokenizer, 128)
    text = "Vitamin D deficiency raises the risk of multiple sclerosis."
    assert count(text) == len(enc.tokenizer(text)["input_ids"])
    enc.prefix_cache = False
    assert enc.row_tokens("query")[0] == layout.overhead


def test_busy_retry_after_is_a_whole_second_at_least():
    assert Busy("x", 0.2).retry_after == 1 and Busy("x", 3.2).retry_after == 4
