"""A small Python client of ``hylex serve`` with the library's search signature (standard library only).

    from hylex.client import Client
    c = Client("http://127.0.0.1:8000", api_key=None)
    res = c.search(["parse json"], k=10, mode="hybrid", filter={"lang": "en"})
    res.ids, res.scores                      # (n_queries, k) arrays, None / -inf where no hit

Errors the server reports (4xx/5xx) raise :class:`ClientError` with its status and message; a 503 (busy) is
retried ``retries`` times after the server's Retry-After.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from hylex.errors import HylexError
from hylex.retrieval.results import Results


class ClientError(HylexError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Client:
    """Talks to one hylex service.

    Args:
        url: the service's base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``X-API-Key`` when given.
        timeout: seconds per request.
        retries: how often a 503 (service busy) is retried after its Retry-After.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0, retries: int = 3):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise HylexError(f"service URL {url!r} must look like http://host:port")
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                try:
                    msg = json.loads(e.read()).get("error", e.reason)
                except (ValueError, AttributeError):
                    msg = str(e.reason)
                if e.code == 503 and attempt < self.retries:
                    time.sleep(float(e.headers.get("Retry-After", "1") or 1))
                    continue
                raise ClientError(e.code, msg) from None
            except urllib.error.URLError as e:
                raise HylexError(f"cannot reach the hylex service at {self.url}: {e.reason}") from None
        raise AssertionError("unreachable")  # the loop returns or raises

    def search(self, queries: Sequence[str] | str | None = None, *, k: int = 10, mode: str = "hybrid",
               fusion: str = "convex", alpha: float | None = None, rrf_k: float = 60.0, depth: int = 1000,
               dense: np.ndarray | None = None, sparse: sp.spmatrix | None = None,
               bm25_queries: Sequence[str] | None = None, arms: Sequence[str] | None = None,
               weights: Sequence[float] | None = None, filter: dict | None = None,
               with_documents: bool = False) -> Results:
        """Search, as :meth:`hylex.retrieval.Searcher.search` (same arguments and Results; the approximate
        sparse knobs are the server's defaults). ``rows`` are -1: index rows stay on the server."""
        if isinstance(queries, str):
            queries = [queries]
        body: dict[str, Any] = {"k": k, "mode": mode, "fusion": fusion, "alpha": alpha, "rrf_k": rrf_k,
                                "depth": depth, "with_documents": with_documents}
        if queries is not None:
            body["queries"] = list(queries)
        if dense is not None:
            body["dense"] = np.asarray(dense, dtype=np.float32).reshape(-1, np.shape(dense)[-1]).tolist()
        if sparse is not None:
            m = sp.csr_matrix(sparse)
            body["sparse"] = [{str(int(t)): float(w) for t, w in zip(m[i].indices, m[i].data)}
                              for i in range(m.shape[0])]
        for key, v in (("bm25_queries", bm25_queries), ("arms", arms), ("weights", weights), ("filter", filter)):
            if v is not None:
                body[key] = list(v) if key != "filter" else v
        out = self._call("POST", "/search", body)["results"]
        nq = len(out)
        ids = np.full((nq, k), None, dtype=object)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        docs = [] if with_documents else None
        for q, r in enumerate(out):
            for j, h in enumerate(r["hits"][:k]):
                ids[q, j], scores[q, j] = h["id"], h["score"]
            if docs is not None:
                row = [{"id": h["id"], "title": h.get("title"), "text": h.get("text"), "metadata": h.get("metadata")}
                       for h in r["hits"][:k]]
                docs.append(row + [None] * (k - len(row)))
        return Results(ids=ids, scores=scores, rows=np.full((nq, k), -1, np.int64), mode=mode, documents=docs)

    def upsert(self, documents: Sequence[dict]) -> dict:
        """Upsert ``[{"id", "text", "title"?, "metadata"?}, ...]``; returns once the batch is committed."""
        return self._call("POST", "/documents", {"documents": list(documents)})

    def delete(self, ids: Sequence[str] | None = None, filter: dict | None = None) -> dict:
        body = {"ids": list(ids)} if ids is not None else {"filter": filter}
        return self._call("DELETE", "/documents", body)

    def get(self, doc_id: str) -> dict | None:
        try:
            return self._call("GET", "/documents/" + urllib.parse.quote(doc_id, safe=""))
        except ClientError as e:
            if e.status == 404:
                return None
            raise

    def stats(self) -> dict:
        return self._call("GET", "/stats")

    def health(self) -> dict:
        return self._call("GET", "/health")
