"""Fuzz `hylex serve` with Schemathesis: every check of the OpenAPI contract against a live server.

    python benchmarks/fuzz_service.py [--max-time 240] [--modes open,writes,all] [--out FILE.jsonl]

For each auth mode it builds a small index (200 synthetic documents) with a stub encoder (a deterministic hashing
bag-of-words: no model, so the run measures the HTTP layer, not the LLM), starts ``hylex serve --port 0 --encoder
fuzz_service:stub_encoder`` on loopback, and runs ``st run URL/openapi.json --checks all`` once per phase of
PHASES, each on one operation (or the reads, or the stateful links between them) with its share of
``--max-time``: left to itself Schemathesis spent most of its time on the cheap ``GET /documents`` (about 8
accepted searches in 150 s, issue 40), so ``POST /search`` gets most of the budget, in positive data first.
It then stops the server and prints one JSON line: requests sent and accepted (2xx) per route, server errors
(5xx), check failures (schema violations and the rest, by check), the statuses, per-phase durations. Modes:

* ``open``: no API key;
* ``writes``: ``--api-key-env`` with ``--auth writes`` (writes need ``X-API-Key``), the key sent;
* ``all``: ``--auth all`` (every route but /health needs it), the key sent.

Needs ``schemathesis`` (``pip install hylex[bench]``, 4.32.x). Nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DIM, VOCAB = 32, 1000
KEY = "fuzz-key-0123456789"
WORDS = ("star planet galaxy telescope recipe oven flour butter goal striker match league stock bond market "
         "doctor patient vaccine guitar melody concert python compiler database volcano magma rock seed soil "
         "boat sail harbor").split()


# The rules of POST /search that JSON Schema cannot state (as many dense as sparse queries, one weight per arm and
# not all 0, alpha only for a convex dense + sparse fusion) are in its description; a schema-valid body breaking
# one is answered 400 naming the rule, and one asking for more work than the service's limits (queries x k,
# explained hits: hylex/service/limits.py) 413: the positive-data check is told to accept those for that route only.
# A 413 (a batch over --max-batch, which the schema states as maxItems) is a refusal too: the negative-data check
# counts it as one (its defaults: the 4xx below without 413).
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

[[operations]]
include-path = "/search"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "413"]
"""

# (name, share of --max-time, Schemathesis filters, data mode, phases): every operation gets its own run, so the
# budget is spent where the work is, not where requests are cheapest
PHASES = (
    ("search+", 0.45, ["--include-name", "POST /search"], "positive",
     "examples,coverage,fuzzing"),
    ("search-", 0.12, ["--include-name", "POST /search"], "negative", "coverage,fuzzing"),
    ("documents+", 0.15, ["--include-name", "POST /documents"], "positive",
     "examples,coverage,fuzzing"),
    ("documents-", 0.06, ["--include-name", "POST /documents"], "negative",
     "coverage,fuzzing"),
    ("delete", 0.06, ["--include-name", "DELETE /documents"], "all",
     "examples,coverage,fuzzing"),
    ("reads", 0.08, ["--include-method", "GET"], "all", "examples,coverage,fuzzing"),
    ("stateful", 0.08, [], "all", "stateful"),
)


