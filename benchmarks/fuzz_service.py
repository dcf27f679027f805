"""Fuzz `hylex serve` with Schemathesis: every check of the OpenAPI contract against a live server.

    python benchmarks/fuzz_service.py [--max-time 60] [--modes open,writes,all] [--out FILE.jsonl]

For each auth mode it builds a small index (200 synthetic documents) with a stub encoder (a deterministic hashing
bag-of-words: no model, so the run measures the HTTP layer, not the LLM), starts ``hylex serve --port 0 --encoder
fuzz_service:stub_encoder`` on loopback, runs ``st run URL/openapi.json --checks all`` (positive and negative
data, every phase, bounded by ``--max-time``), stops the server and prints one JSON line: requests sent, server
errors (5xx), check failures (schema violations and the rest, by check), the duration. Modes:

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
# one is answered 400 naming the rule, which the positive-data check is told to accept for that route only.
CONFIG = """
[[operations]]
include-path = "/search"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404"]
"""


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
    with open(workdir / f"serve-{mode}.log", "w") as log:
        proc, url = start_server(index, mode, log)
        try:
            config = workdir / "schemathesis.toml"
            config.write_text(CONFIG)
            cmd = ["st", "--config-file", str(config), "run", f"{url}/openapi.json", "--checks", "all",
                   "--mode", "all", "--max-time", str(max_time), "--workers", "1", "--seed", str(seed),
                   "--request-timeout", "30",
                   "--report", "ndjson", "--report-dir", str(report), "--no-color",
                   "--generation-database", "none", "--suppress-health-check", "all"]
            if mode != "open":
                cmd += ["-H", f"X-API-Key: {KEY}"]
            t0 = time.monotonic()
            st = subprocess.run(cmd, capture_output=True, text=True, timeout=max_time + 240)
            duration = time.monotonic() - t0
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    (workdir / f"st-{mode}.txt").write_text(st.stdout + st.stderr)
    return summarize(mode, report, st, duration)


def summarize(mode: str, report: Path, st: subprocess.CompletedProcess, duration: float) -> dict:
    """Counts from Schemathesis's ndjson events: requests, 5xx answers, failed checks by name."""
    requests = server_errors = positive = 0
    positive_400: dict[str, int] = {}
    statuses: dict[str, int] = {}
    failures: dict[str, int] = {}
    examples: list[str] = []
    for path in report.glob("*.ndjson"):
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
                    meta = ((rec.get("cases", {}).get(cid) or {}).get("value") or {}).get("meta") or {}
                    if (meta.get("generation") or {}).get("mode") == "positive":
                        positive += 1
                        if code == 400:  # a cross-field rule the schema cannot state (tolerated on /search only)
                            what = f"{case['request']['method']} {urlsplit(case['request']['uri']).path}"
                            positive_400[what] = positive_400.get(what, 0) + 1
                for checks in (body.get("recorder") or {}).get("checks", {}).values():
                    for c in checks:
                        if str(c.get("status", "")).lower() == "failure":
                            name = c.get("name", "?")
                            failures[name] = failures.get(name, 0) + 1
                            if len(examples) < 5:
                                failure = c.get("failure_info") or {}
                                examples.append(f"{name}: {str(failure)[:300]}")
    tail = (st.stdout or "").strip().splitlines()[-1:] or [""]
    return {"bench": "fuzz_service", "mode": mode, "schemathesis": _st_version(), "requests": requests,
            "server_errors": server_errors, "check_failures": sum(failures.values()), "failures": failures,
            "positive_requests": positive, "positive_400": positive_400,
            "statuses": dict(sorted(statuses.items())), "duration_s": round(duration, 1),
            "st_exit": st.returncode, "summary": tail[0][:200], "examples": examples}


def _st_version() -> str:
    try:
        from importlib.metadata import version

        return version("schemathesis")
    except Exception:  # noqa: BLE001 (reporting only)
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-time", type=int, default=60, help="seconds of fuzzing per mode")
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
            bad += row["server_errors"] + row["check_failures"]
    finally:
        if args.keep:
            print(f"work folder: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
