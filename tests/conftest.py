"""Shared fixtures: a deterministic fake encoder (no LLM), synthetic corpora, JSONL writers and small indexes."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
import zlib
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pytest
import scipy.sparse as sp

from hylex.corpus import Document

FAKE_DIM = 32
FAKE_VOCAB = 1000


class FakeEncoded(NamedTuple):
    """Same shape as ``hylex.engine.Encoded``: a tuple ``(dense, sparse)`` with named fields."""

    dense: np.ndarray
    sparse: sp.csr_matrix


class FakeEncoder:
    """A deterministic hashing bag-of-words encoder implementing ``hylex.indexing.TextEncoder``.

    sparse: csr (n, vocab_size) with ``log1p(count)`` at ``crc32(word) % vocab_size`` (crc32, not ``hash``:
    Python's string hash changes between processes); dense: the sparse row times a seeded Gaussian matrix,
    L2-normalised (dim ``dim``). Queries and documents are encoded alike. No ``stats`` attribute.
    """

    def __init__(self, dim: int = FAKE_DIM, vocab_size: int = FAKE_VOCAB, seed: int = 0,
                 fingerprint: str = "fake-1", settings: dict | None = None, model_id: str = "fake"):
        self.dim = int(dim)
        self.vocab_size = int(vocab_size)
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.settings = dict(settings) if settings is not None else {"hash": "crc32", "seed": seed,
                                                                     "weight": "log1p"}
        rng = np.random.default_rng(seed)
        self.projection = rng.standard_normal((self.vocab_size, self.dim)).astype(np.float32)
        self.calls = 0

    def describe(self) -> dict:
        return {"model_id": self.model_id, "fingerprint": self.fingerprint, "dim": self.dim,
                "vocab_size": self.vocab_size, "settings": dict(self.settings)}

    def _sparse(self, texts: Sequence[str]) -> sp.csr_matrix:
        indptr, cols, vals = [0], [], []
        for t in texts:
            counts: dict[int, int] = {}
            for w in re.findall(r"[a-z0-9]+", t.lower()):
                c = zlib.crc32(w.encode("utf-8")) % self.vocab_size
                counts[c] = counts.get(c, 0) + 1
            for c in sorted(counts):
                cols.append(c)
                vals.append(np.log1p(counts[c]))
            indptr.append(len(cols))
        return sp.csr_matrix((np.asarray(vals, np.float32), np.asarray(cols, np.int32), np.asarray(indptr)),
                             shape=(len(texts), self.vocab_size), dtype=np.float32)

    def _encode(self, texts: Sequence[str]) -> FakeEncoded:
        self.calls += 1
        texts = list(texts)
        sparse = self._sparse(texts)
        dense = np.asarray(sparse @ self.projection, dtype=np.float32).reshape(len(texts), self.dim)
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        dense = np.where(norms > 0, dense / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
        dense[norms[:, 0] == 0, 0] = 1.0  # a text without words still gets a unit vector
        return FakeEncoded(dense, sparse)

    def encode_queries(self, texts: Sequence[str]) -> FakeEncoded:
        return self._encode(texts)

    def encode_documents(self, texts: Sequence[str]) -> FakeEncoded:
        return self._encode(texts)


# -- synthetic corpus -------------------------------------------------------------------------------------------
TOPICS = {
    "astronomy": "star planet galaxy telescope orbit comet nebula astronomer",
    "cooking": "recipe oven flour butter sauce bake kitchen chef",
    "football": "goal striker match league referee stadium penalty coach",
    "finance": "stock bond market investor dividend interest bank loan",
    "medicine": "doctor patient vaccine disease hospital surgery symptom nurse",
    "music": "guitar melody concert orchestra piano rhythm singer album",
    "computing": "python compiler software database server algorithm kernel code",
    "geology": "volcano magma rock earthquake mineral crust lava fossil",
    "gardening": "seed soil compost tomato garden prune flower shovel",
    "sailing": "boat sail harbor wind anchor mast captain voyage",
    "chemistry": "molecule atom reaction acid catalyst electron bond solvent",
    "history": "empire king battle treaty century dynasty revolution castle",
    "aviation": "aircraft pilot runway wing airport jet cockpit altitude",
    "biology": "cell gene protein enzyme organism evolution species dna",
    "law": "court judge lawyer contract statute verdict appeal jury",
    "weather": "rain storm cloud forecast temperature snow humidity thunder",
    "painting": "canvas brush portrait palette gallery artist sketch easel",
    "railways": "train station locomotive track platform carriage signal timetable",
    "fishing": "trout rod bait river lure hook salmon angler",
    "chess": "pawn bishop knight rook checkmate opening gambit endgame",
}
FILLER = ("the a of and to in is for with on that by this from as it be are was at an or which about into "
          "very often some many most each other").split()


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (benchmarks/ is not a package), registered in ``sys.modules`` as
    ``hylex_<name>_bench``, as an imported module would be."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"hylex_{name}_bench", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def make_docs(n: int = 200, seed: int = 0, prefix: str = "d") -> list[Document]:
    """``n`` synthetic documents cycling through :data:`TOPICS` (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    docs = []
    for i in range(n):
        topic = names[i % len(names)]
        words = TOPICS[topic].split()
        body = list(rng.choice(words, size=int(rng.integers(6, 14)))) + \
            list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
        rng.shuffle(body)
        docs.append(Document(id=f"{prefix}{i:04d}", title=f"{topic.title()} note {i}", text=" ".join(body),
                             metadata={"topic": topic, "n": i}))
    return docs


QUERY_TEXTS = [f"{t} {' '.join(w.split()[:3])}" for t, w in TOPICS.items()] + [
    "star and galaxy seen by a telescope", "how to bake bread with flour in an oven", "volcano lava magma",
    "unrelatedword zebra"]  # the last query's words hash to no corpus word: no sparse hit


def doc_line(d: Document) -> str:
    return json.dumps({"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata})


def write_jsonl(path: Path, rows: Sequence[dict | str | Document]) -> Path:
    """Write rows (dicts, Documents or raw strings) one per line."""
    lines = []
    for r in rows:
        if isinstance(r, Document):
            lines.append(doc_line(r))
        elif isinstance(r, str):
            lines.append(r)
        else:
            lines.append(json.dumps(r))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture(scope="session")
def docs() -> list[Document]:
    return make_docs(200)


@pytest.fixture(scope="session")
def queries(fake_encoder) -> tuple[list[str], np.ndarray, sp.csr_matrix]:
    enc = fake_encoder.encode_queries(QUERY_TEXTS)
    return QUERY_TEXTS, enc.dense, enc.sparse


@pytest.fixture
def corpus_writer(tmp_path):
    """``corpus_writer(rows, name="corpus.jsonl") -> Path``: a JSONL file under tmp_path."""
    def write(rows, name: str = "corpus.jsonl") -> Path:
        return write_jsonl(tmp_path / name, rows)
    return write


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, docs, fake_encoder) -> Path:
    """A single-segment Flat index of the 200 synthetic docs. Read-only for tests: copy it to modify it."""
    from hylex.indexing import build_index

    path = tmp_path_factory.mktemp("built") / "index"
    build_index(docs, path, fake_encoder, progress=False)
    return path


@pytest.fixture
def index_copy(built_index, tmp_path) -> Path:
    """A private copy of :func:`built_index` that a test may modify."""
    import shutil

    dst = tmp_path / "index-copy"
    shutil.copytree(built_index, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def brute_force(docs: Sequence[Document], encoder: FakeEncoder) -> tuple[np.ndarray, sp.csr_matrix]:
    enc = encoder.encode_documents([d.full_text for d in docs])
    return enc.dense, enc.sparse


# Sparse postings are stored as 16-bit impacts and queries quantized to 16 bits (hylex.kernels.blockmax): sparse
# scores match the float brute force to about 1e-5 relative, so sparse checks compare with this tolerance.
SPARSE_ATOL = 2e-4


def quantized_sparse(index) -> sp.csr_matrix:
    """The index's dequantized sparse document weights, float32 csr (n_docs, V), segments stacked in row order."""
    return sp.vstack([seg.sparse.to_csr() for seg in index.segments], format="csr")


def assert_valid_topk(D: np.ndarray, I: np.ndarray, full: np.ndarray, k: int, *, positive_only: bool = False,
                      atol: float = 1e-5) -> None:
    """Check (D, I) is a correct top-k of the score matrix ``full`` (nq, n_docs), allowing any order of ties.

    Returned scores must equal the true scores of the returned rows, be non-increasing, and equal the k best
    true scores; rows are distinct. With ``positive_only`` (sparse arms) only docs scoring > 0 are hits.
    """
    assert D.shape == I.shape == (full.shape[0], k)
    for q in range(full.shape[0]):
        s = full[q]
        cand = np.sort(s[s > 0] if positive_only else s)[::-1][:k]
        n_hits = len(cand)
        rows = I[q, :n_hits]
        assert (rows >= 0).all(), f"query {q}: missing hits among the first {n_hits}"
        assert len(set(rows.tolist())) == n_hits, f"query {q}: duplicate rows"
        np.testing.assert_allclose(D[q, :n_hits], s[rows], atol=atol, err_msg=f"query {q}: scores of rows")
        np.testing.assert_allclose(D[q, :n_hits], cand, atol=atol, err_msg=f"query {q}: not the top-k")
        assert (np.diff(D[q, :n_hits]) <= atol).all(), f"query {q}: scores not descending"
        assert (I[q, n_hits:] == -1).all() and np.isneginf(D[q, n_hits:]).all()


def assert_same_results(a, b, atol: float = 1e-5) -> None:
    """Two Results agree: scores close, and ids equal wherever the score is not tied with a neighbour."""
    assert a.shape == b.shape
    np.testing.assert_allclose(a.scores, b.scores, atol=atol)
    for q in range(a.shape[0]):
        s = a.scores[q]
        for j in range(a.shape[1]):
            if not np.isfinite(s[j]):
                assert a.ids[q, j] is None and b.ids[q, j] is None
                continue
            tied = (j > 0 and abs(s[j] - s[j - 1]) <= atol) or (j + 1 < len(s) and abs(s[j] - s[j + 1]) <= atol)
            if not tied:
                assert a.ids[q, j] == b.ids[q, j], f"query {q} rank {j}: {a.ids[q, j]} != {b.ids[q, j]}"
        # the same documents overall above the last score level
        last = s[np.isfinite(s)].min() if np.isfinite(s).any() else None
        if last is not None:
            above_a = {i for i, x in zip(a.ids[q], a.scores[q]) if x > last + atol}
            above_b = {i for i, x in zip(b.ids[q], b.scores[q]) if x > last + atol}
            assert above_a == above_b


def assert_same_index_results(dir_a, dir_b, encoder, queries: Sequence[str], atol: float = 1e-5) -> None:
    """Two indexes of the same documents answer alike (:func:`assert_same_results`) on every arm and the three-arm
    fusion, top 10."""
    from hylex.retrieval.searcher import Searcher

    a, b = Searcher(dir_a, encoder=encoder), Searcher(dir_b, encoder=encoder)
    try:
        for arms in (["dense"], ["sparse"], ["bm25"], ["dense", "sparse", "bm25"]):
            assert_same_results(a.search(list(queries), k=10, arms=arms), b.search(list(queries), k=10, arms=arms),
                                atol=atol)
    finally:
        a.index.close()
        b.index.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random-weight Llama folder with the default model's tokenizer and chat template (training and
    generation tests: seconds instead of the real model's minutes)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hylex.engine.models import resolve_model

    src = Path(resolve_model("smollm2-135m").path)
    out = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2, initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / f, out / f)
    return out
