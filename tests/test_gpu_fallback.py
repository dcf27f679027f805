"""The exact torch Flat search that stands in for FAISS on a GPU (issue 15), run here on a CPU tensor through the
same code: against brute force, through DenseIndex and a whole Index, and where each arm runs (and why)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import assert_same_results, assert_valid_topk, make_docs
from hylex.errors import HylexError
from hylex.indexing import placement, torch_flat
from hylex.indexing.dense import DenseIndex
from hylex.indexing.placement import dense_device, dense_placement
from hylex.indexing.torch_flat import TorchFlat

# HYLEX_DENSE_DEVICE=torch searches on torch's device: the CPU here, CUDA on a GPU machine (the same tests)
TORCH_HERE = "torch:cuda" if torch.cuda.is_available() else "torch:cpu"


def _data(n=3000, d=24, nq=9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[5] = x[7]  # an exact tie
    return x, rng.standard_normal((nq, d)).astype(np.float32)


def check_topk(D, I, q, x, k, allowed=None):
    """(D, I) is an exact top-k of q @ x.T over the allowed rows (any order of ties: conftest's check)."""
    rows = np.arange(len(x)) if allowed is None else np.flatnonzero(allowed)
    local = np.full(len(x), -1)
    local[rows] = np.arange(len(rows))
    assert_valid_topk(D, np.where(I >= 0, local[np.maximum(I, 0)], -1), q @ x[rows].T, k)
    assert (I[I >= 0] < len(x)).all()


@pytest.mark.parametrize("blocks", [False, True])
def test_torch_flat_equals_brute_force(monkeypatch, blocks):
    """Exact top-k by blocks of rows merged into a running top-k: the same hits as brute force (ties aside)."""
    x, q = _data()
    if blocks:  # blocks of 1,024 rows (the smallest): the merge runs twice
        monkeypatch.setattr(torch_flat, "SCORE_BYTES", 4 * len(q) * 1000)
    index = TorchFlat(x, "cpu")
    for k in (1, 10, 100):
        check_topk(*index.search(q, k), q, x, k)


def test_torch_flat_masks_before_top_k(monkeypatch):
    monkeypatch.setattr(torch_flat, "SCORE_BYTES", 4 * 9 * 1000)
    x, q = _data()
    rng = np.random.default_rng(1)
    index = TorchFlat(x, "cpu")
    for share in (0.001, 0.3, 1.0):
        allowed = rng.random(len(x)) < share
        D, I = index.search(q, 20, allowed)
        check_topk(D, I, q, x, 20, allowed)
        assert allowed[I[I >= 0]].all()
        assert ((I >= 0).sum(1) == min(20, allowed.sum())).all()  # every allowed row reachable, -1 past them
    D, I = index.search(q, 5, np.zeros(len(x), bool))
    assert (I == -1).all() and np.isneginf(D).all()
    D, I = index.search(q, 5000, None)  # k beyond n: n hits, then -1
    assert ((I >= 0).sum(1) == len(x)).all() and (I[:, len(x):] == -1).all()


@pytest.mark.parametrize("dtype,min_recall", [("float16", 0.95), ("bfloat16", 0.85)])
def test_half_storage_keeps_float32_products(dtype, min_recall):
    """Half-precision storage rounds the vectors only: recall@10 against float32 stays high, and the scores are
    exactly the float32 products of the rounded vectors."""
    x, q = _data()
    D, I = TorchFlat(x, "cpu", dtype).search(q, 10)
    ref = np.argsort(-(q @ x.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, ref)])
    assert recall >= min_recall
    rounded = torch.from_numpy(x).to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_allclose(D, np.take_along_axis(q @ rounded.T, I, 1), rtol=1e-5, atol=1e-5)


def test_torch_flat_validates_its_inputs():
    x, q = _data(n=50)
    with pytest.raises(HylexError, match="storage dtype 'int8' is unknown"):
        TorchFlat(x, "cpu", "int8")
    index = TorchFlat(x, "cpu")
    with pytest.raises(HylexError, match=r"queries must be \(nq, 24\)"):
        index.search(q[:, :10], 3)
    with pytest.raises(HylexError, match="allowed must be a bool array of shape"):
        index.search(q, 3, np.ones(10, bool))


def test_dense_index_searches_through_torch_when_placed_there(monkeypatch, tmp_path):
    """HYLEX_DENSE_DEVICE=torch: a loaded Flat index searches with the torch code (on torch's device: the CPU
    here), with and without masks, and gives FAISS's results; other index types stay on FAISS."""
    x, q = _data()
    DenseIndex.build(x, "Flat").save(tmp_path / "flat.faiss")
    DenseIndex.build(x, "HNSW16").save(tmp_path / "hnsw.faiss")
    cpu = DenseIndex.load(tmp_path / "flat.faiss")
    assert cpu.device == "cpu" and cpu.accel is None
    monkeypatch.setenv("HYLEX_DENSE_DEVICE", "torch")
    placed = DenseIndex.load(tmp_path / "flat.faiss")
    assert placed.device == TORCH_HERE and isinstance(placed.accel, TorchFlat)
    assert DenseIndex.load(tmp_path / "hnsw.faiss", "HNSW16").device == "cpu"
    allowed = np.random.default_rng(2).random(len(x)) < 0.2
    for k in (1, 10):
        for mask in (None, allowed):
            for queries in (q[:1], np.repeat(q, 3, axis=0)):  # FAISS's loop and its BLAS path on the CPU side
                check_topk(*placed.search(queries, k, mask), queries, x, k, mask)
                check_topk(*cpu.search(queries, k, mask), queries, x, k, mask)


