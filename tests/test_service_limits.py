"""Issue 40, section 2: no 500 on /search, the work of one request bounded before it is done (hits, documents'
bytes, query length), slow clients closed, strict booleans, one rule for blank documents."""
from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeEncoder, make_docs
from test_service import KEY, Server, free_port

from hylex.corpus import Document
from hylex.errors import HylexError
from hylex.indexing import Index, build_index
from hylex.retrieval import Searcher
from hylex.service import create_app

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def server(index_copy):
    with Server(create_app(index_copy, encoder=FakeEncoder(), api_key=KEY, max_batch=50)) as s:
        yield s


def _held_terms() -> list[int]:
    """Sparse ids the test index's documents hold (the fake encoder's ids of topic words)."""
    return FakeEncoder().encode_documents(["star planet galaxy telescope"]).sparse.indices.tolist()


# -- 1. inputs that were a plain-text 500 --------------------------------------------------------------------------
@pytest.mark.parametrize("body, needle", [
    ({"sparse": [{"²": 1}], "mode": "sparse"}, "not a vocabulary id"),  # "²".isdigit(), then int() failed
    ({"sparse": [{"7" * 5000: 1}], "mode": "sparse"}, "not a vocabulary id"),  # int() of over 4,300 digits
    ({"sparse": [{str(t): 3.4e38 for t in _held_terms()}], "mode": "sparse"}, "over 1e+30"),  # inf scores
    ({"sparse": [{str(t): 3.4e38 for t in _held_terms()}], "dense": [[1.0] + [0.0] * 31],
      "bm25_queries": ["star"]}, "over 1e+30"),  # inf scores in fusion ("D must be finite")
    ({"queries": ["star"], "arms": ["bm25", "sparse"], "weights": [1e308, 1e308]}, "is over 1e+29"),
    ({"sparse": [{"3": 1e300}], "mode": "sparse"}, "float32"),
])
def test_former_500s_are_400_with_an_error(server, body, needle):
    code, out = server.call("POST", "/search", body)
    assert code == 400 and needle in out["error"], out


@pytest.mark.parametrize("body, code", [
    ({"queries": ["galaxy"], "bm25_queries": [], "arms": ["sparse", "bm25"]}, 422),  # empty: was 200
    ({"queries": ["galaxy"], "bm25_queries": ["star"], "arms": ["sparse", "bm25"]}, 400),  # was silently ignored
    ({"queries": []}, 422),  # was 200 with no results
])
def test_texts_and_vectors_are_not_mixed_and_lists_not_empty(server, body, code):
    status, out = server.call("POST", "/search", body)
    assert status == code and out["error"], out


def test_huge_approximate_knobs_are_no_cut(server):
    # candidates sized an allocation: 2**62 was "array is too big" (500); beyond the documents it changes nothing
    code, out = server.call("POST", "/search", {"queries": ["star planet"], "mode": "sparse", "k": 3,
                                                "candidates": 2**62, "query_cut": 2**62, "heap_factor": 1.5})
    assert code == 200 and len(out["results"][0]["hits"]) == 3


def test_the_library_refuses_overflow_with_hylex_errors(index_copy):
    with Index.open(index_copy) as ix:
        s = Searcher(ix, encoder=FakeEncoder())
        with pytest.raises(HylexError, match="is over 1e"):  # was a bare ValueError from the kernel
            s.search(["star"], arms=["bm25", "sparse"], weights=[1e308, 1e308])
        with pytest.raises(HylexError, match="must be finite"):  # float() of this int overflows
            s.search(["star"], arms=["bm25", "sparse"], weights=[10**400, 1])
        q = FakeEncoder().encode_queries(["star planet galaxy"]).sparse * np.float32(3.4e38)
        with pytest.raises(HylexError, match="over 1e"):  # was inf scores
            s.search(None, mode="sparse", sparse=q)
        # weights large but within range: finite fused scores
        res = s.search(["star planet"], arms=["bm25", "sparse"], weights=[1e29, 5e28], k=5)
        assert np.isfinite(res.scores[res.rows >= 0]).all() and (res.rows[0] >= 0).any()


