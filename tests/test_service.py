"""The HTTP service on a real uvicorn server on a free loopback port (the fake encoder stands in for the LLM)."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import uvicorn
from conftest import QUERY_TEXTS, FakeEncoder, make_docs

from hylex.errors import HylexError
from hylex.indexing import Index
from hylex.retrieval import Searcher
from hylex.service import create_app

KEY = "s3cret-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.02)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def call(self, method: str, path: str, body=None, key: str | None = None, raw: bytes | None = None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"content-type": "application/json", **({"x-api-key": key} if key else {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                self.last_headers = dict(r.headers)
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            self.last_headers = dict(e.headers)
            return e.code, json.loads(e.read())


@pytest.fixture
def server(index_copy):
    with Server(create_app(index_copy, encoder=FakeEncoder(), api_key=KEY, max_body_bytes=200_000,
                           max_batch=50)) as s:
        yield s


def test_search_by_text_and_by_vectors_equals_the_library(server, index_copy):
    code, out = server.call("POST", "/search", {"queries": QUERY_TEXTS[:3], "k": 5})
    assert code == 200 and len(out["results"]) == 3
    enc = FakeEncoder()
    with Index.open(index_copy) as ix:
        lib = Searcher(ix, encoder=enc).search(QUERY_TEXTS[:3], k=5, with_documents=True).to_list()
    for got, want, q in zip(out["results"], lib, QUERY_TEXTS):
        assert got["query"] == q
        assert [h["id"] for h in got["hits"]] == [h["id"] for h in want]
        np.testing.assert_allclose([h["score"] for h in got["hits"]], [h["score"] for h in want], rtol=1e-6)
        assert got["hits"][0]["text"] == want[0]["text"] and "metadata" in got["hits"][0]
    qd, qs = enc.encode_queries(QUERY_TEXTS[:2])
    sparse = [{str(t): float(w) for t, w in zip(qs[i].indices, qs[i].data)} for i in range(2)]
    code, out2 = server.call("POST", "/search", {"dense": qd.tolist(), "sparse": sparse, "k": 5,
                                                 "bm25_queries": QUERY_TEXTS[:2], "with_documents": False})
    assert code == 200
    assert [h["id"] for h in out2["results"][0]["hits"]] == [h["id"] for h in out["results"][0]["hits"]]
    assert out2["results"][0]["hits"][0]["text"] is None
    code, out3 = server.call("POST", "/search", {"queries": ["star"], "mode": "bm25", "k": 3,
                                                 "filter": {"topic": "astronomy"}})
    assert code == 200 and all(h["metadata"]["topic"] == "astronomy" for h in out3["results"][0]["hits"])
    code, out4 = server.call("POST", "/search", {"queries": ["star"], "filter": {"topic": "none"}})
    assert code == 200 and out4["results"][0]["hits"] == []


def test_documents_stats_health_and_api_key(server):
    assert server.call("GET", "/health") == (200, {"status": "ok", "documents": 200})
    code, st = server.call("GET", "/stats")
    assert code == 200 and st["documents"] == 200
    # where each arm searches, and why (issue 15): the CPU on a machine without a GPU
    from hylex.indexing.dense import dense_device

    here = dense_device("Flat")["device"]
    assert st["devices"]["dense"]["device"] == here and st["devices"]["dense"]["segments"] == [here]
    assert st["devices"]["dense"]["why"] and st["devices"]["sparse"]["device"] == st["devices"]["bm25"]["device"] == "cpu"
    code, doc = server.call("GET", "/documents/d0007")
    assert code == 200 and doc["id"] == "d0007"
    assert server.call("GET", "/documents/nope")[0] == 404
    new = [{"id": d.id, "text": d.text, "title": d.title, "metadata": d.metadata} for d in make_docs(3, 9, "n")]
    code, err = server.call("POST", "/documents", {"documents": new})
    assert code == 401 and "X-API-Key" in err["error"]
    assert server.call("POST", "/documents", {"documents": new}, key="wrong")[0] == 401
    code, out = server.call("POST", "/documents", {"documents": new}, key=KEY)
    assert (code, out) == (200, {"committed": 3, "documents": 203})
    code, out = server.call("POST", "/documents", {"documents": [{**new[0], "text": "replaced text"}]}, key=KEY)
    assert (code, out) == (200, {"committed": 1, "documents": 203})
    assert server.call("GET", "/documents/n0000")[1]["text"] == "replaced text"
    code, out = server.call("DELETE", "/documents", {"ids": ["n0001", "zzz"]}, key=KEY)
    assert (code, out) == (200, {"deleted": 1, "documents": 202})
    code, out = server.call("DELETE", "/documents", {"filter": {"topic": "chess"}}, key=KEY)
    assert code == 200 and out["deleted"] > 0
    code, res = server.call("POST", "/search", {"queries": ["pawn bishop knight"], "k": 5})
    assert code == 200 and all(h["metadata"]["topic"] != "chess" for h in res["results"][0]["hits"])
    assert server.call("GET", "/documents/n0000")[0] == 200  # searches see every commit
    # an empty document is a document (as in corpus files): stored, counted, found by id
    code, out = server.call("POST", "/documents", {"documents": [{"id": "blank", "text": " "}]}, key=KEY)
    assert code == 200 and out["committed"] == 1
    assert server.call("GET", "/documents/blank")[1]["text"] == " "


@pytest.mark.parametrize("method, path, body, status, needle", [
    ("POST", "/search", {"queries": ["a"], "k": 0}, 422, "k"),
    ("POST", "/search", {"queries": ["a"], "mode": "magic"}, 422, "mode"),
    ("POST", "/search", {"queries": ["a"], "bogus": 1}, 422, "bogus"),
    ("POST", "/search", {"queries": ["a"], "filter": {"a": {"$regex": "x"}}}, 400, "unknown operator"),
    ("POST", "/search", {"queries": [""]}, 400, "empty"),
    ("POST", "/search", {"dense": [[0.1, 0.2]], "mode": "dense"}, 400, "dense queries have shape"),
    ("POST", "/search", {"dense": [[0.1], [0.1, 0.2]], "mode": "dense"}, 400, "same length"),
    ("POST", "/search", {"sparse": [{"x": 1.0}], "mode": "sparse"}, 400, "not a vocabulary id"),
    ("POST", "/search", {"sparse": [{"5": -1.0}], "mode": "sparse"}, 400, ">= 0"),
    ("POST", "/search", {"queries": ["q"] * 51}, 413, "limit is 50"),
    ("POST", "/search", {"mode": "dense"}, 400, "needs dense query vectors"),
    ("DELETE", "/documents", {}, 400, "exactly one of"),
    ("POST", "/documents", {"documents": []}, 422, "documents"),
    ("POST", "/documents", {"documents": [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]}, 400, "twice"),
    ("POST", "/documents", {"documents": [{"id": "x", "text": "a", "metadata": [1]}]}, 422, "metadata"),
])
def test_client_mistakes_are_4xx_json_and_change_nothing(server, method, path, body, status, needle):
    code, err = server.call(method, path, body, key=KEY)
    assert code == status, err
    assert needle in json.dumps(err)
    assert server.call("GET", "/health")[1]["documents"] == 200


def test_body_limit_and_malformed_json(server):
    code, err = server.call("POST", "/search", raw=b"{" + b" " * 300_000 + b"}")
    assert code == 413 and "over the limit" in err["error"]
    code, err = server.call("POST", "/search", raw=b"{not json")
    assert code == 422


def test_auth_all_protects_reads_too(index_copy):
    with Server(create_app(index_copy, encoder=FakeEncoder(), api_key=KEY, auth="all")) as s:
        assert s.call("POST", "/search", {"queries": ["star"]})[0] == 401
        assert s.call("GET", "/stats")[0] == 401
        assert s.call("GET", "/health")[0] == 200  # liveness probes need no key
        assert s.call("POST", "/search", {"queries": ["star"]}, key=KEY)[0] == 200


def test_openapi_schema_lists_every_endpoint(server):
    code, schema = server.call("GET", "/openapi.json")
    assert code == 200
    assert {"/search", "/documents", "/documents/{doc_id}", "/stats", "/health"} <= set(schema["paths"])
    assert "SearchRequest" in schema["components"]["schemas"]


class CountingEncoder(FakeEncoder):
    """FakeEncoder that counts query-encoding calls and can be slowed down."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.query_calls, self.delay = [], delay

    def encode_queries(self, texts):
        self.query_calls.append(len(texts))
        time.sleep(self.delay)
        return super().encode_queries(texts)