def _two_segment_index(path, fake_encoder):
    from hylex.indexing.index import Index

    docs = make_docs(300, seed=4)
    enc = fake_encoder.encode_documents([d.full_text for d in docs])
    with Index.create(path, fake_encoder.describe()) as ix:
        ix.add(docs[:150], enc.dense[:150], enc.sparse[:150])
        ix.add(docs[150:], enc.dense[150:], enc.sparse[150:])
        ix.delete([docs[3].id, docs[200].id])
    return path


def test_whole_index_gives_the_same_hits_on_the_torch_path(monkeypatch, tmp_path, fake_encoder):
    """Every arm and the fusion, over two segments with deletions: the same hits with dense search on torch."""
    from hylex.indexing.index import Index
    from hylex.retrieval.searcher import Searcher

    path = _two_segment_index(tmp_path / "a", fake_encoder)
    queries = ["alpha beta", "gamma delta epsilon", "zeta"]
    monkeypatch.setenv("HYLEX_DENSE_DEVICE", "torch")
    on_torch = Searcher(path, encoder=fake_encoder)
    monkeypatch.setenv("HYLEX_DENSE_DEVICE", "cpu")
    on_faiss = Searcher(path, encoder=fake_encoder)
    try:
        assert [s.dense.device for s in on_torch.index.segments] == [TORCH_HERE] * 2
        assert [s.dense.device for s in on_faiss.index.segments] == ["cpu"] * 2
        for arms in (["dense"], ["dense", "sparse", "bm25"]):
            assert_same_results(on_torch.search(queries, k=10, arms=arms), on_faiss.search(queries, k=10, arms=arms))
    finally:
        on_torch.index.close()
        on_faiss.index.close()
    with Index.open(path) as ix:  # HYLEX_DENSE_DEVICE=cpu still
        assert ix.devices() == {"dense": {"device": "cpu", "why": "HYLEX_DENSE_DEVICE=cpu", "segments": ["cpu"]},
                                "sparse": {"device": "cpu", "why": "hylex's block-max kernels (Numba, CPU)"},
                                "bm25": {"device": "cpu", "why": "hylex's BM25 kernels (Numba, CPU)"}}


def test_placement_says_where_and_why(monkeypatch):
    """auto: faiss-gpu when its probe passes, else torch on CUDA when an NVIDIA GPU is visible and torch sees it,
    else the CPU; each with the reason. Bad settings are refused in one line."""
    monkeypatch.delenv("HYLEX_DENSE_DEVICE", raising=False)
    monkeypatch.delenv("HYLEX_FAISS_GPU", raising=False)
    here = dense_placement()
    if not placement._nvidia_visible() and placement._check_one_faiss()[0].startswith("faiss-cpu"):  # CI: faiss-cpu, no GPU
        assert here == {"device": "cpu", "why": "FAISS is a CPU build (faiss-cpu); no NVIDIA GPU visible"}
    monkeypatch.setattr(placement, "faiss_gpu_status", lambda: (True, "probe search on 1 GPU(s) passed"))
    assert dense_placement() == {"device": "faiss-gpu", "why": "probe search on 1 GPU(s) passed"}
    assert dense_device("HNSW32")["device"] == "cpu" and "no GPU HNSW" in dense_device("HNSW32")["why"]
    monkeypatch.setattr(placement, "faiss_gpu_status", lambda: (False, "probe search on 1 GPU(s) failed: CUDA error 209"))
    monkeypatch.setattr(placement, "_nvidia_visible", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    where = dense_placement()
    assert where["device"] == "torch:cuda" and "CUDA error 209" in where["why"] and where["torch_dtype"] == "float32"
    assert dense_device("IVF64,Flat")["device"] == "cpu"  # only exact Flat moves to torch
    monkeypatch.setenv("HYLEX_TORCH_FLAT_DTYPE", "bfloat16")
    assert dense_device("Flat") == {"device": "torch:cuda", "why": where["why"], "storage": "bfloat16"}
    monkeypatch.setenv("HYLEX_TORCH_FLAT_DTYPE", "fp8")
    with pytest.raises(HylexError, match="HYLEX_TORCH_FLAT_DTYPE='fp8' is unknown"):
        dense_placement()
    monkeypatch.setenv("HYLEX_DENSE_DEVICE", "gpu0")
    with pytest.raises(HylexError, match="HYLEX_DENSE_DEVICE='gpu0' is unknown: use auto, cpu or torch"):
        dense_placement()


def test_stats_show_each_arms_device(capsys, tmp_path, monkeypatch, fake_encoder):
    """hylex stats (and --json) say where each arm searches here and why."""
    from hylex.cli import main

    path = _two_segment_index(tmp_path / "a", fake_encoder)
    monkeypatch.delenv("HYLEX_DENSE_DEVICE", raising=False)
    monkeypatch.delenv("HYLEX_FAISS_GPU", raising=False)
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    d = dense_device("Flat")
    assert f"devices here: dense on {d['device']} ({d['why']}); sparse and BM25 on the CPU" in out
    monkeypatch.setenv("HYLEX_DENSE_DEVICE", "torch")
    assert main(["stats", str(path), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["devices"]["dense"]["device"] == TORCH_HERE and st["devices"]["sparse"]["device"] == "cpu"