def test_an_unexpected_error_is_a_json_500_and_logged(server, caplog):
    searcher = server.server.config.app.state.service.searcher

    def boom(*a, **kw):
        raise RuntimeError("a bug")

    searcher.search = boom
    with caplog.at_level(logging.ERROR, logger="hylex.service.app"):
        code, out = server.call("POST", "/search", {"queries": ["star"], "mode": "bm25"})
    assert code == 500 and "internal error" in out["error"] and "RuntimeError" in out["error"]
    assert server.last_headers["content-type"] == "application/json"
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)  # the traceback is logged
    assert server.call("GET", "/health")[0] == 200


# -- 2. memory: hits, fusion candidates, explanations and documents' bytes --------------------------------------
def test_queries_times_k_over_the_default_limit_is_413(index_copy):
    with Server(create_app(index_copy, encoder=FakeEncoder())) as s:  # default limits
        body = {"bm25_queries": [f"star {i}" for i in range(1024)], "mode": "bm25", "k": 1000}
        code, out = s.call("POST", "/search", body)
        # 200 documents: k is capped at 200, 1024 x 200 = 204,800 hits
        assert code == 413 and "204,800 hits" in out["error"] and "--max-hits" in out["error"]
        body["k"] = 9  # 9,216 hits: under the limit
        code, out = s.call("POST", "/search", {**body, "with_documents": False})
        assert code == 200 and len(out["results"]) == 1024


def test_explain_and_fusion_candidates_are_bounded(index_copy):
    with Server(create_app(index_copy, encoder=FakeEncoder(), max_hits=400)) as s:
        code, out = s.call("POST", "/search", {"queries": ["star"] * 2, "k": 2, "explain": True})
        assert code == 200 and out["results"][0]["hits"][0]["explain"]  # 4 hits: 400 // 100 may be explained
        # 60 queries x depth 200 (the documents) x 3 arms = 36,000 candidates > 80 x 400
        code, out = s.call("POST", "/search", {"queries": ["star"] * 60, "k": 1})
        assert code == 413 and "36,000 fusion candidates" in out["error"] and "depth" in out["error"]
        code, out = s.call("POST", "/search", {"queries": ["star"] * 60, "k": 1, "depth": 100})
        assert code == 200
        code, out = s.call("POST", "/search", {"queries": ["star"] * 2, "k": 50, "mode": "bm25", "explain": True})
        assert code == 413 and "explain covers at most 4 hits" in out["error"]
    with Server(create_app(index_copy, encoder=FakeEncoder())) as s:  # default: explain up to 1,000 hits
        code, out = s.call("POST", "/search", {"queries": [f"star {i}" for i in range(20)], "k": 100,
                                               "mode": "bm25", "explain": True})
        assert code == 413 and "2,000" in out["error"]


@pytest.fixture
def big_docs_index(tmp_path) -> Path:
    words = "star planet galaxy telescope orbit comet nebula".split()
    docs = [Document(id=f"b{i:02d}", text=" ".join(words[(i + j) % 7] for j in range(8000)), title=f"big {i}")
            for i in range(30)]  # ~50 KB each
    path = tmp_path / "big"
    build_index(docs, path, FakeEncoder(), progress=False)
    return path


def test_documents_over_the_response_limit_are_413(big_docs_index):
    with Server(create_app(big_docs_index, encoder=FakeEncoder(), max_response_bytes=2**20)) as s:
        code, out = s.call("POST", "/search", {"queries": ["star"], "k": 30, "mode": "bm25"})
        assert code == 413 and "1 MB (--max-response-mb)" in out["error"], out
        code, out = s.call("POST", "/search", {"queries": ["star"], "k": 30, "mode": "bm25",
                                               "with_documents": False})
        assert code == 200 and len(out["results"][0]["hits"]) == 30
        code, out = s.call("POST", "/search", {"queries": ["star"], "k": 10, "mode": "bm25"})
        assert code == 200 and all(len(h["text"]) > 40_000 for h in out["results"][0]["hits"])


