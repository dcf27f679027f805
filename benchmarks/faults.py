"""Fault trials: a full disk, damaged and missing storage, malformed manifests, kill -9, and what hylex answers.

Every trial runs the real command line (``python -m hylex``) in a child process, so a crash (a signal, a
traceback) is seen and cannot take the script down. The encoder is ``fuzz_service.py``'s stub (a hashing
bag-of-words: no model), except for the kill trials, which are ``crash.py``'s (a tiny random Llama). Kinds:

* ``disk_full_index``: ``hylex index`` into a small tmpfs that fills up: one line "no space left on ...", exit 2,
  the index valid and holding exactly what was acknowledged; after the disk grows, ``--resume`` completes it;
* ``disk_full_service``: ``hylex serve`` on an index on a tmpfs filled to a few hundred KB; batches upserted
  until writes fail: every 200 stored whole, every 507/503 a JSON ``{"error"}`` and stored not at all (automatic
  merges are on, factor 2: their failures after the commit point must not turn a committed batch into an error);
  with space again, writes succeed and the index validates;
* ``segment_byte_flip``: one byte flipped at a random offset (half of them in the first 128 bytes: the headers)
  of each segment file type in turn: ``hylex validate`` exits 1 naming the file, ``hylex search`` refuses in one
  line; never a traceback or a signal;
* ``docs_bit_flip``: one bit flipped anywhere in docs.lmdb's data.mdb: validate exits 1, or 0 only if a child
  process reading every record and id finds nothing changed; search and get return only the documents' true
  texts, or refuse in one line;
* ``truncated_data_mdb``: data.mdb cut at a random length: validate, search and serve each end with one line, no
  signal (was SIGBUS);
* ``deleted_docs_lmdb``: docs.lmdb, or its data.mdb, or only its lock.mdb removed: refused in one line (search,
  stats, serve; validate exits 1), except a removed lock.mdb, which LMDB makes again;
* ``malformed_manifest``: one field of the manifest deleted or given a value of another type or sign: stats,
  search, get and validate each succeed or fail in one line, never a traceback;
* ``kill_during_index``: ``crash.py``'s trials (SIGKILL during ``hylex index``, then ``--resume``).

The disk-full kinds need root to mount a tmpfs; without it they are reported as skipped. One JSON line per kind:
tried, passed, skipped, the first failures; ``--verbose`` prints each trial.

    python benchmarks/faults.py [--trials 5] [--kinds disk_full_index,...] [--quick] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORDS = ("star planet galaxy telescope recipe oven flour butter goal striker match league stock bond market doctor "
         "patient vaccine guitar melody concert python compiler database volcano magma rock seed soil boat sail "
         "harbor").split()
KINDS = ("disk_full_index", "disk_full_service", "segment_byte_flip", "docs_bit_flip", "truncated_data_mdb",
         "deleted_docs_lmdb", "malformed_manifest", "kill_during_index")
STUB = ["--encoder", "fuzz_service:stub_encoder"]


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Ran:
    rc: int
    out: str
    err: str

    @property
    def signal(self) -> bool:  # killed by a signal (SIGBUS, SIGSEGV): the crash these trials look for
        return self.rc < 0

    @property
    def clean(self) -> bool:
        return not self.signal and "Traceback" not in self.err

    def one_line(self, rc: int = 2, *needles: str) -> bool:
        """Exit ``rc`` with exactly one stderr line, ``hylex: error: ...``, holding every needle."""
        lines = self.err.strip().splitlines()
        return self.clean and self.rc == rc and len(lines) == 1 and lines[0].startswith("hylex: error: ") and \
            all(n in lines[0] for n in needles)

    def validate_lines(self) -> bool:
        """``hylex validate``'s stderr: problem/note lines and the closing error line only."""
        return self.clean and all(x.startswith(("problem: ", "note: ", "hylex: error: "))
                                  for x in self.err.strip().splitlines())

    def brief(self) -> str:
        return f"rc {self.rc}: {(self.err.strip().splitlines() or [''])[-1][:200]}"


