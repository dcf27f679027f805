"""Micro-batching of query encoding, and admission by measured capacity.

Concurrent requests arriving within a few milliseconds share encoder forward passes bounded by a token budget, run
on one model thread (never on the event loop). Each request's own follow-up (its search) runs right after its
batch is encoded, before the next batch, and it is answered then: nobody waits for the rest of the queue. A
request is admitted only when the work queued ahead of it can be done before its deadline, by a cost model fitted
on the batches actually encoded (:class:`CostModel`), so an overloaded service answers 503 at once instead of late.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

# A request is admitted when the work ahead of it (and its own) is estimated to end within this fraction of its
# timeout: the margin absorbs the estimate's error, so an admitted request is answered rather than dropped late.
# (Measured: a burst over HTTP ran 10-25% slower than the passes timed before serving; benchmarks/README.md.)
ADMIT_FRACTION = 0.7
# A cost model not updated for this long is not trusted to refuse a request on an idle service.
STALE_SECONDS = 60.0


class Busy(Exception):
    """The queue is full, or a request cannot be answered before its deadline: the caller should answer 503 with
    Retry-After (``retry_after`` seconds)."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = max(1, int(math.ceil(retry_after)))


class TooMuchWork(Exception):
    """One request alone would take longer than its timeout on an idle service: retrying cannot help (413)."""


def approx_tokens(text: str) -> int:
    """A cheap token count for batching (about 4 characters per token, as English BPE vocabularies give)."""
    return len(text) // 4 + 1


class CostModel:
    """Seconds of one forward pass as ``a + b * tokens``, fitted by least squares (``a, b >= 0``) over the last
    ``window`` batches. With batches of one size only, ``a`` is 0 and ``b`` their mean seconds per token (an
    overestimate for larger batches, so admission errs towards refusing)."""

    def __init__(self, window: int = 32):
        self._obs: collections.deque = collections.deque(maxlen=window)
        self.a: float | None = None
        self.b: float | None = None
        self.fitted = False  # both terms measured (batches of different sizes), not only their sum
        self.updated = 0.0  # time.monotonic() of the last batch

    def add(self, tokens: int, seconds: float) -> None:
        self._obs.append((float(max(tokens, 1)), float(max(seconds, 0.0))))
        self.updated = time.monotonic()
        t = np.array([o[0] for o in self._obs])
        s = np.array([o[1] for o in self._obs])
        a, b = 0.0, float(s.sum() / t.sum())
        if len(t) >= 2 and t.var() > 1e-9 * t.mean() ** 2:
            b_ls = float(((t - t.mean()) * (s - s.mean())).sum() / ((t - t.mean()) ** 2).sum())
            a_ls = float(s.mean() - b_ls * t.mean())
            self.fitted = True
            if a_ls >= 0 and b_ls >= 0:
                a, b = a_ls, b_ls
            elif b_ls < 0:  # time falls with size: noise; the mean per batch
                a, b = float(s.mean()), 0.0
        self.a, self.b = a, b

    @property
    def known(self) -> bool:
        return self.b is not None

    def seconds(self, tokens: int, batches: int) -> float:
        """Estimated seconds to encode ``tokens`` in ``batches`` forward passes (0 before any measurement)."""
        if self.b is None:
            return 0.0
        return batches * self.a + tokens * self.b


@dataclass(eq=False)
class _Request:
    texts: list[str]
    tokens: int
    fut: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float | None
    then: Callable | None  # run on the model thread with (dense, sparse) right after the batch


@dataclass(eq=False)
class _Task:
    fn: Callable[[], object]
    fut: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float | None
    kind: str


@dataclass
class _Timings:
    """Moving averages of the seconds of a request's search and of other tasks, by kind."""

    seconds: dict = field(default_factory=dict)

    def add(self, kind: str, dt: float) -> None:
        old = self.seconds.get(kind)
        self.seconds[kind] = dt if old is None else 0.8 * old + 0.2 * dt

    def get(self, kind: str) -> float:
        return self.seconds.get(kind, 0.0)


