"""Micro-batching of query encoding: concurrent requests arriving within a few milliseconds share encoder forward
passes bounded by a token budget, run on a worker thread (never on the event loop); requests are answered batch by
batch, carry deadlines, and a bounded queue refuses work beyond its size or beyond what can be served in time."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)


class Busy(Exception):
    """The queue is full, or a request cannot be answered before its deadline: the caller should answer 503 with
    Retry-After (``retry_after`` seconds)."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = max(1, int(round(retry_after)))


def approx_tokens(text: str) -> int:
    """A cheap token count for batching (about 4 characters per token, as English BPE vocabularies give)."""
    return len(text) // 4 + 1


class QueryBatcher:
    """Collects query texts from concurrent callers into encoder forward passes bounded by a token budget.

    Requests are served first come, first served; a batch takes whole requests until the next would pass
    ``max_batch_tokens`` (a request larger than the budget alone forms its own batch), and each request is
    answered as soon as its batch is encoded, not when the queue is empty. Each request may carry a deadline:
    one that cannot be met given the work queued ahead of it (estimated from the measured seconds per token) is
    refused at once with :class:`Busy`, and one whose deadline passed while it waited is dropped before its
    forward pass (also :class:`Busy`), so an overloaded service sheds load instead of answering late.

    Args:
        encode: encodes a list of texts into dense float32 (n, d) and sparse csr (n, V), e.g.
            ``encoder.encode_queries``; called on this batcher's worker thread only (with ``lock`` held).
        max_wait: seconds the first request of a batch waits for others (the latency a request may pay).
        max_batch_tokens: most (estimated) tokens per forward pass.
        max_queue: most texts waiting; beyond it :meth:`encode` raises :class:`Busy`.
        count_tokens: tokens of one text (default :func:`approx_tokens`; the prompt's tokens come on top).
        prompt_tokens: tokens the prompt adds to every text.
        lock: held around each encode call (shared with other users of the same encoder).
        own_thread: start a worker thread; False leaves the loop to :meth:`run`, called by the owner (e.g. on
            the main thread: torch encodes ~2x faster there than on other threads on some machines).
    """

    def __init__(self, encode: Callable[[list[str]], tuple], max_wait: float = 0.005, max_batch_tokens: int = 2048,
                 max_queue: int = 1024, lock: threading.Lock | None = None, own_thread: bool = True,
                 count_tokens: Callable[[str], int] = approx_tokens, prompt_tokens: int = 0):
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self._encode = encode
        self.max_wait, self.max_batch_tokens, self.max_queue = float(max_wait), int(max_batch_tokens), int(max_queue)
        self.count_tokens, self.prompt_tokens = count_tokens, int(prompt_tokens)
        self.lock = lock or threading.Lock()
        self._q: queue.Queue = queue.Queue()
        self._carry = None  # a request taken from the queue that did not fit the last batch
        self._pending = 0  # texts waiting
        self._pending_tokens = 0
        self._count_lock = threading.Lock()
        self.seconds_per_token: float | None = None  # measured (moving average over batches)
        self.task_seconds: float | None = None  # measured seconds per task (a search, a commit)
        self._tasks_pending = 0
        self.batches = 0
        self.texts = 0
        self.expired = 0
        self.refused = 0
        self.batch_tokens: list[int] = []  # per batch, for tests and /stats (last 1000)
        self._thread = None
        if own_thread:
            self._thread = threading.Thread(target=self.run, name="hylex-query-batcher", daemon=True)
            self._thread.start()

    def _tokens(self, texts: Sequence[str]) -> int:
        return sum(self.count_tokens(t) + self.prompt_tokens for t in texts)

    def wait_estimate(self, tokens: int = 0) -> float | None:
        """Seconds until ``tokens`` more would be encoded, from the queue and the measured speed (None until a
        batch has been timed)."""
        if self.seconds_per_token is None:
            return None
        # the query texts ahead, and the tasks ahead plus this request's own search
        return (self._pending_tokens + tokens) * self.seconds_per_token + \
            (self._tasks_pending + 1) * (self.task_seconds or 0.0)

    async def encode(self, texts: Sequence[str], timeout: float | None = None) -> tuple[np.ndarray, sp.csr_matrix]:
        """Encode ``texts`` in a shared batch; with ``timeout`` seconds, refuse (:class:`Busy`) at once when the
        queue ahead cannot be cleared in time, and give up when the deadline passes."""
        texts = list(texts)
        tokens = self._tokens(texts)
        with self._count_lock:
            if self._pending + len(texts) > self.max_queue:
                self.refused += 1
                raise Busy(f"{self._pending} query texts are waiting to be encoded (limit {self.max_queue})")
            eta = self.wait_estimate(tokens)
            if timeout is not None and eta is not None and eta > timeout:
                self.refused += 1
                raise Busy(f"the queue ahead would take ~{eta:.1f} s to encode, over the {timeout:g} s request "
                           f"timeout", retry_after=eta - timeout)
            self._pending += len(texts)
            self._pending_tokens += tokens
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._q.put((texts, fut, loop, deadline, tokens))
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            fut.cancel()  # dropped before its forward pass if not started yet
            self.expired += 1
            raise Busy(f"not encoded within the {timeout:g} s request timeout", retry_after=1.0) from None

    async def call(self, fn: Callable[[], object], deadline: float | None = None) -> object:
        """Run ``fn()`` on the batcher's thread (with ``lock``), between batches: document encoding, searches and
        commits on the same thread as the query encoding. With a ``deadline`` (``time.monotonic()`` seconds; for
        searches, never for commits) a task still queued when it passes is not run: :class:`Busy`."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._count_lock:
            self._tasks_pending += 1
        self._q.put((fn, fut, loop, deadline))
        return await fut

    def close(self) -> None:
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(10)

    def _next(self, timeout: float | None):
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return self._q.get() if timeout is None else self._q.get(timeout=timeout)

    def _release(self, item) -> None:
        with self._count_lock:
            self._pending -= len(item[0])
            self._pending_tokens -= item[4]

    def _live(self, item) -> bool:
        """False (and the request answered Busy) when its caller gave up or its deadline has passed."""
        texts, fut, loop, deadline, _ = item
        if fut.cancelled() or (deadline is not None and time.monotonic() > deadline):
            self._release(item)
            if not fut.cancelled():  # (a cancelled one was counted by its caller)
                self.expired += 1
                _answer(loop, fut, None, Busy("the request timed out while queued"))
            return False
        return True

    def run(self) -> None:
        """The batching loop (until :meth:`close`): on the own thread, or on the caller's."""
        while True:
            item = self._next(None)
            if item is None:
                return
            if callable(item[0]):  # a task, not query texts
                self._task(item)
                continue
            if not self._live(item):
                continue
            batch, n = [item], item[4]
            deadline = time.monotonic() + self.max_wait
            stop = False
            while n < self.max_batch_tokens:
                left = deadline - time.monotonic()
                try:
                    nxt = self._next(max(left, 0) if self._q.qsize() == 0 else 0)
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if callable(nxt[0]):
                    self._task(nxt)
                    continue
                if not self._live(nxt):
                    continue
                if n + nxt[4] > self.max_batch_tokens:
                    self._carry = nxt  # first in the next batch
                    break
                batch.append(nxt)
                n += nxt[4]
            self._serve(batch, n)
            if stop:
                return

    def _task(self, item) -> None:
        fn, fut, loop, deadline = item
        with self._count_lock:
            self._tasks_pending -= 1
        if deadline is not None and time.monotonic() > deadline:
            self.expired += 1
            _answer(loop, fut, None, Busy("the request timed out while queued"))
            return
        t0 = time.monotonic()
        try:
            with self.lock:
                result, error = fn(), None
        except Exception as e:
            result, error = None, e
        dt = time.monotonic() - t0
        self.task_seconds = dt if self.task_seconds is None else 0.8 * self.task_seconds + 0.2 * dt
        _answer(loop, fut, result, error)

    def _serve(self, batch: list, tokens: int) -> None:
        texts = [t for item in batch for t in item[0]]
        t0 = time.monotonic()
        try:
            with self.lock:
                dense, sparse = self._encode(texts)
            dense = np.asarray(dense, dtype=np.float32)
            sparse = sp.csr_matrix(sparse, dtype=np.float32)
            error = None
        except Exception as e:  # delivered to every waiting request
            error = e
        spt = (time.monotonic() - t0) / max(tokens, 1)
        self.seconds_per_token = spt if self.seconds_per_token is None else 0.7 * self.seconds_per_token + 0.3 * spt
        self.batches += 1
        self.texts += len(texts)
        self.batch_tokens = (self.batch_tokens + [tokens])[-1000:]
        offset = 0
        for item in batch:
            m = len(item[0])
            self._release(item)
            result = None if error else (dense[offset:offset + m], sparse[offset:offset + m])
            _answer(item[2], item[1], result, error)
            offset += m


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
