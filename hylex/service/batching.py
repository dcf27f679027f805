"""Micro-batching of query encoding: concurrent requests arriving within a few milliseconds share one encoder
forward pass, run on a worker thread (never on the event loop); a bounded queue refuses work beyond its size."""
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
    """The queue is full: the caller should answer 503 with Retry-After."""


class QueryBatcher:
    """Collects query texts from concurrent callers into one ``encode(texts) -> (dense, sparse)`` call.

    Args:
        encode: encodes a list of texts into dense float32 (n, d) and sparse csr (n, V), e.g.
            ``encoder.encode_queries``; called on this batcher's worker thread only (with ``lock`` held).
        max_wait: seconds the first request of a batch waits for others (the latency a request may pay).
        max_texts: most texts per forward pass.
        max_queue: most texts waiting; beyond it :meth:`encode` raises :class:`Busy`.
        lock: held around each encode call (shared with other users of the same encoder).
        own_thread: start a worker thread; False leaves the loop to :meth:`run`, called by the owner (e.g. on
            the main thread: torch encodes ~2x faster there than on other threads on some machines).
    """

    def __init__(self, encode: Callable[[list[str]], tuple], max_wait: float = 0.005, max_texts: int = 256,
                 max_queue: int = 1024, lock: threading.Lock | None = None, own_thread: bool = True):
        self._encode = encode
        self.max_wait, self.max_texts, self.max_queue = float(max_wait), int(max_texts), int(max_queue)
        self.lock = lock or threading.Lock()
        self._q: queue.Queue = queue.Queue()
        self._pending = 0
        self._count_lock = threading.Lock()
        self.batches = 0
        self.texts = 0
        self._thread = None
        if own_thread:
            self._thread = threading.Thread(target=self.run, name="hylex-query-batcher", daemon=True)
            self._thread.start()

    async def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, sp.csr_matrix]:
        texts = list(texts)
        with self._count_lock:
            if self._pending + len(texts) > self.max_queue:
                raise Busy(f"{self._pending} query texts are waiting to be encoded (limit {self.max_queue})")
            self._pending += len(texts)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((texts, fut, loop))
        return await fut

    async def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn()`` on the batcher's thread (with ``lock``), between batches: document encoding, searches and
        commits on the same thread as the query encoding."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((fn, fut, loop))
        return await fut

    def close(self) -> None:
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(10)

    def run(self) -> None:
        """The batching loop (until :meth:`close`): on the own thread, or on the caller's."""
        while True:
            item = self._q.get()
            if item is None:
                return
            if callable(item[0]):  # a task, not query texts
                self._task(item)
                continue
            batch, n = [item], len(item[0])
            deadline = time.monotonic() + self.max_wait
            stop = False
            while n < self.max_texts:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    nxt = self._q.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if callable(nxt[0]):
                    self._task(nxt)
                    continue
                batch.append(nxt)
                n += len(nxt[0])
            self._serve(batch)
            if stop:
                return

    def _task(self, item) -> None:
        fn, fut, loop = item
        try:
            with self.lock:
                result, error = fn(), None
        except Exception as e:
            result, error = None, e
        loop.call_soon_threadsafe(_resolve, fut, result, error)

    def _serve(self, batch: list) -> None:
        texts = [t for item in batch for t in item[0]]
        try:
            with self.lock:
                dense, sparse = self._encode(texts)
            dense = np.asarray(dense, dtype=np.float32)
            sparse = sp.csr_matrix(sparse, dtype=np.float32)
            error = None
        except Exception as e:  # delivered to every waiting request
            error = e
        self.batches += 1
        self.texts += len(texts)
        offset = 0
        for item_texts, fut, loop in batch:
            m = len(item_texts)
            with self._count_lock:
                self._pending -= m
            result = None if error else (dense[offset:offset + m], sparse[offset:offset + m])
            loop.call_soon_threadsafe(_resolve, fut, result, error)
            offset += m


def _resolve(fut: asyncio.Future, result, error) -> None:
    if fut.cancelled():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
