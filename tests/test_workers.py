"""`hylex serve --workers N`: several processes on one port, run as a user runs them (the command line in a
child process; the fake encoder stands in for the LLM through --encoder)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import QUERY_TEXTS, FakeEncoder

from hylex.indexing import Index
from hylex.retrieval import Searcher

TESTS = Path(__file__).resolve().parent
KEY = "worker-key"


class Serve:
    """``python -m hylex serve`` in a child process, on a free port it prints once every worker is ready."""

    def __init__(self, index: Path, *extra: str, timeout: float = 180):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               "HYLEX_TEST_KEY": KEY}
        self.proc = subprocess.Popen([sys.executable, "-m", "hylex", "--no-progress", "serve", str(index), "--port",
                                      "0", "--api-key-env", "HYLEX_TEST_KEY", *extra], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.line = self.proc.stdout.readline()  # blocks until ready, or EOF when the process exits
        if "serving" not in self.line:
            self.proc.wait(timeout)
            raise RuntimeError(f"serve failed ({self.proc.returncode}): {self.proc.stderr.read()}")
        self.port = int(self.line.rsplit(":", 1)[1].split(" ")[0])

    def call(self, method: str, path: str, body=None, key: str | None = KEY):
        """One request on a fresh connection (so the kernel hands it to any worker)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"content-type": "application/json", "connection": "close",
                                              **({"x-api-key": key} if key else {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stats_until(self, want, seconds: float = 90) -> dict[int, dict]:
        """/stats answers per worker pid (the latest of each), until ``want(by_pid)`` holds."""
        by_pid: dict[int, dict] = {}
        deadline, n = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            code, st = self.call("GET", "/stats")
            assert code == 200, st
            by_pid[st["service"]["pid"]] = st
            n += 1
            if want(by_pid):
                return by_pid
            time.sleep(0.01)
        raise AssertionError(f"not reached after {n} requests in {seconds} s: "
                             f"{ {p: st['documents'] for p, st in by_pid.items()} }")

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(90)
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_gone(pids, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_workers_share_the_port_and_each_others_writes(index_copy):
    s = Serve(index_copy, "--workers", "2", "--encoder", "conftest:FakeEncoder")
    try:
        assert "(2 workers, " in s.line
        first = s.stats_until(lambda by: len(by) == 2)  # both processes answer on the one port
        assert {st["service"]["worker"] for st in first.values()} == {0, 1}
        assert all(st["service"]["workers"] == 2 and st["documents"] == 200 for st in first.values())

        # searches: the same hits as the library, whichever worker answers
        with Index.open(index_copy) as ix:
            want = Searcher(ix, encoder=FakeEncoder()).search(QUERY_TEXTS[:3], k=5, mode="hybrid",
                                                             arms=("dense", "sparse", "bm25")).ids.tolist()
        for _ in range(6):
            code, out = s.call("POST", "/search", {"queries": QUERY_TEXTS[:3], "k": 5,
                                                   "arms": ["dense", "sparse", "bm25"]})
            assert code == 200 and [[h["id"] for h in r["hits"]] for r in out["results"]] == want

        # concurrent writes through both workers take turns on the index's writer lock: none is lost
        codes = [None] * 12

        def upsert(i):
            codes[i] = s.call("POST", "/documents", {"documents": [
                {"id": f"u{i}-{j}", "text": f"star galaxy comet {i} {j}", "metadata": {"batch": i}}
                for j in range(3)]})[0]
        threads = [threading.Thread(target=upsert, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert codes == [200] * 12
        # every worker sees every commit, made by itself or the other
        s.stats_until(lambda by: len(by) == 2 and all(st["documents"] == 236 for st in by.values()))
        for i in range(12):
            assert s.call("GET", f"/documents/u{i}-2")[0] == 200
        code, out = s.call("DELETE", "/documents", {"filter": {"batch": {"$in": [0, 1, 2]}}})
        assert (code, out) == (200, {"deleted": 9, "documents": 227})
        s.stats_until(lambda by: len(by) == 2 and all(st["documents"] == 227 for st in by.values()))
        assert s.call("GET", "/documents/u1-0")[0] == 404

        # a worker that dies is replaced; the others go on answering meanwhile
        victim = next(iter(first))
        os.kill(victim, signal.SIGKILL)
        assert wait_gone([victim])
        for _ in range(10):
            assert s.call("POST", "/search", {"queries": ["star"], "k": 3})[0] == 200
        after = s.stats_until(lambda by: len(set(by) - set(first)) >= 1)
        new = sorted(set(after) - set(first))
        assert new and after[new[0]]["documents"] == 227 and after[new[0]]["service"]["worker"] in (0, 1)
        pids = set(first) | set(after)
    finally:
        rc = s.stop()
    assert rc == 0
    assert wait_gone(pids), "workers outlived the supervisor"
    with Index.open(index_copy) as ix:
        assert ix.validate() == [] and ix.n_docs == 227


def test_shutdown_with_writes_in_flight_keeps_batches_whole(index_copy):
    """SIGTERM to the supervisor while clients keep writing through two workers: every acknowledged batch is
    in the index, and every batch is there whole or not at all."""
    s = Serve(index_copy, "--workers", "2", "--encoder", "conftest:FakeEncoder")
    acked: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w):
        for n in range(1000):
            if stop.is_set():
                return
            b = w * 1000 + n
            try:
                code, _ = s.call("POST", "/documents", {"documents": [
                    {"id": f"b{b}-{j}", "text": f"shutdown batch {b} {j}"} for j in range(4)]})
            except (urllib.error.URLError, OSError):
                return  # the server has stopped listening
            if code != 200:
                return
            with lock:
                acked.append(b)
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    rc = s.stop()
    stop.set()
    for t in threads:
        t.join(60)
    assert rc == 0 and acked
    with Index.open(index_copy) as ix:
        assert ix.validate() == []
        for w in range(4):
            for n in range(1000):
                rows = ix.rows_of([f"b{w * 1000 + n}-{j}" for j in range(4)])
                present = [r is not None for r in rows]
                assert all(present) or not any(present), (w, n, present)
                if w * 1000 + n in acked:
                    assert all(present)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_startup_failures_are_one_line_errors(index_copy, workers):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    base = [sys.executable, "-m", "hylex", "--no-progress", "serve", str(index_copy), "--workers", workers]
    out = subprocess.run(base + ["--port", "0", "--encoder", "no_such_module:make"], env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("hylex: error: ") and "cannot import encoder 'no_such_module:make'" in lines[-1]
    out = subprocess.run(base + ["--port", "0", "--encoder", "conftest.FakeEncoder"], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 2 and "must be given as module:callable" in out.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = subprocess.run(base + ["--port", str(taken.getsockname()[1]), "--encoder", "conftest:FakeEncoder"],
                             env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 2 and "cannot listen on 127.0.0.1:" in out.stderr and "--port" in out.stderr


def test_workers_stop_when_the_supervisor_is_killed(index_copy):
    s = Serve(index_copy, "--workers", "2", "--encoder", "conftest:FakeEncoder")
    pids = set(s.stats_until(lambda by: len(by) == 2))
    assert s.stop(signal.SIGKILL) == -signal.SIGKILL
    assert wait_gone(pids, 30), "orphaned workers kept running"