def concurrent(server, bodies):
    out = [None] * len(bodies)

    def go(i):
        out[i] = server.call("POST", "/search", bodies[i])
    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_concurrent_searches_share_one_forward_pass(index_copy):
    """Micro-batching: 12 concurrent requests are encoded in fewer passes than requests, and each gets exactly
    the hits it would get alone."""
    enc = CountingEncoder(delay=0.05)
    bodies = [{"queries": [q], "k": 5} for q in QUERY_TEXTS[:12]]
    with Server(create_app(index_copy, encoder=enc, batch_wait_ms=100)) as s:
        results = concurrent(s, bodies)
        stats = s.call("GET", "/stats")[1]["service"]
    assert all(code == 200 for code, _ in results)
    assert sum(enc.query_calls) == 12 and len(enc.query_calls) < 12, enc.query_calls
    admission = stats.pop("admission")  # what admission learnt from the passes it timed
    assert admission["passes_measured"] == len(enc.query_calls) and admission["ms_per_token"] >= 0
    assert stats == {"batching": True, "encode_batches": len(enc.query_calls), "encoded_query_texts": 12,
                     "timed_out": 0, "refused": 0, "pid": os.getpid(), "worker": 0, "workers": 1}
    with Index.open(index_copy) as ix:
        s = Searcher(ix, encoder=FakeEncoder())
        for (code, out), body in zip(results, bodies):
            want = s.search(body["queries"], k=5).ids[0].tolist()
            assert [h["id"] for h in out["results"][0]["hits"]] == [i for i in want if i is not None]


