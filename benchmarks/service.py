"""Load test of `hylex serve`: N concurrent clients mixing searches and upserts against a server this script
starts on 127.0.0.1, with and without micro-batching and with 1 or more worker processes, and the same searches
in-process for the overhead.

Phases (one JSON line each): ``in-process`` (the searches one by one through ``Searcher.search``: encode +
search), ``service, 1 client`` (the same, one at a time over HTTP: the service's overhead), then ``service, N
clients`` with micro-batching on for each worker count in ``--workers`` and once with batching off on one worker
(each client loops: a search of one query text, or with probability ``--upsert-share`` an upsert of one new
document; bounded by ``--seconds`` and ``--max-requests``). Reports requests/s, p50/p95/p99 latency in ms,
errors (any non-200 answer or failed connection).

    python benchmarks/service.py --index benchmarks/.work/scifact-smollm2-135m-512 \\
        --queries ../shared/data/beir/scifact/queries.jsonl --clients 16 --seconds 60

``--burst 16,64,200`` (issue 40 item 1) first measures the capacity in-process on the same queries (one at a
time through ``Searcher.search``, and encoded in passes packed as the service packs them), then, for each count,
starts a fresh server (its own warm-up only) and has that many clients send one hybrid text search each at the
same instant: answered / 503 / hung (no answer within ``--client-timeout``), p50/p99 of the answered, the slowest
503, and answered/s from the burst to the last answer, against the capacity.

``--concurrency 16,64,200`` runs only the back-pressure phase (issue 12 item 9: one-query hybrid text searches
from that many clients for ``--seconds`` each; answered/s, p50/p99 of the answered, 503s), ``--one-shot RUNS``
only the wall times of one-shot commands in fresh processes (``--version``, ``stats``, ``search``), then (unless
``--no-phases``) where a one-shot hybrid search's time goes: the same ``hylex search`` run in-process in RUNS fresh
processes, each part timed by wrapping it (imports, index open, model load, forward, each arm, fusion; medians),
and whether numba got imported (small indexes use the kernels' NumPy twins: ``hylex.kernels.topk.SMALL_WORK``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def call(port: int, method: str, path: str, body=None, key: str | None = None, timeout: float = 120.0) -> int:
    """The HTTP status; -2 when no answer came within ``timeout`` seconds, -1 when the connection failed."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json", **({"x-api-key": key} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code
    except (TimeoutError, socket.timeout):
        return -2
    except urllib.error.URLError as e:
        return -2 if isinstance(e.reason, (TimeoutError, socket.timeout)) else -1
    except OSError:
        return -1


def percentiles(lat: list[float]) -> dict:
    if not lat:
        return {}
    s = sorted(lat)
    pick = lambda p: round(1000 * s[min(len(s) - 1, int(p * len(s)))], 1)  # noqa: E731
    return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99), "mean_ms": round(1000 * statistics.mean(s), 1)}