class StubEncoder:
    """A deterministic hashing bag-of-words encoder with hylex's ``TextEncoder`` interface (no model)."""

    dim, vocab_size = DIM, VOCAB

    def __init__(self) -> None:
        self.projection = np.random.default_rng(0).standard_normal((VOCAB, DIM)).astype(np.float32)

    def describe(self) -> dict:
        return {"model_id": "fuzz-stub", "fingerprint": "fuzz-stub-1", "dim": DIM, "vocab_size": VOCAB,
                "settings": {"hash": "crc32"}}

    def _encode(self, texts: Sequence[str]) -> tuple[np.ndarray, sp.csr_matrix]:
        indptr, cols, vals = [0], [], []
        for t in texts:
            counts: dict[int, int] = {}
            for w in re.findall(r"\w+", t.lower()):
                c = zlib.crc32(w.encode("utf-8", "replace")) % VOCAB
                counts[c] = counts.get(c, 0) + 1
            for c in sorted(counts):
                cols.append(c)
                vals.append(np.log1p(counts[c]))
            indptr.append(len(cols))
        sparse = sp.csr_matrix((np.asarray(vals, np.float32), np.asarray(cols, np.int32), np.asarray(indptr)),
                               shape=(len(texts), VOCAB), dtype=np.float32)
        dense = np.asarray(sparse @ self.projection, np.float32).reshape(len(texts), DIM)
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        dense = np.where(norms > 0, dense / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
        dense[norms[:, 0] == 0, 0] = 1.0
        return dense, sparse

    def encode_queries(self, texts: Sequence[str]) -> tuple[np.ndarray, sp.csr_matrix]:
        return self._encode(texts)

    def encode_documents(self, texts: Sequence[str]) -> tuple[np.ndarray, sp.csr_matrix]:
        return self._encode(texts)


def stub_encoder() -> StubEncoder:
    """``--encoder fuzz_service:stub_encoder``."""
    return StubEncoder()


def build(path: Path, n: int = 200) -> None:
    from hylex.corpus import Document
    from hylex.indexing import build_index

    rng = np.random.default_rng(0)
    docs = [Document(id=f"d{i:04d}", title=f"note {i}", text=" ".join(rng.choice(WORDS, 8)),
                     metadata={"topic": WORDS[i % 6], "n": i}) for i in range(n)]
    build_index(docs, path, StubEncoder(), progress=False)


def start_server(index: Path, mode: str, log) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HYLEX_FUZZ_KEY": KEY}
    cmd = [sys.executable, "-m", "hylex.cli", "serve", str(index), "--host", "127.0.0.1", "--port", "0",
           "--encoder", "fuzz_service:stub_encoder", "--max-body-mb", "1", "--max-batch", "64",
           "--threads", "1"]
    if mode != "open":
        cmd += ["--api-key-env", "HYLEX_FUZZ_KEY", "--auth", mode]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"at (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"hylex serve did not start (exit {proc.poll()}): see its log")


def run_mode(mode: str, max_time: int, workdir: Path, seed: int) -> dict:
    index = workdir / f"index-{mode}"
    build(index)
    report = workdir / f"report-{mode}"
    phases: dict[str, dict] = {}
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    t0 = time.monotonic()
    with open(workdir / f"serve-{mode}.log", "w") as log:
        proc, url = start_server(index, mode, log)
        try:
            for name, share, filters, data, which in PHASES:
                budget = max(5, int(round(max_time * share)))
                cmd = ["st", "--config-file", str(config), "run", f"{url}/openapi.json", "--checks", "all",
                       "--mode", data, "--phases", which, *filters, "--max-time", str(budget),
                       "--max-examples", "100000", "--workers", "1", "--seed", str(seed),
                       "--request-timeout", "30", "--report", "ndjson", "--report-dir", str(report / name),
                       "--no-color", "--generation-database", "none", "--suppress-health-check", "all"]
                if mode != "open":
                    cmd += ["-H", f"X-API-Key: {KEY}"]
                t = time.monotonic()
                st = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 240)
                phases[name] = {"seconds": round(time.monotonic() - t, 1), "st_exit": st.returncode,
                                "summary": ((st.stdout or "").strip().splitlines()[-1:] or [""])[0][:160]}
                (workdir / f"st-{mode}-{name}.txt").write_text(st.stdout + st.stderr)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return summarize(mode, report, phases, time.monotonic() - t0)


def _route(method: str, path: str) -> str:
    """``METHOD /route`` with the path parameter of ``/documents/{doc_id}`` folded."""
    if path.startswith("/documents/"):
        path = "/documents/{doc_id}"
    return f"{method} {path}"