def test_without_batching_each_request_encodes_alone(index_copy):
    enc = CountingEncoder()
    with Server(create_app(index_copy, encoder=enc, batching=False)) as s:
        results = concurrent(s, [{"queries": [q]} for q in QUERY_TEXTS[:4]])
    assert all(code == 200 for code, _ in results) and enc.query_calls == [1, 1, 1, 1]


def test_full_queue_answers_503_with_retry_after(index_copy):
    enc = CountingEncoder(delay=0.3)
    with Server(create_app(index_copy, encoder=enc, batch_wait_ms=1, max_queue=2)) as s:
        results = concurrent(s, [{"queries": [q, q]} for q in QUERY_TEXTS[:6]])
        codes = sorted(code for code, _ in results)
        assert 200 in codes and 503 in codes, codes
        busy = next(out for code, out in results if code == 503)
        assert "busy" in busy["error"]
        s.call("POST", "/search", {"queries": ["x"] * 3})
        assert s.last_headers.get("retry-after") == "1" or s.last_headers.get("Retry-After") == "1"


def test_client_has_the_library_signature_and_results(server, index_copy):
    from hylex.client import Client, ClientError

    c = Client(f"http://127.0.0.1:{server.port}", api_key=KEY)
    enc = FakeEncoder()
    with Index.open(index_copy) as ix:
        lib = Searcher(ix, encoder=enc)
        for kw in ({"mode": "hybrid"}, {"mode": "bm25"}, {"mode": "hybrid", "fusion": "rrf",
                   "arms": ("dense", "sparse", "bm25")}, {"mode": "sparse", "filter": {"topic": "astronomy"}}):
            a = c.search(QUERY_TEXTS[:4], k=6, **kw)
            b = lib.search(QUERY_TEXTS[:4], k=6, **kw)
            assert a.ids.tolist() == b.ids.tolist(), kw
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        qd, qs = enc.encode_queries(QUERY_TEXTS[:2])
        a = c.search(dense=qd, sparse=qs, k=4, with_documents=True)
        b = lib.search(dense=qd, sparse=qs, k=4, with_documents=True)
        assert a.ids.tolist() == b.ids.tolist() and a.documents[0][0]["text"] == b.documents[0][0]["text"]
    assert c.upsert([{"id": "c1", "text": "star galaxy comet"}]) == {"committed": 1, "documents": 201}
    assert c.get("c1")["text"] == "star galaxy comet" and c.get("nope") is None
    assert c.delete(ids=["c1"]) == {"deleted": 1, "documents": 200}
    assert c.health()["status"] == "ok" and c.stats()["documents"] == 200
    with pytest.raises(ClientError, match="HTTP 401"):
        Client(f"http://127.0.0.1:{server.port}").upsert([{"id": "c2", "text": "x"}])
    with pytest.raises(ClientError, match="HTTP 400.*unknown operator"):
        c.search(["x"], filter={"a": {"$bad": 1}})
    with pytest.raises(HylexError, match="cannot reach"):
        Client(f"http://127.0.0.1:{free_port()}").health()
    with pytest.raises(HylexError, match="must look like"):
        Client("localhost:8000")