def test_the_search_stops_reading_documents_past_the_budget(big_docs_index, monkeypatch):
    import hylex.retrieval.searcher as searcher_mod
    from hylex.errors import ResultTooLargeError

    monkeypatch.setattr(searcher_mod, "FETCH_CHUNK", 4)
    with Index.open(big_docs_index) as ix:
        read: list[int] = []
        real = ix.documents

        def counting(rows):
            read.extend(rows)
            return real(rows)

        ix.documents = counting
        s = Searcher(ix, encoder=FakeEncoder())
        with pytest.raises(ResultTooLargeError, match="over the limit of 120,000"):
            s.search(["star"], k=30, mode="bm25", with_documents=True, max_document_bytes=120_000)
        assert len(read) == 4  # the first 4 documents (~50 KB each) passed the budget: no more were read
        read.clear()
        res = s.search(["star"], k=30, mode="bm25", max_document_bytes=120_000)  # no documents: no limit
        assert len(read) == 30 and res.documents is None and None not in res.ids[0].tolist()


# -- 3. time: query length, bm25 queries in the batch limit, repeated BM25 terms ------------------------------------
@pytest.mark.parametrize("field, extra", [("queries", {}), ("bm25_queries", {"mode": "bm25"})])
def test_query_text_over_the_default_length_is_413(index_copy, field, extra):
    with Server(create_app(index_copy, encoder=FakeEncoder())) as s:  # default --max-query-chars 10,000
        code, out = s.call("POST", "/search", {field: ["star " * 2000 + "x"], "mode": "bm25", **extra})
        assert code == 413 and "10,001 characters" in out["error"] and "--max-query-chars" in out["error"]
        code, out = s.call("POST", "/search", {field: ["star " * 2000], "mode": "bm25", **extra})
        assert code == 200


def test_bm25_queries_count_in_the_batch_limit(server):
    code, out = server.call("POST", "/search", {"bm25_queries": ["star"] * 51, "mode": "bm25"})
    assert code == 413 and "limit is 50" in out["error"]  # was searched: only queries/dense/sparse were counted


def test_a_repeated_bm25_term_walks_its_postings_once(index_copy, monkeypatch):
    import hylex.indexing.bm25 as bm25_mod

    walked: list[int] = []
    real = bm25_mod.bm25_topk

    def counting(q_indptr, q_terms, *args, **kw):
        walked.append(len(q_terms))
        return real(q_indptr, q_terms, *args, **kw)

    monkeypatch.setattr(bm25_mod, "bm25_topk", counting)
    with Index.open(index_copy) as ix:
        s = Searcher(ix)
        one = s.search(["galaxy"], k=5, mode="bm25")
        walked.clear()
        many = s.search(["galaxy " * 50_000], k=5, mode="bm25")
    assert walked == [1]  # was 50,000 walks of the same postings
    assert many.rows.tolist() == one.rows.tolist()
    np.testing.assert_allclose(many.scores, 50_000 * one.scores, rtol=1e-6)


# -- 4. slow clients -------------------------------------------------------------------------------------------------
class GuardedServer(Server):
    """The test server with hylex serve's connection guards."""

    def __init__(self, app, **limits):
        import uvicorn

        from hylex.service.connections import server_config

        self.port = free_port()
        self.server = uvicorn.Server(server_config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                   **limits))
        self.thread = threading.Thread(target=self.server.run, daemon=True)