def summarize(mode: str, report: Path, phases: dict[str, dict], duration: float) -> dict:
    """Counts from Schemathesis's ndjson events: requests and accepted (2xx) ones per route, 5xx answers, failed
    checks by name."""
    requests = server_errors = positive = 0
    positive_400: dict[str, int] = {}
    statuses: dict[str, int] = {}
    by_route: dict[str, int] = {}
    accepted: dict[str, int] = {}
    failures: dict[str, int] = {}
    examples: list[str] = []
    for path in sorted(report.glob("**/*.ndjson")):
        for line in path.read_text().splitlines():
            ev = json.loads(line)
            for key, body in ev.items():
                if key != "ScenarioFinished":
                    continue
                rec = body.get("recorder") or {}
                for cid, case in rec.get("interactions", {}).items():
                    resp = case.get("response")
                    if resp is None:
                        continue
                    requests += 1
                    code = resp.get("status_code")
                    statuses[str(code)] = statuses.get(str(code), 0) + 1
                    server_errors += code is not None and code >= 500
                    what = _route(case["request"]["method"], urlsplit(case["request"]["uri"]).path)
                    by_route[what] = by_route.get(what, 0) + 1
                    if code is not None and 200 <= code < 300:
                        accepted[what] = accepted.get(what, 0) + 1
                    meta = ((rec.get("cases", {}).get(cid) or {}).get("value") or {}).get("meta") or {}
                    if (meta.get("generation") or {}).get("mode") == "positive":
                        positive += 1
                        if code == 400:  # a cross-field rule the schema cannot state (tolerated on /search only)
                            positive_400[what] = positive_400.get(what, 0) + 1
                for checks in (body.get("recorder") or {}).get("checks", {}).values():
                    for c in checks:
                        if str(c.get("status", "")).lower() == "failure":
                            name = c.get("name", "?")
                            failures[name] = failures.get(name, 0) + 1
                            if len(examples) < 5:
                                failure = c.get("failure_info") or {}
                                examples.append(f"{name}: {str(failure)[:300]}")
    # a phase Schemathesis could not run (e.g. "Failed to generate test cases": a schema it cannot draw from)
    # reports no failure, only an error and few requests: counted apart, and as a bad run
    st_errors = [name for name, ph in phases.items() if re.search(r"\d+ errors? in ", ph["summary"])]
    return {"bench": "fuzz_service", "mode": mode, "schemathesis": _st_version(), "requests": requests,
            "accepted": dict(sorted(accepted.items())), "requests_by_route": dict(sorted(by_route.items())),
            "server_errors": server_errors, "check_failures": sum(failures.values()), "failures": failures,
            "st_errors": st_errors,
            "positive_requests": positive, "positive_400": positive_400,
            "statuses": dict(sorted(statuses.items())), "duration_s": round(duration, 1), "phases": phases,
            "examples": examples}


def _st_version() -> str:
    try:
        from importlib.metadata import version

        return version("schemathesis")
    except Exception:  # noqa: BLE001 (reporting only)
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-time", type=int, default=240,
                   help="seconds of fuzzing per mode, shared among the phases (PHASES) [240]")
    p.add_argument("--modes", default="open,writes,all", help="comma-separated: open, writes, all")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--out", default=str(HERE / "results" / "fuzz_service.jsonl"))
    p.add_argument("--keep", action="store_true", help="keep the work folder (reports, server logs)")
    args = p.parse_args(argv)
    if shutil.which("st") is None:
        print("fuzz_service: schemathesis is not installed: pip install 'schemathesis>=4.32,<4.33'", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="hylex-fuzz-"))
    bad = 0
    try:
        for mode in args.modes.split(","):
            row = run_mode(mode.strip(), args.max_time, workdir, args.seed)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            bad += row["server_errors"] + row["check_failures"] + len(row["st_errors"])
    finally:
        if args.keep:
            print(f"work folder: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