def test_shutdown_during_a_write_leaves_it_committed_or_absent(index_copy):
    """Graceful shutdown: a batch being encoded or committed when the server is asked to stop is either
    committed whole (and acknowledged) or not applied at all; the index stays valid."""

    class SlowDocs(CountingEncoder):
        def encode_documents(self, texts):
            time.sleep(0.4)
            return super().encode_documents(texts)

    s = Server(create_app(index_copy, encoder=SlowDocs()))
    s.__enter__()
    result = {}
    docs = [{"id": f"g{i}", "text": f"star galaxy {i}"} for i in range(5)]
    t = threading.Thread(target=lambda: result.update(r=s.call("POST", "/documents", {"documents": docs})))
    t.start()
    time.sleep(0.15)  # the batch is being encoded
    s.__exit__(None, None, None)
    t.join(30)
    with Index.open(index_copy) as ix:
        assert ix.validate() == []
        present = [r is not None for r in ix.rows_of([d["id"] for d in docs])]
    assert all(present) or not any(present)
    if result.get("r", (None,))[0] == 200:
        assert all(present)


def test_explain_over_http(server):
    code, out = server.call("POST", "/search", {"queries": ["star galaxy telescope"], "k": 3, "explain": True,
                                                "arms": ["dense", "sparse", "bm25"]})
    assert code == 200
    for h in out["results"][0]["hits"]:
        e = h["explain"]
        assert e["fused"] == pytest.approx(h["score"], rel=1e-6)
        assert {"dense", "sparse", "sparse_terms", "bm25", "bm25_terms"} <= set(e)
    code, out = server.call("POST", "/search", {"queries": ["star"], "k": 2})
    assert all(h["explain"] is None for h in out["results"][0]["hits"])


def test_read_only_service_sees_other_processes_commits(index_copy):
    """Until its first write the service holds no writer lock; commits made meanwhile by another writer (e.g.
    `hylex index --upsert`) are seen at the next request."""
    enc = FakeEncoder()
    with Server(create_app(index_copy, encoder=enc)) as s:
        assert s.call("GET", "/documents/x1")[0] == 404
        docs = make_docs(2, seed=3, prefix="x")
        with Index.open(index_copy, writable=True) as w:
            out = enc.encode_documents([d.full_text for d in docs])
            w.add(docs, out.dense, out.sparse)
        assert s.call("GET", "/documents/x0001")[0] == 200
        assert s.call("GET", "/stats")[1]["documents"] == 202


def test_writes_take_the_writer_lock_per_commit(index_copy):
    """The service holds the index's writer lock only while it commits: another writer can commit between its
    writes (and the service sees it); a write waits for another writer up to write_wait, then gets 503."""
    enc = FakeEncoder()
    docs = [{"id": f"w{i}", "text": f"star galaxy comet {i}"} for i in range(3)]
    with Server(create_app(index_copy, encoder=enc, write_wait=0.3)) as s:
        assert s.call("POST", "/documents", {"documents": docs[:1]}) == (200, {"committed": 1, "documents": 201})
        with Index.open(index_copy, writable=True) as w:  # free again once the commit is durable
            more = make_docs(2, seed=5, prefix="o")
            out = enc.encode_documents([d.full_text for d in more])
            w.add(more, out.dense, out.sparse)
            t0 = time.monotonic()
            code, err = s.call("POST", "/documents", {"documents": docs[1:2]})
            assert code == 503 and "another process is writing" in err["error"] and "retry" in err["error"]
            assert s.last_headers.get("retry-after", s.last_headers.get("Retry-After")) == "1"
            assert time.monotonic() - t0 >= 0.3
            code, err = s.call("DELETE", "/documents", {"ids": ["w0"]})
            assert code == 503
            code, res = s.call("POST", "/search", {"queries": ["star"], "k": 3})  # reads go on meanwhile
            assert code == 200 and res["results"][0]["hits"]
        assert s.call("GET", "/documents/w1")[0] == 404  # the refused write left nothing
        assert s.call("GET", "/stats")[1]["documents"] == 203  # the other writer's commit is seen
        holder = Index.open(index_copy, writable=True)
        threading.Timer(0.1, holder.close).start()
        assert s.call("POST", "/documents", {"documents": docs[2:]}) == (200, {"committed": 1, "documents": 204})
        assert s.call("DELETE", "/documents", {"ids": ["w0", "o0000"]}) == (200, {"deleted": 2, "documents": 202})
    with Index.open(index_copy) as ix:
        assert ix.validate() == [] and ix.n_docs == 202 and ix.get(["w1"]) == [None]
