"""What one request to ``hylex serve`` may ask for, checked before any of the work is done.

A body is already bounded in bytes (``--max-body-mb``) and in queries or documents (``--max-batch``); these bound
what a small body can still ask for (issue 40: a 67 KB request of 1,024 BM25 queries with ``k`` 1000 and their
documents drove a server past 9 GB; three 10 MB queries held every other search for 22 s):

* ``max_hits`` (``--max-hits``, 100,000): queries x ``k`` (``k`` capped at the live documents, as the search caps
  it). A hybrid search's fusion candidates, queries x ``depth`` x fused arms, may be CANDIDATES_PER_HIT times as
  many (8,000,000 by default: a few hundred MB of arrays at most), and ``explain`` covers at most
  1/EXPLAIN_SHARE of them (1,000 hits by default: each explanation costs a pass over the query's terms);
* ``max_response_bytes`` (``--max-response-mb``, 64 MB): the hits' documents, with about HIT_OVERHEAD_BYTES per
  hit and the echoed query texts; the documents' size is known only once they are read, so the search reads them
  a chunk at a time and stops once past the budget (:class:`~hylex.errors.ResultTooLargeError`);
* ``max_query_chars`` (``--max-query-chars``, 10,000): each query text, for every arm. The model reads only a
  query's first tokens (512 by default) but tokenizes all of it, and BM25 reads every word, so a longer text is
  refused rather than silently cut: a BM25 query cut at some length would rank by words the caller never sees.

Each is answered 413 with ``{"error"}`` naming the figure, the limit and the option that raises it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from hylex.errors import HylexError

logger = logging.getLogger(__name__)

DEFAULT_MAX_HITS = 100_000
DEFAULT_MAX_RESPONSE_MB = 64.0
DEFAULT_MAX_QUERY_CHARS = 10_000
HIT_OVERHEAD_BYTES = 128  # a hit's JSON besides its document: rank, id, score and the keys around them
CANDIDATES_PER_HIT = 80
EXPLAIN_SHARE = 100


class OverLimit(HylexError):
    """A request asking for more than a limit of the service allows (413)."""

    status = 413
    headers = None


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HylexError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class RequestLimits:
    """The bounds of one ``POST /search`` (see the module docstring)."""

    max_hits: int = DEFAULT_MAX_HITS
    max_response_bytes: int = int(DEFAULT_MAX_RESPONSE_MB * 2**20)
    max_query_chars: int = DEFAULT_MAX_QUERY_CHARS

    def __post_init__(self) -> None:
        _positive_int("max_hits", self.max_hits)
        _positive_int("max_response_bytes", self.max_response_bytes)
        _positive_int("max_query_chars", self.max_query_chars)

    @property
    def max_candidates(self) -> int:
        return CANDIDATES_PER_HIT * self.max_hits

    @property
    def max_explained(self) -> int:
        return max(1, self.max_hits // EXPLAIN_SHARE)

    def texts(self, texts: Sequence[str] | None, field: str) -> None:
        """Each query text at most ``max_query_chars`` characters."""
        for i, t in enumerate(texts or ()):
            if len(t) > self.max_query_chars:
                raise OverLimit(f"{field}[{i}] has {len(t):,} characters, over the limit of {self.max_query_chars:,} "
                                f"(--max-query-chars): send a shorter query (the model reads only its first 512 "
                                f"tokens)")

    def work(self, n_queries: int, k: int, depth: int, fused_arms: int, n_docs: int, explain: bool) -> int:
        """The hits a search asks for (queries x k, k capped at the live documents), checked with its fusion
        candidates and explanations; returns the hits."""
        cap = max(1, n_docs)
        k = min(k, cap)
        hits = n_queries * k
        if hits > self.max_hits:
            raise OverLimit(f"{n_queries:,} queries x k {k:,} = {hits:,} hits, over the limit of {self.max_hits:,} "
                            f"(--max-hits): ask for fewer hits per request (a smaller k, or fewer queries)")
        if fused_arms > 1:
            candidates = n_queries * min(max(depth, k), cap) * fused_arms
            if candidates > self.max_candidates:
                raise OverLimit(f"{n_queries:,} queries x depth {min(max(depth, k), cap):,} x {fused_arms} arms = "
                                f"{candidates:,} fusion candidates, over the limit of {self.max_candidates:,} "
                                f"({CANDIDATES_PER_HIT} x --max-hits): lower depth or send fewer queries")
        if explain and hits > self.max_explained:
            raise OverLimit(f"explain covers at most {self.max_explained:,} hits (1/{EXPLAIN_SHARE} of --max-hits), "
                            f"this search asks for {hits:,}: lower k or explain fewer queries at a time")
        return hits

    def document_budget(self, hits: int, echoed: Sequence[str] | None) -> int:
        """The bytes the hits' documents may take: the response limit less the rest of the response."""
        rest = hits * HIT_OVERHEAD_BYTES + sum(len(q.encode("utf-8", "surrogatepass")) for q in echoed or ())
        if rest > self.max_response_bytes:
            raise OverLimit(f"the response would be over the limit of {self.mb} (--max-response-mb) before any "
                            f"document: ask for fewer hits or send shorter queries")
        return self.max_response_bytes - rest

    @property
    def mb(self) -> str:
        return f"{self.max_response_bytes / 2**20:g} MB"

    def too_large(self, reason: str) -> OverLimit:
        """The 413 of a search whose documents passed the budget (``reason``: the library's message)."""
        return OverLimit(f"response over the limit of {self.mb} (--max-response-mb): {reason}")


__all__ = ["DEFAULT_MAX_HITS", "DEFAULT_MAX_QUERY_CHARS", "DEFAULT_MAX_RESPONSE_MB", "OverLimit", "RequestLimits"]