def hylex(*argv, timeout: float = 300) -> Ran:
    try:
        p = subprocess.run([sys.executable, "-m", "hylex", "--no-progress", *map(str, argv)], capture_output=True,
                           text=True, env=child_env(), timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return Ran(-999, str(e.stdout or ""), f"timed out after {timeout} s")
    return Ran(p.returncode, p.stdout, p.stderr)


def write_corpus(path: Path, n: int, rng: random.Random, words: tuple[int, int] = (8, 30), prefix: str = "d") -> dict:
    """A JSONL corpus of ``n`` documents; returns id -> text."""
    texts = {}
    with open(path, "w") as f:
        for i in range(n):
            doc_id = f"{prefix}{i:05d}"
            texts[doc_id] = " ".join(rng.choices(WORDS, k=rng.randint(*words)))
            f.write(json.dumps({"_id": doc_id, "title": f"note {i}", "text": texts[doc_id],
                                "metadata": {"topic": WORDS[i % 6], "i": i}}) + "\n")
    return texts


def n_docs(index: Path) -> int | None:
    r = hylex("stats", index, "--json")
    return json.loads(r.out)["documents"] if r.rc == 0 else None


def acknowledged(out: str) -> int:
    return max((int(m.group(1)) for m in re.finditer(r"^committed (\d+) documents", out, re.MULTILINE)), default=0)


# -- a small file system that fills up ---------------------------------------------------------------------------
class Tmpfs:
    """A tmpfs mounted at ``where`` (root only); ``grow`` remounts it larger (the user freeing space)."""

    def __init__(self, where: Path, size: str):
        self.where = where
        where.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                           text=True)
        self.mounted = r.returncode == 0
        self.why = r.stderr.strip()

    def grow(self, size: str = "256m") -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.where)], check=True)

    def free(self) -> int:
        st = os.statvfs(self.where)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.where)], capture_output=True)
            self.mounted = False


def can_mount(workdir: Path) -> tuple[bool, str]:
    fs = Tmpfs(workdir / "probe-fs", "1m")
    ok, why = fs.mounted, fs.why
    fs.close()
    return ok, why