class QueryBatcher:
    """Collects query texts from concurrent callers into encoder forward passes bounded by a token budget.

    Requests are served first come, first served; a batch takes whole requests until the next would pass
    ``max_batch_tokens`` (a request larger than the budget alone forms its own batch). A request may carry a
    follow-up (``then``, e.g. its search): it runs right after the request's batch is encoded, before the next
    batch, and the request is answered as soon as it is done. Tasks given to :meth:`call` with ``urgent`` (searches
    that need no encoding) run before the next batch; other tasks (document encoding, commits) keep their place in
    the queue.

    Admission: a request with a timeout is refused at once (:class:`Busy`) when the queue ahead is estimated to
    take more than ``ADMIT_FRACTION`` of it, from a :class:`CostModel` fitted on the passes actually encoded, by
    their padded tokens (a text's tokens include the prompt's and are capped at the encoder's ``max_tokens``, as
    the encoder truncates; the queue's tokens are scaled by the padding measured on recent passes). A request
    finding nothing queued is always admitted, so the service can never lock itself out on a wrong estimate: every
    batch it encodes corrects the model. A request whose deadline passes while queued is dropped before its
    forward pass (also :class:`Busy`).

    Args:
        encode: encodes a list of texts into dense float32 (n, d) and sparse csr (n, V), e.g.
            ``encoder.encode_queries``; called on this batcher's model thread only (with ``lock`` held).
        max_wait: seconds the first request of a batch waits for others (the latency a request may pay).
        max_batch_tokens: most (estimated) tokens per forward pass.
        max_queue: most texts waiting; beyond it :meth:`encode` raises :class:`Busy`.
        count_tokens: tokens of one text without the prompt (default :func:`approx_tokens`).
        prompt_tokens: tokens the prompt adds to every text (may be set later, once the encoder is loaded).
        max_tokens: most tokens one text costs, prompt included (the encoder's ``max_length``; None: no cap).
        lock: held around each encode call and follow-up (shared with other users of the same encoder).
        own_thread: start a model thread; False leaves the loop to :meth:`run`, called by the owner (e.g. on the
            main thread: torch encodes ~2x faster there than on other threads on some machines).
    """

    def __init__(self, encode: Callable[[list[str]], tuple], max_wait: float = 0.005, max_batch_tokens: int = 2048,
                 max_queue: int = 1024, lock: threading.Lock | None = None, own_thread: bool = True,
                 count_tokens: Callable[[str], int] = approx_tokens, prompt_tokens: int = 0,
                 max_tokens: int | None = None):
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self._encode = encode
        self.max_wait, self.max_batch_tokens, self.max_queue = float(max_wait), int(max_batch_tokens), int(max_queue)
        self.count_tokens, self.prompt_tokens = count_tokens, int(prompt_tokens)
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.lock = lock or threading.Lock()
        self.cost = CostModel()  # seconds of a pass by its padded tokens
        self.padding, self._padding_seen = 1.0, False  # padded / counted tokens of the passes measured
        self.timings = _Timings()
        self._cv = threading.Condition()
        self._urgent: collections.deque = collections.deque()
        self._fifo: collections.deque = collections.deque()
        self._closed = False
        self._count_lock = threading.Lock()
        self._pending = 0  # texts waiting or being encoded
        self._pending_tokens = 0
        self._followups = 0  # admitted requests whose follow-up has not run yet
        self._tasks = collections.Counter()  # tasks waiting, by kind
        self.batches = 0
        self.texts = 0
        self.expired = 0
        self.refused = 0
        self.batch_tokens: list[int] = []  # per batch, for tests and /stats (last 1000)
        self._thread = None
        if own_thread:
            self._thread = threading.Thread(target=self.run, name="hylex-query-batcher", daemon=True)
            self._thread.start()

    # -- cost ------------------------------------------------------------------------------------------------------
    def text_tokens(self, text: str) -> int:
        """What one text costs a forward pass: its tokens plus the prompt's, capped where the encoder truncates."""
        n = self.count_tokens(text) + self.prompt_tokens
        return n if self.max_tokens is None else min(n, self.max_tokens)

    def _tokens(self, texts: Sequence[str]) -> int:
        return sum(self.text_tokens(t) for t in texts)

    @property
    def seconds_per_token(self) -> float | None:
        """The cost model's marginal seconds per token (None until a batch has been timed)."""
        return self.cost.b

    def _encode_seconds(self, tokens: int) -> float:
        # a pass computes its rows padded to the longest (the measured padding), and whole requests do not fill
        # every pass to the budget: one pass more than perfect packing
        return self.cost.seconds(tokens * self.padding, math.ceil(tokens / self.max_batch_tokens) + 1)

    def _measured(self, texts: list[str], seconds: float) -> int:
        """Fit a timed pass of ``texts``: its cost by padded tokens (rows x the longest row, what a forward pass
        computes), and the padding, a moving average of padded over counted tokens. Returns the counted tokens."""
        sizes = [self.text_tokens(t) for t in texts]
        tokens, padded = sum(sizes), len(sizes) * max(sizes)
        self.cost.add(padded, seconds)
        ratio = padded / max(tokens, 1)
        self.padding = ratio if not self._padding_seen else 0.8 * self.padding + 0.2 * ratio
        self._padding_seen = True
        return tokens

    def wait_estimate(self, tokens: int = 0, followup: str | None = "search") -> float | None:
        """Seconds until ``tokens`` more would be encoded and their follow-up done, from the queue and the cost
        model (None until a batch has been timed)."""
        if not self.cost.known:
            return None
        tasks = sum(n * self.timings.get(kind) for kind, n in self._tasks.items())
        own = self.timings.get(followup) if followup else 0.0
        return self._encode_seconds(self._pending_tokens + tokens) + self._followups * self.timings.get("search") \
            + tasks + own

    def _busy(self) -> bool:
        return self._pending > 0 or self._followups > 0 or sum(self._tasks.values()) > 0

    def _admit(self, texts: list[str], tokens: int, timeout: float | None, followup: bool) -> None:
        """Count the request in, or raise :class:`Busy` / :class:`TooMuchWork` (caller holds ``_count_lock``)."""
        if self._pending + len(texts) > self.max_queue:
            self.refused += 1
            raise Busy(f"{self._pending} query texts are waiting to be encoded (limit {self.max_queue})")
        if timeout is not None and self.cost.known:
            budget = ADMIT_FRACTION * timeout
            if not self._busy():
                # nothing ahead: waiting cannot help, and a lone text (capped by the encoder's length) is always
                # tried, which also re-measures the model. Only a request of many texts can be too much alone,
                # judged on a fitted model measured lately (a stale or one-size model is tried instead).
                own = self._encode_seconds(tokens)
                fresh = self.cost.fitted and time.monotonic() - self.cost.updated < STALE_SECONDS
                if len(texts) > 1 and fresh and own > budget:
                    self.refused += 1
                    raise TooMuchWork(f"the {len(texts)} query texts of this request would take ~{own:.1f} s to "
                                      f"encode, over the {timeout:g} s request timeout: send fewer queries per "
                                      f"request")
            else:
                eta = self.wait_estimate(tokens, "search" if followup else None)
                if eta > budget:
                    self.refused += 1
                    raise Busy(f"the queue ahead would take ~{eta:.1f} s to encode and search, over the "
                               f"{timeout:g} s request timeout", retry_after=eta - budget)
        self._pending += len(texts)
        self._pending_tokens += tokens
        self._followups += int(followup)

    # -- callers (event loop) ----------------------------------------------------------------------------------------
    async def encode(self, texts: Sequence[str], timeout: float | None = None,
                     then: Callable[[np.ndarray, sp.csr_matrix], object] | None = None):
        """Encode ``texts`` in a shared batch and return ``(dense, sparse)``, or ``then(dense, sparse)`` run on the
        model thread right after the batch. With ``timeout`` seconds: refused at once (:class:`Busy`) when the
        queue ahead cannot be cleared in time, given up when the deadline passes."""
        texts = list(texts)
        tokens = self._tokens(texts)
        with self._count_lock:
            self._admit(texts, tokens, timeout, then is not None)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._put(_Request(texts, tokens, fut, loop, deadline, then))
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            if fut.cancel():  # dropped before its forward pass if not started yet (else the model thread counted it)
                self.expired += 1
            raise Busy(f"not answered within the {timeout:g} s request timeout", retry_after=1.0) from None

    async def call(self, fn: Callable[[], object], deadline: float | None = None, kind: str = "task",
                   urgent: bool = False) -> object:
        """Run ``fn()`` on the model thread (with ``lock``): document encoding, searches and commits on the same
        thread as the query encoding. ``urgent`` tasks (short: a search without encoding) run before the next
        batch, others keep their place in the queue. With a ``deadline`` (``time.monotonic()`` seconds; for
        searches, never for commits) a task still queued when it passes is not run: :class:`Busy`."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._count_lock:
            self._tasks[kind] += 1
        self._put(_Task(fn, fut, loop, deadline, kind), urgent=urgent)
        return await fut

    def close(self) -> None:
        """Stop the loop once what is queued has been served."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(10)

    # -- the model thread --------------------------------------------------------------------------------------------
    def _put(self, item, urgent: bool = False) -> None:
        with self._cv:
            (self._urgent if urgent else self._fifo).append(item)
            self._cv.notify()

    def _take(self):
        """The next item (urgent tasks first), waiting for one; None once closed and drained."""
        with self._cv:
            while not (self._urgent or self._fifo or self._closed):
                self._cv.wait()
            if self._urgent:
                return self._urgent.popleft()
            return self._fifo.popleft() if self._fifo else None

    def _take_companion(self, room: int, until: float):
        """For the batch being gathered: an urgent task, the next queued request if it fits in ``room`` tokens,
        or None (the batch is complete: the next item is a task, does not fit, or none came by ``until``)."""
        with self._cv:
            while True:
                if self._urgent:
                    return self._urgent.popleft()
                if self._fifo:
                    nxt = self._fifo[0]
                    if isinstance(nxt, _Task) or nxt.tokens > room:
                        return None
                    return self._fifo.popleft()
                left = until - time.monotonic()
                if self._closed or left <= 0:
                    return None
                self._cv.wait(left)

    def run(self) -> None:
        """The batching loop (until :meth:`close`): on the own thread, or on the caller's."""
        while True:
            item = self._take()
            if item is None:
                return
            if isinstance(item, _Task):
                self._task(item)
                continue
            if not self._live(item):
                continue
            batch, n = [item], item.tokens
            until = time.monotonic() + self.max_wait
            while n < self.max_batch_tokens:
                nxt = self._take_companion(self.max_batch_tokens - n, until)
                if nxt is None:
                    break
                if isinstance(nxt, _Task):
                    self._task(nxt)
                elif self._live(nxt):
                    batch.append(nxt)
                    n += nxt.tokens
            self._serve(batch)

    def calibrate(self, texts: Sequence[str]) -> None:
        """Measure the encoder on ``texts`` before serving (on the model thread, or before it starts): once alone,
        then in batches of the token budget, as the loop would. Give texts that miss the encoding cache."""
        texts = list(texts)
        plan = [texts[:1]]
        i = 1
        while i < len(texts):
            j, n = i, 0
            while j < len(texts) and n + self.text_tokens(texts[j]) <= self.max_batch_tokens:
                n += self.text_tokens(texts[j])
                j += 1
            plan.append(texts[i:max(j, i + 1)])
            i = max(j, i + 1)
        for part in plan:
            t0 = time.monotonic()
            with self.lock:
                self._encode(part)
            self._measured(part, time.monotonic() - t0)
        logger.info("query encoding: %.3f s per pass + %.2f ms per padded token (padding %.2f)", self.cost.a,
                    1000 * self.cost.b, self.padding)

    def _release(self, item: _Request, followup: bool) -> None:
        with self._count_lock:
            self._pending -= len(item.texts)
            self._pending_tokens -= item.tokens
            if followup and item.then is not None:
                self._followups -= 1

    def _live(self, item: _Request) -> bool:
        """False (and the request answered Busy) when its caller gave up or its deadline has passed."""
        if item.fut.cancelled() or (item.deadline is not None and time.monotonic() > item.deadline):
            self._release(item, followup=True)
            if not item.fut.cancelled():  # (a cancelled one was counted by its caller)
                self.expired += 1
                _answer(item.loop, item.fut, None, Busy("the request timed out while queued"))
            return False
        return True

    def _task(self, item: _Task) -> None:
        with self._count_lock:
            self._tasks[item.kind] -= 1
        if item.deadline is not None and time.monotonic() > item.deadline:
            self.expired += 1
            _answer(item.loop, item.fut, None, Busy("the request timed out while queued"))
            return
        t0 = time.monotonic()
        try:
            with self.lock:
                result, error = item.fn(), None
        except Exception as e:
            result, error = None, e
        self.timings.add(item.kind, time.monotonic() - t0)
        _answer(item.loop, item.fut, result, error)

    def _serve(self, batch: list[_Request]) -> None:
        texts = [t for item in batch for t in item.texts]
        t0 = time.monotonic()
        try:
            with self.lock:
                dense, sparse = self._encode(texts)
            dense = np.asarray(dense, dtype=np.float32)
            sparse = sp.csr_matrix(sparse, dtype=np.float32)
            error = None
        except Exception as e:  # delivered to every waiting request
            error = e
        # counted now, not at admission: the prompt's size may have become known during this very encode
        if error is None:
            tokens = self._measured(texts, time.monotonic() - t0)
        else:
            tokens = self._tokens(texts)
        self.batches += 1
        self.texts += len(texts)
        self.batch_tokens = (self.batch_tokens + [tokens])[-1000:]
        offset = 0
        for item in batch:
            m = len(item.texts)
            self._release(item, followup=False)
            rows = None if error else (dense[offset:offset + m], sparse[offset:offset + m])
            offset += m
            result, err = rows, error
            if error is None and item.then is not None:
                result, err = self._followup(item, rows)
            elif item.then is not None:
                self._release_followup()
            _answer(item.loop, item.fut, result, err)

    def _release_followup(self) -> None:
        with self._count_lock:
            self._followups -= 1

    def _followup(self, item: _Request, rows: tuple) -> tuple[object, Exception | None]:
        """Run a request's follow-up on its rows (unless its caller gave up or its deadline passed)."""
        self._release_followup()
        if item.fut.cancelled():
            return None, None
        if item.deadline is not None and time.monotonic() > item.deadline:
            self.expired += 1
            return None, Busy("the request timed out before its search")
        t0 = time.monotonic()
        try:
            with self.lock:
                return item.then(*rows), None
        except Exception as e:
            return None, e
        finally:
            self.timings.add("search", time.monotonic() - t0)


def _answer(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, result, error) -> None:
    """Hand a result to the waiting coroutine's loop; a caller whose loop has gone (it gave up) is skipped."""
    if fut.cancelled():
        return
    try:
        loop.call_soon_threadsafe(_resolve, fut, result, error)
    except RuntimeError:  # the loop is closed
        pass


def _resolve(fut: asyncio.Future, result, error) -> None:
    if fut.cancelled():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