def _open(port: int, data: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    if data:
        s.sendall(data)
    return s


def _read_until_closed(s: socket.socket, seconds: float) -> bytes | None:
    """What the server sends until it closes the connection; None if it is still open after ``seconds``."""
    s.settimeout(seconds)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    except socket.timeout:
        return None
    except ConnectionResetError:
        return out
    finally:
        s.close()


PARTIAL_HEADER = b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: appl"
PARTIAL_BODY = b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"q"


def test_stalled_connections_are_closed_and_others_served(index_copy):
    with GuardedServer(create_app(index_copy, encoder=FakeEncoder()), header_timeout=1.0, body_timeout=1.0,
                       max_connections=200) as s:
        stalled = [_open(s.port) for _ in range(10)] + [_open(s.port, PARTIAL_HEADER) for _ in range(20)] + \
                  [_open(s.port, PARTIAL_BODY) for _ in range(20)]
        t0 = time.monotonic()
        code, out = s.call("POST", "/search", {"queries": ["star"], "mode": "bm25", "k": 2})
        assert code == 200 and out["results"][0]["hits"]  # served while 50 stall
        answers = [_read_until_closed(c, 10.0) for c in stalled]
        assert None not in answers  # every stalled connection was closed (was: open after 120 s)
        assert time.monotonic() - t0 < 10
        for a in answers:
            head, _, body = a.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408") and b"application/json" in head, a[:200]
            assert "not received within 1 s" in json.loads(body)["error"]
        # a trickling client is held to the same deadline: one byte every 0.3 s never completes the headers
        c = _open(s.port)
        t0 = time.monotonic()
        for ch in PARTIAL_HEADER[:12]:
            try:
                c.sendall(bytes([ch]))
            except OSError:
                break
            time.sleep(0.3)
        assert _read_until_closed(c, 5.0) is not None and time.monotonic() - t0 < 6
        # kept-alive connections still work, and idle ones between requests are closed by the keep-alive timer
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        for _ in range(3):
            conn.request("GET", "/health")
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
            time.sleep(0.5)
        conn.close()


def test_connections_over_the_cap_get_503_in_json(index_copy):
    with GuardedServer(create_app(index_copy, encoder=FakeEncoder()), header_timeout=2.0, body_timeout=2.0,
                       max_connections=5) as s:
        idle = [_open(s.port) for _ in range(5)]
        time.sleep(0.2)
        extra = _open(s.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_until_closed(extra, 10.0)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower()
        assert "--max-connections" in json.loads(body)["error"]
        for c in idle:
            assert _read_until_closed(c, 10.0) is not None  # closed by the header deadline
        time.sleep(0.2)
        assert s.call("GET", "/health")[0] == 200  # room again


def test_a_malformed_request_gets_a_json_400(index_copy):
    with GuardedServer(create_app(index_copy, encoder=FakeEncoder())) as s:
        answer = _read_until_closed(_open(s.port, b"NOT HTTP AT ALL\r\n\r\n"), 10.0)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and "invalid HTTP request" in json.loads(body)["error"]


def test_hylex_serve_applies_the_connection_options(index_copy):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "hylex", "--no-progress", "serve", str(index_copy), "--port", "0",
                             "--encoder", "conftest:FakeEncoder", "--header-timeout", "1", "--body-timeout", "1",
                             "--max-connections", "3", "--max-query-chars", "20"],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, proc.stderr.read() if proc.poll() is not None else line
        port = int(line.rsplit(":", 1)[1].split(" ")[0])
        stalled = _open(port, PARTIAL_BODY)
        answer = _read_until_closed(stalled, 10.0)
        assert answer is not None and answer.startswith(b"HTTP/1.1 408")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/search", body=json.dumps({"queries": ["x" * 21], "mode": "bm25"}),
                     headers={"content-type": "application/json"})
        r = conn.getresponse()
        assert r.status == 413 and "--max-query-chars" in json.loads(r.read())["error"]
        conn.close()
    finally:
        proc.terminate()
        proc.wait(60)
        proc.stdout.close()
        proc.stderr.close()