# -- the kinds ---------------------------------------------------------------------------------------------------
def trial_disk_full_index(rng: random.Random, work: Path, n: int) -> dict:
    corpus = work / "corpus.jsonl"
    texts = write_corpus(corpus, n, rng, words=(40, 160))
    size_kb = rng.randint(n * 2 // 5, n * 3 // 2)  # ~2 KB per document: it fills after 20-75% of the corpus
    seg = rng.choice([150, 250, 400])
    fs = Tmpfs(work / "fs", f"{size_kb}k")
    try:
        ix = fs.where / "ix"
        r = hylex("index", corpus, "--index", ix, *STUB, "--segment-size", seg, "--chunk-size", seg,
                  "--merge-factor", rng.choice([2, 10]))
        acked = acknowledged(r.out)
        rec = {"tmpfs_kb": size_kb, "segment_size": seg, "acknowledged": acked, "answer": r.brief()}
        refused = r.one_line(2, "no space left on")
        if (ix / "manifest.json").exists():
            v = hylex("validate", ix)
            held = n_docs(ix)
            rec.update(valid=v.rc == 0, held=held)
            consistent = v.rc == 0 and held == acked and "rerun with --resume" in r.err
        else:  # nothing committed: the new index is removed and the line says so
            rec.update(valid=None, held=0)
            consistent = acked == 0 and "nothing was committed" in r.err
        fs.grow()
        r2 = hylex("index", corpus, "--index", ix, *STUB, "--segment-size", 1000, "--chunk-size", 500,
                   *(["--resume"] if (ix / "manifest.json").exists() else []))
        v2 = hylex("validate", ix)
        rec["resumed"] = r2.rc == 0 and v2.rc == 0 and n_docs(ix) == len(texts)
        rec["ok"] = bool(refused and consistent and rec["resumed"])
        return rec
    finally:
        fs.close()


def _call(url: str, method: str, path: str, body=None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode("utf-8", "replace")[:200]


def _stored(url: str, batch: list[dict]) -> list[bool]:
    """Whether each document of ``batch`` is stored with its text."""
    out = []
    for d in batch:
        code, got = _call(url, "GET", "/documents?id=" + urllib.request.quote(d["id"]))
        out.append(code == 200 and isinstance(got, dict) and got.get("text") == d["text"])
    return out


def trial_disk_full_service(rng: random.Random, work: Path, n: int) -> dict:
    sys.path.insert(0, str(HERE))
    import fuzz_service

    fs = Tmpfs(work / "fs", "16m")
    proc = None
    try:
        ix = fs.where / "ix"
        corpus = work / "base.jsonl"
        write_corpus(corpus, 100, rng)
        r = hylex("index", corpus, "--index", ix, *STUB, "--segment-size", 25, "--merge-factor", 2)
        if r.rc != 0:
            return {"ok": False, "setup": r.brief()}
        leave = rng.randint(150, 900) * 1024
        with open(fs.where / "filler", "wb") as f:
            f.write(b"\0" * max(0, fs.free() - leave))
        with open(work / "serve.log", "w") as log:
            proc, url = fuzz_service.start_server(ix, "open", log)
        answers, wrong, batches = {}, [], 0
        failures_in_a_row = 0
        while batches < 60 and failures_in_a_row < 3:
            batch = [{"id": f"b{batches:03d}-{i:02d}", "text": " ".join(rng.choices(WORDS, k=rng.randint(60, 200)))}
                     for i in range(rng.choice([8, 16, 32]))]
            code, body = _call(url, "POST", "/documents", {"documents": batch})
            answers[str(code)] = answers.get(str(code), 0) + 1
            stored = _stored(url, batch)
            if code == 200:
                failures_in_a_row = 0
                if not all(stored):
                    wrong.append(f"batch {batches}: 200 but {stored.count(False)} of {len(batch)} not stored")
            elif code in (503, 507) and isinstance(body, dict) and "error" in body:
                failures_in_a_row += 1
                if any(stored):
                    wrong.append(f"batch {batches}: {code} but {stored.count(True)} of {len(batch)} stored")
            else:
                failures_in_a_row += 1
                wrong.append(f"batch {batches}: {code} {str(body)[:120]}")
            batches += 1
        (fs.where / "filler").unlink()  # space again: writes succeed, and the merges that failed catch up
        batch = [{"id": f"after-{i}", "text": "star galaxy telescope"} for i in range(8)]
        code, _ = _call(url, "POST", "/documents", {"documents": batch})
        recovered = code == 200 and all(_stored(url, batch))
        proc.terminate()
        proc.wait(60)
        proc = None
        v = hylex("validate", ix)
        rec = {"left_kb": leave // 1024, "batches": batches, "answers": answers, "wrong": wrong[:3],
               "recovered": recovered, "valid": v.rc == 0}
        rec["ok"] = not wrong and recovered and v.rc == 0 and any(k in answers for k in ("503", "507"))
        return rec
    finally:
        if proc is not None:
            proc.kill()
        fs.close()


class Base:
    """A small index (two segments, tombstones in the first: every segment file type of a Flat index) and the
    truth to compare with: each document's text, and a digest of every record and id of the store."""

    def __init__(self, work: Path, rng: random.Random):
        work.mkdir(parents=True, exist_ok=True)
        self.path = work / "base"
        corpus = work / "base.jsonl"
        self.texts = write_corpus(corpus, 60, rng)
        r = hylex("index", corpus, "--index", self.path, *STUB, "--segment-size", 30, "--no-auto-merge")
        assert r.rc == 0, r.err
        gone = ["d00001", "d00003", "d00040"]
        assert hylex("delete", self.path, "--ids", ",".join(gone)).rc == 0
        for g in gone:
            self.texts.pop(g)
        self.files = sorted(f.name for f in (self.path / "segments" / "seg-000000").iterdir())
        self.digest = store_digest(self.path)
        assert self.digest is not None

    def copy(self, dst: Path) -> Path:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(self.path, dst, ignore=shutil.ignore_patterns(".lock", "readers"))
        return dst


_DIGEST = """
import hashlib, lmdb, sys
env = lmdb.open(sys.argv[1], readonly=True, lock=False, max_dbs=2, subdir=True)
h = hashlib.sha256()
for name in (b"docs", b"ids"):
    db = env.open_db(name, create=False)
    with env.begin(db=db) as txn:
        for k, v in txn.cursor():
            h.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v)
print(h.hexdigest())
"""


def store_digest(index: Path) -> str | None:
    """A digest of every record and id the store holds, read in a child (a damaged page may crash LMDB): None when
    it cannot be read."""
    p = subprocess.run([sys.executable, "-c", _DIGEST, str(index / "docs.lmdb")], capture_output=True, text=True,
                       timeout=60)
    return p.stdout.strip() if p.returncode == 0 else None


def trial_segment_byte_flip(rng: random.Random, work: Path, base: Base, fname: str) -> dict:
    ix = base.copy(work / "ix")
    f = ix / "segments" / "seg-000000" / fname
    data = bytearray(f.read_bytes())
    offset = rng.randrange(min(len(data), 128)) if rng.random() < 0.5 else rng.randrange(len(data))
    data[offset] ^= rng.randrange(1, 256)
    f.write_bytes(bytes(data))
    v = hylex("validate", ix)
    s = hylex("search", ix, "star galaxy", "--mode", "bm25", "--json")
    named = f"segment seg-000000: file {fname} is damaged" in v.err
    rec = {"file": fname, "offset": offset, "validate": v.brief(), "search": s.brief()}
    rec["ok"] = v.rc == 1 and v.validate_lines() and named and s.one_line(2, fname)
    return rec


def _texts_true(ran: Ran, truth: dict, key: str) -> bool:
    """Every document ``ran`` printed (search --json hits, or get's JSON lines) has its true text."""
    try:
        if key == "search":
            docs = [h for q in json.loads(ran.out) for h in q["hits"]]
        else:
            docs = [json.loads(x) for x in ran.out.splitlines() if x.strip()]
    except (ValueError, KeyError, TypeError):
        return False
    return all(truth.get(d.get("id")) == d.get("text") for d in docs)


def trial_docs_bit_flip(rng: random.Random, work: Path, base: Base) -> dict:
    ix = base.copy(work / "ix")
    f = ix / "docs.lmdb" / "data.mdb"
    data = bytearray(f.read_bytes())
    offset, bit = rng.randrange(len(data)), rng.randrange(8)
    if rng.random() < 0.5:  # half the flips near a live record (its key, node header, JSON), not in free pages
        text = json.dumps(base.texts[rng.choice(sorted(base.texts))]).encode()
        spots = [m.start() for m in re.finditer(re.escape(text), bytes(data))]
        if spots:
            offset = min(len(data) - 1, max(0, rng.choice(spots) + rng.randrange(-96, len(text))))
    data[offset] ^= 1 << bit
    f.write_bytes(bytes(data))
    changed = store_digest(ix) != base.digest
    v = hylex("validate", ix)
    queries = [" ".join(rng.sample(WORDS, 3)) for _ in range(3)]
    s = hylex("search", ix, *queries, "--mode", "bm25", "--json", "-k", 100)
    ids = rng.sample(sorted(base.texts), 5)
    g = hylex("get", ix, *ids)
    rec = {"offset": offset, "page": offset // 4096, "changed": changed, "validate": v.brief(), "search": s.brief(),
           "get": g.brief()}
    valid_ok = v.validate_lines() and (v.rc == 1 or (v.rc == 0 and not changed))
    search_ok = (s.rc == 0 and _texts_true(s, base.texts, "search")) or s.one_line(2)
    # get: the true texts, or refused in one line; "not in the index" only where the store was found changed
    get_ok = (g.rc == 0 and _texts_true(g, base.texts, "get")) or g.one_line(2) or \
        (g.rc == 1 and changed and v.rc == 1 and g.clean and _texts_true(g, base.texts, "get"))
    rec["ok"] = bool(valid_ok and search_ok and get_ok)
    return rec


def _serve_refuses(ix: Path, *needles: str) -> tuple[bool, str]:
    """``hylex serve`` on ``ix`` exits in one line instead of starting."""
    p = subprocess.Popen([sys.executable, "-m", "hylex", "serve", str(ix), "--port", "0", *STUB, "--threads", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        out, err = p.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return False, "started (still running after 90 s)"
    r = Ran(p.returncode, out, err)
    return r.one_line(2, *needles), r.brief()


def trial_truncated_data_mdb(rng: random.Random, work: Path, base: Base) -> dict:
    ix = base.copy(work / "ix")
    f = ix / "docs.lmdb" / "data.mdb"
    size = f.stat().st_size
    cut = rng.choice([0, rng.randrange(1, 8192), rng.randrange(8192, size)])
    os.truncate(f, cut)
    v = hylex("validate", ix)
    s = hylex("search", ix, "star", "--mode", "bm25")
    served, why = _serve_refuses(ix, "data.mdb")
    rec = {"cut_to": cut, "of": size, "validate": v.brief(), "search": s.brief(), "serve": why}
    rec["ok"] = v.rc == 1 and v.validate_lines() and "data.mdb" in v.err and s.one_line(2, "data.mdb") and served
    return rec


def trial_deleted_docs_lmdb(rng: random.Random, work: Path, base: Base, what: str) -> dict:
    ix = base.copy(work / "ix")
    store = ix / "docs.lmdb"
    if what == "directory":
        shutil.rmtree(store)
    else:
        (store / what).unlink()
    s = hylex("search", ix, "star galaxy", "--mode", "bm25", "--json")
    st = hylex("stats", ix)
    v = hylex("validate", ix)
    rec = {"removed": what, "search": s.brief(), "stats": st.brief(), "validate": v.brief()}
    if what == "lock.mdb":  # LMDB's lock file only: made again, nothing lost
        rec["ok"] = s.rc == 0 and _texts_true(s, base.texts, "search") and st.rc == 0 and v.rc == 0
        return rec
    served, why = _serve_refuses(ix, "missing")
    rec["serve"] = why
    rec["ok"] = s.one_line(2, "missing") and st.one_line(2, "missing") and v.rc == 1 and v.validate_lines() and \
        served and not (store / "data.mdb").exists()
    return rec


def _paths(obj, prefix=()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _mutation(rng: random.Random, value):
    """A deletion, or a value of another type or sign than ``value``."""
    pick = rng.choice(["delete", None, "many", -1, 1.5, True, [], {}, 10 ** 30, ""])
    return "delete" if pick == value and type(pick) is type(value) else pick


def trial_malformed_manifest(rng: random.Random, work: Path, base: Base) -> dict:
    ix = base.copy(work / "ix")
    mf = ix / "manifest.json"
    m = json.loads(mf.read_text())
    path = rng.choice(_paths(m))
    parent = m
    for key in path[:-1]:
        parent = parent[key]
    new = _mutation(rng, parent[path[-1]])
    if new == "delete":
        parent.pop(path[-1])
    else:
        parent[path[-1]] = new
    mf.write_text(json.dumps(m))
    runs = {"stats": hylex("stats", ix), "search": hylex("search", ix, "star galaxy", "--mode", "bm25", "--json"),
            "get": hylex("get", ix, "d00002")}
    v = hylex("validate", ix)
    rec = {"field": ".".join(map(str, path)), "to": "deleted" if new == "delete" else repr(new)[:30],
           **{k: r.brief() for k, r in runs.items()}, "validate": v.brief()}
    ok = all(r.rc == 0 and r.clean or r.one_line(2) or (k == "get" and r.rc == 1 and r.clean)
             for k, r in runs.items())
    if runs["search"].rc == 0 and not _texts_true(runs["search"], base.texts, "search"):
        ok = ok and v.rc == 1  # a changed row layout may show other documents: validate must say so
    rec["refused"] = sum(r.rc != 0 for r in runs.values())
    rec["ok"] = bool(ok and v.validate_lines() and v.rc in (0, 1))
    return rec


def trials_kill_during_index(trials: int, work: Path, seed: int, log) -> list[dict]:
    sys.path.insert(0, str(HERE))
    os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]
    import crash

    recs = crash.run_trials(trials, work, n_docs=48, seed=seed, log=lambda _: None)
    return [{**r, "ok": bool(r["ok"] and r["resumed"])} for r in recs]


# -- the run -----------------------------------------------------------------------------------------------------
def run(kinds: list[str], trials: int, workdir: Path, seed: int, quick: bool, log, verbose: bool) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    mountable, why = can_mount(workdir)
    base = None
    for kind in kinds:
        t0 = time.monotonic()
        work = workdir / kind
        work.mkdir(parents=True, exist_ok=True)
        recs: list[dict] = []
        skipped = None
        if kind.startswith("disk_full") and not mountable:
            skipped = f"cannot mount a tmpfs ({why or 'not root'}): run as root to fill a disk for real"
        elif kind == "disk_full_index":
            recs = [trial_disk_full_index(rng, work, 800 if quick else 3000) for _ in range(trials)]
        elif kind == "disk_full_service":
            recs = [trial_disk_full_service(rng, work, 0) for _ in range(trials)]
        elif kind == "kill_during_index":
            recs = trials_kill_during_index(trials, work, seed, log)
        else:
            base = base or Base(workdir / "base-work", rng)
            if kind == "segment_byte_flip":
                files = base.files if not quick else ["dense.faiss", "impact_docs.npy", "bm25_terms.npy",
                                                      "impact_meta.json"]
                recs = [trial_segment_byte_flip(rng, work, base, f) for f in files for _ in range(trials)]
            elif kind == "docs_bit_flip":
                recs = [trial_docs_bit_flip(rng, work, base) for _ in range(trials * (1 if quick else 10))]
            elif kind == "truncated_data_mdb":
                recs = [trial_truncated_data_mdb(rng, work, base) for _ in range(trials)]
            elif kind == "deleted_docs_lmdb":
                whats = ["directory", "data.mdb", "lock.mdb"]
                recs = [trial_deleted_docs_lmdb(rng, work, base, whats[i % 3]) for i in range(max(trials, 3))]
            elif kind == "malformed_manifest":
                recs = [trial_malformed_manifest(rng, work, base) for _ in range(trials * (1 if quick else 4))]
        if verbose:
            for r in recs:
                log(json.dumps({"kind": kind, **r}, default=str))
        row = {"bench": "faults", "kind": kind, "tried": len(recs), "passed": sum(bool(r["ok"]) for r in recs),
               "seconds": round(time.monotonic() - t0, 1)}
        if skipped:
            row["skipped"] = skipped
        if kind == "segment_byte_flip":
            row["files"] = len({r["file"] for r in recs})
        if kind == "docs_bit_flip":
            row["changed_nothing"] = sum(not r["changed"] for r in recs)
        if kind == "malformed_manifest":
            row["refused"] = sum(r["refused"] > 0 for r in recs)
        if kind == "disk_full_service":
            row["answers"] = {}
            for r in recs:
                for code, c in r.get("answers", {}).items():
                    row["answers"][code] = row["answers"].get(code, 0) + c
        row["failures"] = [r for r in recs if not r["ok"]][:3]
        rows.append(row)
        log(json.dumps(row, default=str))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=5, help="trials per kind (per file type for segment_byte_flip)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    ap.add_argument("--quick", action="store_true", help="smaller corpora, fewer file types (the test's mode)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    ap.add_argument("--verbose", action="store_true", help="print each trial's line too")
    args = ap.parse_args(argv)
    os.environ.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")  # children share the machine one core each
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown kind(s) {', '.join(unknown)}: use {', '.join(KINDS)}")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hylex-faults-"))
    out = open(args.out, "a") if args.out else None

    def log(line: str) -> None:
        print(line, flush=True)
        if out is not None and '"bench": "faults"' in line:
            out.write(line + "\n")
            out.flush()
    try:
        rows = run(kinds, args.trials, workdir, args.seed, args.quick, log, args.verbose)
    finally:
        if out is not None:
            out.close()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r["passed"] == r["tried"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