class Server:
    """`hylex serve` in a child process on a free port, once every worker is ready (its "serving" line)."""

    def __init__(self, index: Path, extra: list[str], key: str, code: str | None = None):
        env = {**os.environ, "HYLEX_BENCH_KEY": key, "TOKENIZERS_PARALLELISM": "false"}
        if code:  # another checkout's hylex (e.g. `git worktree add /tmp/old COMMIT`), to compare versions
            env["PYTHONPATH"] = code
        self.proc = subprocess.Popen([sys.executable, "-m", "hylex", "--no-progress", "serve", str(index), "--port",
                                      "0", "--api-key-env", "HYLEX_BENCH_KEY", *extra], env=env,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "serving" not in line:
            raise RuntimeError(f"the server exited with {self.proc.wait(60)}")
        self.port = int(line.split(" at ")[1].split(" ")[0].rsplit(":", 1)[1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.proc.stdout.close()


def load(port: int, key: str, queries: list[str], clients: int, seconds: float, max_requests: int,
         upsert_share: float, seed: int) -> dict:
    lat_search, lat_upsert, errors = [], [], []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    count = [0]

    def worker(w: int) -> None:
        rng = random.Random(seed + w)
        while time.perf_counter() < stop_at:
            with lock:
                if count[0] >= max_requests:
                    return
                count[0] += 1
                n = count[0]
            t = time.perf_counter()
            if rng.random() < upsert_share:
                code = call(port, "POST", "/documents", {"documents": [
                    {"id": f"bench-{seed}-{n}", "text": rng.choice(queries) + " (a new document)"}]}, key)
                bucket = lat_upsert
            else:
                code = call(port, "POST", "/search", {"queries": [rng.choice(queries)], "k": 10,
                                                      "with_documents": False})
                bucket = lat_search
            dt = time.perf_counter() - t
            with lock:
                (bucket if code == 200 else errors).append(dt if code == 200 else code)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    done = len(lat_search) + len(lat_upsert)
    return {"requests": done + len(errors), "seconds": round(wall, 1), "requests_per_s": round(done / wall, 2),
            "searches": len(lat_search), "upserts": len(lat_upsert), "errors": len(errors),
            "error_codes": sorted(set(errors))[:5], "search": percentiles(lat_search),
            "upsert": percentiles(lat_upsert)}


def concurrency(port: int, queries: list[str], clients: int, seconds: float, seed: int) -> dict:
    """``clients`` clients each looping one-query hybrid text searches for ``seconds``: what is answered (200),
    what is refused in time (503), latency percentiles of the answered ones."""
    ok, busy, other = [], [], []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(w: int) -> None:
        rng = random.Random(seed + w)
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            code = call(port, "POST", "/search", {"queries": [rng.choice(queries)], "k": 10, "with_documents": False})
            dt = time.perf_counter() - t
            with lock:
                (ok if code == 200 else busy if code == 503 else other).append(dt if code == 200 else code)
            if code == 503:
                time.sleep(1.0)  # Retry-After

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "seconds": round(wall, 1), "answered": len(ok), "answered_per_s": round(len(ok) / wall, 2),
            "refused_503": len(busy), "other_errors": len(other), "search": percentiles(ok),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def burst(port: int, queries: list[str], clients: int, client_timeout: float) -> dict:
    """``clients`` clients each send one hybrid text search (distinct queries) at the same instant: how many are
    answered (200), refused (503, and how fast), hung (no answer within ``client_timeout``), latency percentiles
    of the answered, and answered/s from the burst to the last answer."""
    rows: list[tuple[int, float, float]] = []  # (status, seconds to answer, time of answer)
    lock = threading.Lock()
    gate = threading.Barrier(clients + 1)

    def worker(w: int) -> None:
        gate.wait()
        t = time.perf_counter()
        code = call(port, "POST", "/search", {"queries": [queries[w % len(queries)]], "k": 10,
                                              "with_documents": False}, timeout=client_timeout)
        now = time.perf_counter()
        with lock:
            rows.append((code, now - t, now))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for th in threads:
        th.start()
    gate.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    ok = [r for r in rows if r[0] == 200]
    busy = [r for r in rows if r[0] == 503]
    hung = [r for r in rows if r[0] == -2]
    span = max((r[2] for r in ok), default=t0) - t0
    return {"clients": clients, "answered": len(ok), "refused_503": len(busy), "hung": len(hung),
            "other": sorted({r[0] for r in rows} - {200, 503, -2}),
            "answered_per_s": round(len(ok) / span, 2) if ok else 0.0, "last_answer_s": round(span, 2),
            "search": percentiles([r[1] for r in ok]),
            "refused_max_s": round(max((r[1] for r in busy), default=0.0), 3),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def capacity(index: Path, queries: list[str], max_batch_tokens: int) -> dict:
    """The same queries searched in-process with nothing else running: one at a time (``Searcher.search``), and
    encoded in passes of ``max_batch_tokens`` packed as the service packs them, each query then searched alone."""
    from hylex.retrieval import Searcher
    from hylex.service.batching import QueryBatcher

    s = Searcher(index, progress=False, encoding_cache=False)
    s.search(["warm up the model", "and the kernels"], k=10)
    t = time.perf_counter()
    for q in queries:
        s.search([q], k=10)
    one = len(queries) / (time.perf_counter() - t)
    from hylex.service.app import _token_counter

    enc = s.encoder
    prompt, text_cap = enc.row_tokens("query")  # packed by the service's own costing (hylex.service.app)
    cost = QueryBatcher(lambda texts: None, own_thread=False, max_batch_tokens=max_batch_tokens,
                        prompt_tokens=prompt, max_tokens=prompt + text_cap,
                        count_tokens=_token_counter(enc.tokenizer, prompt + text_cap))
    passes, cur, n = [], [], 0
    for q in queries:
        c = cost.text_tokens(q)
        if cur and n + c > max_batch_tokens:
            passes.append(cur)
            cur, n = [], 0
        cur.append(q)
        n += c
    passes.append(cur)
    t = time.perf_counter()
    for texts in passes:
        dense, sparse = enc.encode_queries(texts)
        for i, q in enumerate(texts):
            s.search(None, dense=dense[i:i + 1], sparse=sparse[i:i + 1], bm25_queries=[q], k=10)
    batched = len(queries) / (time.perf_counter() - t)
    s.index.close()
    return {"queries": len(queries), "one_at_a_time_per_s": round(one, 2), "batched_per_s": round(batched, 2),
            "passes": len(passes), "loadavg_1m": round(os.getloadavg()[0], 2)}


ONE_SHOT_QUERY = "parse a JSON string"
# The parts of one `hylex search IDX QUERY -k 3 --no-encoding-cache` run in-process (child of one_shot_phases).
PHASES_CHILD = r"""
import io, contextlib, json, sys, time
t0 = time.perf_counter()
parts = {}
def mark(name, t):
    parts[name] = parts.get(name, 0.0) + time.perf_counter() - t
t = time.perf_counter(); import hylex.cli as cli; mark("import hylex.cli (numpy)", t)
t = time.perf_counter(); import hylex.retrieval.searcher as S; mark("import searcher (scipy, faiss, lmdb...)", t)
t = time.perf_counter(); import hylex.engine.encoder as E; mark("import encoder (torch)", t)
def wrap(owner, name, label):
    fn = getattr(owner, name)
    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            mark(label, t)
    setattr(owner, name, timed)
wrap(E.Encoder, "__init__", "model + tokenizer load")
wrap(E.Encoder, "encode_queries", "query forward")
wrap(S.Searcher, "__init__", "open index")
for arm in ("dense", "sparse", "bm25"):
    wrap(S.Searcher, "search_" + arm, "arm " + arm)
wrap(S, "fuse_arms", "fusion")
with contextlib.redirect_stdout(io.StringIO()):
    t = time.perf_counter(); rc = cli.main(sys.argv[1:]); mark("main()", t)
parts["in-process total"] = time.perf_counter() - t0
print(json.dumps({"rc": rc, "parts": parts, "numba": "numba" in sys.modules, "modules": len(sys.modules)}))
"""


def one_shot_phases(index: Path, runs: int) -> dict:
    """Seconds per part of a one-shot hybrid search, in-process, median over ``runs`` fresh processes."""
    rows = []
    for _ in range(runs):
        p = subprocess.run([sys.executable, "-c", PHASES_CHILD, "search", str(index), ONE_SHOT_QUERY, "-k", "3",
                            "--no-encoding-cache"], check=True, capture_output=True, text=True)
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    names = list(rows[0]["parts"])
    return {"phase": "one-shot search (hybrid) parts", "runs": runs,
            "median_s": {n: round(statistics.median(r["parts"].get(n, 0.0) for r in rows), 4) for n in names},
            "numba_imported": any(r["numba"] for r in rows), "modules": rows[0]["modules"],
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def one_shot(index: Path, runs: int) -> list[dict]:
    """Wall time of one-shot commands in fresh processes (median of ``runs``)."""
    cmds = {"--version": ["--version"], "stats": ["stats", str(index)],
            "search (hybrid)": ["search", str(index), ONE_SHOT_QUERY, "-k", "3", "--no-encoding-cache"],
            "search (bm25)": ["search", str(index), ONE_SHOT_QUERY, "-k", "3", "--mode", "bm25"]}
    out = []
    for name, argv in cmds.items():
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "hylex", *argv], check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t)
        out.append({"phase": f"one-shot {name}", "runs": runs, "median_s": round(statistics.median(times), 2),
                    "min_s": round(min(times), 2), "max_s": round(max(times), 2),
                    "loadavg_1m": round(os.getloadavg()[0], 2)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default="benchmarks/.work/scifact-smollm2-135m-512",
                    help="an index to serve (copied first: the upserts change the copy)")
    ap.add_argument("--queries", default="../shared/data/beir/scifact/queries.jsonl")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-requests", type=int, default=5000)
    ap.add_argument("--upsert-share", type=float, default=0.05)
    ap.add_argument("--sequential", type=int, default=50, help="searches timed one by one (overhead)")
    ap.add_argument("--work", default="benchmarks/.work/service")
    ap.add_argument("--workers", default="1,2",
                    help="comma-separated worker counts to load with micro-batching on (batching off: 1 worker)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--concurrency", default=None,
                    help="comma-separated client counts (e.g. 16,64,200): only the back-pressure runs, each "
                         "--seconds long, one-query hybrid text searches, real model")
    ap.add_argument("--request-timeout", type=float, default=30.0, help="the server's --request-timeout")
    ap.add_argument("--burst", default=None,
                    help="comma-separated client counts (e.g. 16,64,200): only bursts, each client sending one "
                         "hybrid text search at the same instant to a freshly started server, after the capacity "
                         "measured in-process on the same queries")
    ap.add_argument("--client-timeout", type=float, default=60.0, help="with --burst: a request unanswered this "
                                                                       "long counts as hung")
    ap.add_argument("--max-batch-tokens", type=int, default=2048, help="the server's --max-batch-tokens")
    ap.add_argument("--server-code", default=None, metavar="DIR",
                    help="with --burst: also burst servers run from this checkout of hylex (PYTHONPATH=DIR), "
                         "each right after this one's, for a before/after in one sitting")
    ap.add_argument("--one-shot", type=int, default=0, metavar="RUNS",
                    help="only time one-shot commands (--version, stats, search) on --index, median of RUNS")
    ap.add_argument("--no-phases", action="store_true",
                    help="with --one-shot: skip the in-process parts of a one-shot hybrid search")
    args = ap.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]

    from hylex.corpus import read_queries
    from hylex.retrieval import Searcher

    sink = open(args.out, "a") if args.out else None

    def emit(row: dict) -> None:
        row = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cpus", **row}
        print(json.dumps(row), flush=True)
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()

    if args.one_shot:
        for row in one_shot(Path(args.index), args.one_shot):
            emit(row)
        if not args.no_phases:
            emit(one_shot_phases(Path(args.index), args.one_shot))
        return
    queries = list(read_queries(args.queries).values())
    random.Random(0).shuffle(queries)
    if args.burst:
        counts = [int(c) for c in args.burst.split(",")]
        work = Path(args.work)
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(args.index, work / "index", ignore=shutil.ignore_patterns(".lock", "runs"))
        cap = capacity(work / "index", queries[:max(counts)], args.max_batch_tokens)
        emit({"phase": "capacity (in-process)", **cap})
        for clients in counts:
            for code in [None] + ([args.server_code] if args.server_code else []):
                server = Server(work / "index", ["--no-encoding-cache", "--request-timeout",
                                                 str(args.request_timeout), "--max-batch-tokens",
                                                 str(args.max_batch_tokens)], "bench-key", code)
                try:
                    res = burst(server.port, queries, clients, args.client_timeout)
                    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/stats", timeout=60) as r:
                        svc = json.loads(r.read())["service"]
                    res["server"] = {k: svc.get(k) for k in ("refused", "timed_out", "encode_batches", "admission")}
                finally:
                    server.stop()
                best = max(cap["one_at_a_time_per_s"], cap["batched_per_s"])
                emit({"phase": "burst", "code": code or "this checkout", "request_timeout_s": args.request_timeout,
                      **res, "vs_capacity": round(res["answered_per_s"] / best, 3)})
        return
    if args.concurrency:
        work = Path(args.work)
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(args.index, work / "index", ignore=shutil.ignore_patterns(".lock", "runs"))
        server = Server(work / "index", ["--no-encoding-cache", "--request-timeout", str(args.request_timeout)],
                        "bench-key")
        try:
            for _ in range(3):
                call(server.port, "POST", "/search", {"queries": queries[:2]})  # warm-up: model, kernels
            for i, clients in enumerate(int(c) for c in args.concurrency.split(",")):
                res = concurrency(server.port, queries, clients, args.seconds, seed=100 * i)
                emit({"phase": "concurrency", "request_timeout_s": args.request_timeout, **res})
        finally:
            server.stop()
        return
    seq = queries[:args.sequential]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(args.index, work / "index", ignore=shutil.ignore_patterns(".lock", "runs"))
    key = "bench-key"

    s = Searcher(work / "index", progress=False, encoding_cache=False)
    s.search(seq[:2], k=10)  # load the model, compile the kernels
    lat = []
    for q in seq:
        t = time.perf_counter()
        s.search([q], k=10)
        lat.append(time.perf_counter() - t)
    inproc = percentiles(lat)
    emit({"phase": "in-process", "searches": len(seq), "search": inproc})
    s.index.close()
    del s

    runs = [(True, w) for w in worker_counts] + [(False, 1)]
    for batching, workers in runs:
        server = Server(work / "index", ["--no-encoding-cache", "--workers", str(workers)]
                        + ([] if batching else ["--no-batching"]), key)
        try:
            for _ in range(2 * workers):
                call(server.port, "POST", "/search", {"queries": seq[:2]})  # warm-up
            if batching and workers == 1:
                lat = []
                for q in seq:
                    t = time.perf_counter()
                    code = call(server.port, "POST", "/search", {"queries": [q], "k": 10, "with_documents": False})
                    lat.append(time.perf_counter() - t)
                    if code != 200:
                        raise RuntimeError(f"search failed with HTTP {code}")
                one = percentiles(lat)
                emit({"phase": "service, 1 client", "searches": len(seq), "search": one,
                      "overhead_vs_in_process_p50": round(one["p50_ms"] / inproc["p50_ms"], 3)})
            res = load(server.port, key, queries, args.clients, args.seconds, args.max_requests, args.upsert_share,
                       seed=(1 if batching else 2) + 10 * workers)
            emit({"phase": f"service, {args.clients} clients", "batching": batching, "workers": workers, **res})
        finally:
            server.stop()


if __name__ == "__main__":
    main()