def test_serve_refuses_bad_limits(index_copy, capsys):
    from hylex import cli

    for argv, needle in ((["--max-response-mb", "0"], "--max-response-mb must be"),
                         (["--header-timeout", "nan"], "--header-timeout must be"),
                         (["--body-timeout", "-1"], "--body-timeout must be")):
        capsys.readouterr()
        rc = cli.main(["--no-progress", "serve", str(index_copy), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], err


# -- 5. parameter ranges and strict booleans -------------------------------------------------------------------------
def test_the_schema_states_the_weight_and_dense_bounds(server):
    schema = server.call("GET", "/openapi.json")[1]["components"]["schemas"]["SearchRequest"]["properties"]
    assert schema["weights"]["anyOf"][0]["items"]["maximum"] == 1e29
    assert schema["dense"]["anyOf"][0]["items"]["items"]["maximum"] == pytest.approx(1e6 / 32**0.5)
    code, out = server.call("POST", "/search", {"queries": ["star"], "arms": ["bm25", "sparse"], "weights": [1e29, 0]})
    assert code == 200


def test_the_schema_admits_dense_and_sparse_vectors_without_arms(server):
    d = [1.0] + [0.0] * 31
    inner = server.call("GET", "/openapi.json")[1]["components"]["schemas"]["SearchRequest"]["anyOf"][1]["anyOf"]
    body = {"dense": [d], "sparse": [{"1": 1}]}  # no bm25 texts, no arms: dense + sparse fused
    assert server.call("POST", "/search", body)[0] == 200
    assert any(b.get("required") == ["dense", "sparse"] for b in inner)  # the schema refused it


def test_k1_beyond_its_range_is_refused(server):
    code, out = server.call("POST", "/search", {"queries": ["star"], "mode": "bm25", "k1": 1e308})
    assert code == 400 and "at most 1000" in out["error"]  # was 200 with no hits (every score underflowed)
    code, out = server.call("POST", "/search", {"queries": ["star"], "mode": "bm25", "k1": 1000})
    assert code == 200 and out["results"][0]["hits"]
    schema = server.call("GET", "/openapi.json")[1]["components"]["schemas"]["SearchRequest"]
    assert schema["properties"]["k1"]["anyOf"][0]["maximum"] == 1000


@pytest.mark.parametrize("method, path, body, field", [
    ("POST", "/search", {"queries": ["star"], "explain": 0}, "explain"),
    ("POST", "/search", {"queries": ["star"], "with_documents": 1}, "with_documents"),
    ("POST", "/search", {"queries": ["star"], "with_documents": "false"}, "with_documents"),
    ("DELETE", "/documents", {"all": 1}, "all"),
    # and numbers: true / false and "3" are not numbers (Schemathesis: "b": false was accepted as 0)
    ("POST", "/search", {"queries": ["star"], "mode": "bm25", "b": False}, "b"),
    ("POST", "/search", {"queries": ["star"], "k": "3"}, "k"),
    ("POST", "/search", {"dense": [[True] * 32], "mode": "dense"}, "dense"),
    ("POST", "/search", {"sparse": [{"3": "1"}], "mode": "sparse"}, "sparse"),
])
def test_booleans_and_numbers_are_strict(server, index_copy, method, path, body, field):
    code, out = server.call(method, path, body, key=KEY)
    assert code == 422 and field in out["error"], out  # 0 was taken for false, false for 0
    if method == "POST":
        assert server.call("POST", "/search", {"queries": ["star"], "k": 3.0})[0] == 200  # an integer in JSON
    with Index.open(index_copy) as ix:
        assert ix.n_docs == 200


def test_every_boolean_field_of_every_request_model_is_strict():
    from pydantic import ValidationError

    import hylex.service.app as app_mod

    def models(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from models(sub)

    seen = []
    for model in models(app_mod._Model):
        for name, f in model.model_fields.items():
            if "bool" not in str(f.annotation):
                continue
            seen.append(f"{model.__name__}.{name}")
            with pytest.raises(ValidationError) as e:
                model.model_validate({name: 0})
            assert any(err["loc"][:1] == (name,) and err["type"] == "bool_type" for err in e.value.errors()), \
                (model.__name__, name)
    assert {"SearchRequest.explain", "SearchRequest.with_documents", "DeleteRequest.all"} <= set(seen)


# -- 6. blank documents: one rule everywhere ----------------------------------------------------------------------
def test_blank_documents_are_accepted_everywhere_and_the_schema_says_so(server, index_copy, tmp_path):
    schema = server.call("GET", "/openapi.json")[1]["components"]["schemas"]["DocumentIn"]
    assert "anyOf" not in schema and "blank" in schema["description"]  # the schema said blank was refused
    code, out = server.call("POST", "/documents", {"documents": [{"id": "blank", "text": " ", "title": ""}]},
                            key=KEY)
    assert code == 200 and out["committed"] == 1
    assert server.call("GET", "/documents/blank")[1] == {"id": "blank", "title": "", "text": " ", "metadata": {}}
    # as the library and hylex index do
    path = tmp_path / "lib"
    build_index(make_docs(5) + [Document("empty", "", "")], path, FakeEncoder(), progress=False)
    with Index.open(path) as ix:
        assert ix.get(["empty"])[0]["text"] == ""
