"""The on-disk index: manifest, round trips, exactness against brute force, segments, factories, damage, locks."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import hylex
from conftest import (SPARSE_ATOL, FakeEncoder, assert_same_results, assert_valid_topk, brute_force, make_docs,
                      quantized_sparse)
from hylex.corpus import Document
from hylex.errors import HylexError, IndexFormatError
from hylex.indexing import FORMAT_VERSION, Index, build_index
from hylex.retrieval import Searcher

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SEG_FILES = {"dense.faiss", *(f"impact_{a}.npy" for a in ("terms", "indptr", "docs", "impacts", "block_indptr",
                                                          "block_max", "block_first", "block_last", "term_scale",
                                                          "fwd_indptr",
                                                          "fwd_terms", "fwd_impacts")), "impact_meta.json", "bm25_terms.npy",
             "bm25_indptr.npy", "bm25_docs.npy", "bm25_tf.npy", "bm25_doclen.npy"}


def seg_len(manifest) -> int:
    return sum(s["bm25_len"] for s in manifest["segments"])


def _search_all(index, queries, k=10):
    """Dense, sparse, hybrid (convex and rrf) Results for pre-encoded queries."""
    _, qd, qs = queries
    s = Searcher(index)
    return {
        "dense": s.search(None, k=k, mode="dense", dense=qd),
        "sparse": s.search(None, k=k, mode="sparse", sparse=qs),
        "hybrid": s.search(None, k=k, mode="hybrid", dense=qd, sparse=qs),
        "rrf": s.search(None, k=k, mode="hybrid", fusion="rrf", dense=qd, sparse=qs),
    }


def _assert_identical(a: dict, b: dict) -> None:
    for mode in a:
        assert a[mode].ids.tolist() == b[mode].ids.tolist(), mode
        np.testing.assert_array_equal(a[mode].scores, b[mode].scores, err_msg=mode)
        np.testing.assert_array_equal(a[mode].rows, b[mode].rows, err_msg=mode)


def _snapshot(path, queries):
    with Index.open(path) as ix:
        return ix.n_docs, _search_all(ix, queries)


# -- manifest ---------------------------------------------------------------------------------------------------
def test_manifest_fields(built_index, docs, fake_encoder):
    with Index.open(built_index) as ix:
        m = ix.manifest
        assert m["format"] == "hylex-index" and m["format_version"] == FORMAT_VERSION == 5
        assert m["libraries"]["hylex"] == hylex.__version__
        assert "faiss" in m["libraries"] and "numpy" in m["libraries"]
        assert m["encoder"] == fake_encoder.describe()
        assert m["encoder"]["model_id"] == "fake" and m["encoder"]["settings"] == fake_encoder.settings
        assert m["dense"] == {"factory": "Flat", "metric": "inner_product", "dim": 32}
        assert m["sparse"]["vocab_size"] == 1000
        assert m["bm25"] == {"analyzer": {"stemmer": "english", "stopwords": "english"}, "k1": 0.9, "b": 0.4,
                             "idf": "lucene", "total_len": seg_len(m)}
        assert ix.dim == 32 and ix.vocab_size == 1000
        assert m["n_docs"] == ix.n_docs == len(docs) == 200
        assert m["next_segment"] == len(m["segments"]) == 1
        seg = m["segments"][0]
        assert seg["name"] == "seg-000000" and seg["row_offset"] == 0 and seg["n_docs"] == 200
        assert seg["nnz"] == fake_encoder.encode_documents([d.full_text for d in docs]).sparse.nnz
        assert set(seg["files"]) == SEG_FILES
        for fname, meta in seg["files"].items():
            f = built_index / "segments" / seg["name"] / fname
            assert meta["bytes"] == f.stat().st_size > 0
            assert meta["sha256"] == _sha256(f) and len(meta["sha256"]) == 64
        assert ix.validate() == []
        # documents and ids round-trip through the store
        assert ix.rows_of(["d0000", "d0199", "nope"]) == [0, 199, None]
        got = ix.documents([0, 199, -1, 500])
        assert got[0] == {"id": "d0000", "title": docs[0].title, "text": docs[0].text, "metadata": docs[0].metadata}
        assert got[1]["id"] == "d0199" and got[2] is None and got[3] is None
    # the manifest on disk is plain JSON with the same content
    assert json.loads((built_index / "manifest.json").read_text())["n_docs"] == 200


# -- round trip -------------------------------------------------------------------------------------------------
def test_save_load_round_trip_identical(tmp_path, docs, fake_encoder, queries):
    enc = fake_encoder.encode_documents([d.full_text for d in docs])
    path = tmp_path / "rt"
    ix = Index.create(path, fake_encoder.describe())
    assert ix.add(docs[:120], enc.dense[:120], enc.sparse[:120]) == 0
    assert ix.add(docs[120:], enc.dense[120:], enc.sparse[120:]) == 120
    before = _search_all(ix, queries)
    ix.close()
    for mmap in (True, False):
        with Index.open(path, mmap=mmap) as again:
            assert again.n_docs == 200 and len(again.segments) == 2
            _assert_identical(before, _search_all(again, queries))
    # text queries through the encoder give the same as the pre-encoded vectors
    with Index.open(path) as again:
        texts = queries[0]
        # (a plain text search fuses the stored arms, bm25 too: name the pre-encoded search's arms)
        r = Searcher(again, encoder=fake_encoder).search(texts, k=10, mode="hybrid", arms=("dense", "sparse"))
        assert r.ids.tolist() == before["hybrid"].ids.tolist()


# -- exactness ---------------------------------------------------------------------------------------------------
def test_dense_and_sparse_equal_brute_force(built_index, docs, fake_encoder, queries):
    X, S = brute_force(docs, fake_encoder)
    _, qd, qs = queries
    with Index.open(built_index) as ix:
        s = Searcher(ix)
        for k in (1, 10, 50):
            D, I = s.search_dense(qd, k)
            assert_valid_topk(D, I, qd @ X.T, k)
            D, I = s.search_sparse(qs, k)
            assert_valid_topk(D, I, (qs @ quantized_sparse(ix).T).toarray(), k, positive_only=True, atol=SPARSE_ATOL)
            # the quantized weights are within half a step of the encoder's
            step = ix.manifest["sparse"]["max_weight"] / 65535
            assert abs(quantized_sparse(ix) - S).max() <= step / 2 + 1e-7
        # the public API returns the same rows as the arms, with ids
        r = s.search(None, k=10, mode="sparse", sparse=qs)
        full = (qs @ S.T).toarray()
        for q in range(len(qd)):
            for j, (row, i) in enumerate(zip(r.rows[q], r.ids[q])):
                if row >= 0:
                    assert i == docs[row].id
                    assert r.scores[q, j] == pytest.approx(full[q, row], abs=SPARSE_ATOL)
                else:
                    assert i is None


# -- segments ----------------------------------------------------------------------------------------------------
def test_multiple_segments_match_single_segment(tmp_path, fake_encoder, queries):
    all_docs = make_docs(250)
    single = tmp_path / "single"
    build_index(all_docs, single, fake_encoder, progress=False)
    multi = tmp_path / "multi"
    rep = build_index(all_docs[:200], multi, fake_encoder, segment_size=37, chunk_size=16, progress=False)
    assert rep.documents == 200 and rep.segments == 6  # ceil(200 / 37)
    rep = build_index(all_docs[200:], multi, fake_encoder, segment_size=37, progress=False)
    assert rep.documents == 50 and rep.segments == 2
    with Index.open(single) as a, Index.open(multi) as b:
        assert len(a.segments) == 1 and len(b.segments) == 8
        assert b.n_docs == a.n_docs == 250
        offsets = [s["row_offset"] for s in b.manifest["segments"]]
        assert offsets == [0, 37, 74, 111, 148, 185, 200, 237]
        assert b.validate() == []
        ra, rb = _search_all(a, queries, k=20), _search_all(b, queries, k=20)
        for mode in ra:
            assert_same_results(ra[mode], rb[mode])
        assert b.rows_of([d.id for d in all_docs]) == list(range(250))


# -- FAISS factories ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["HNSW32", "IVF4,Flat"])
def test_other_faiss_factories(tmp_path, docs, fake_encoder, factory):
    path = tmp_path / "ix"
    build_index(docs, path, fake_encoder, dense_factory=factory, progress=False)
    X, _ = brute_force(docs, fake_encoder)
    with Index.open(path) as ix:
        assert ix.manifest["dense"]["factory"] == factory
        assert ix.validate() == []
        r = Searcher(ix).search(None, k=5, mode="dense", dense=X[:40])
        assert r.shape == (40, 5)
        # a document's own vector finds itself (an approximate index still gets this right)
        found = [docs[q].id in r.ids[q].tolist() for q in range(40)]
        assert sum(found) >= 38
        np.testing.assert_allclose(r.scores[:, 0], 1.0, atol=1e-4)
        hybrid = Searcher(ix, encoder=fake_encoder).search(["telescope galaxy"], k=5)
        assert hybrid.shape == (1, 5) and hybrid.ids[0, 0] is not None


def test_invalid_factory_names_it_and_creates_nothing(tmp_path, docs, fake_encoder):
    path = tmp_path / "bad"
    with pytest.raises(HylexError, match="NotAFactory99"):
        build_index(docs, path, fake_encoder, dense_factory="NotAFactory99", progress=False)
    assert not path.exists()
    with pytest.raises(HylexError, match="NotAFactory99"):
        Index.create(path, fake_encoder.describe(), "NotAFactory99")
    assert not path.exists()


# -- damage ------------------------------------------------------------------------------------------------------
def test_validate_reports_corrupted_file(index_copy, queries):
    with Index.open(index_copy) as ix:
        assert ix.validate() == []
    f = index_copy / "segments" / "seg-000000" / "impact_impacts.npy"
    size = f.stat().st_size
    data = bytearray(f.read_bytes())
    for i in range(size - 8, size):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    assert f.stat().st_size == size
    with pytest.raises(IndexFormatError, match=r"impact_impacts.npy does not match its checksum"):
        Index.open(index_copy)  # checksums are verified on load
    with Index.open(index_copy, verify=False) as ix:  # sizes still match: opening works, validate finds the damage
        problems = ix.validate()
    assert len(problems) == 1
    assert "impact_impacts.npy" in problems[0] and "checksum" in problems[0]


@pytest.mark.parametrize("fname", ["dense.faiss", "impact_docs.npy"])
def test_truncated_file_refuses_open(index_copy, fname):
    f = index_copy / "segments" / "seg-000000" / fname
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match=fname) as e:
        Index.open(index_copy)
    assert "bytes" in str(e.value)
    f.unlink()
    with pytest.raises(IndexFormatError, match=f"{fname}.*missing"):
        Index.open(index_copy)


# -- open errors -------------------------------------------------------------------------------------------------
def test_open_missing_dir(tmp_path):
    with pytest.raises(IndexFormatError, match="does not exist"):
        Index.open(tmp_path / "nowhere")


def test_open_dir_without_manifest(tmp_path):
    d = tmp_path / "plain"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    with pytest.raises(IndexFormatError, match=r"not a hylex index \(no manifest.json\)"):
        Index.open(d)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]  # nothing created there


def test_open_foreign_manifest(tmp_path):
    d = tmp_path / "foreign"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"format": "other-tool", "version": 3}))
    with pytest.raises(IndexFormatError, match="not a hylex index.*other-tool"):
        Index.open(d)
    (d / "manifest.json").write_text(json.dumps([1, 2, 3]))
    with pytest.raises(IndexFormatError, match="not a hylex index"):
        Index.open(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="damaged"):
        Index.open(d)


def test_open_other_format_version(index_copy):
    mf = index_copy / "manifest.json"
    m = json.loads(mf.read_text())
    m["format_version"] = 99
    mf.write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match=rf"format version 99.*reads versions 3, 4 and {FORMAT_VERSION}"):
        Index.open(index_copy)


# -- add validation ----------------------------------------------------------------------------------------------
def _bad_batches(docs, fake_encoder):
    new = make_docs(3, seed=5, prefix="new")
    enc = fake_encoder.encode_documents([d.full_text for d in new])
    d, s = enc.dense, enc.sparse
    nan = d.copy()
    nan[1, 3] = np.nan
    neg = s.copy()
    neg.data[0] = -1.0
    dup = [new[0], new[1], Document(id=new[0].id, text="another text")]
    return [
        ("wrong dense dim", new, np.hstack([d, d[:, :1]]), s, "dense vectors have shape"),
        ("wrong vocab", new, d, sp.csr_matrix(s[:, :999]), "sparse weights have shape"),
        ("NaN dense", new, nan, s, "NaN"),
        ("negative sparse", new, d, neg, "non-negative"),
        ("duplicate in batch", dup, d, s, f"{new[0].id!r} appears twice"),
        ("id already present", [new[0], docs[5], new[2]], d, s, "already in the index.*d0005"),
        ("row count mismatch", new[:2], d, s, "dense vectors have shape"),
        ("empty batch", [], d[:0], s[:0], "no documents"),
    ]


def test_add_validation_leaves_index_unchanged(index_copy, docs, fake_encoder, queries):
    n0, before = _snapshot(index_copy, queries)
    manifest0 = (index_copy / "manifest.json").read_bytes()
    segs0 = sorted(p.name for p in (index_copy / "segments").iterdir())
    with Index.open(index_copy, writable=True) as ix:
        for what, batch, dense, sparse, msg in _bad_batches(docs, fake_encoder):
            with pytest.raises(HylexError, match=msg):
                ix.add(batch, dense, sparse)
            assert ix.n_docs == n0, what
        assert ix.store.count() == n0
        assert ix.rows_of(["new0000", "new0002"]) == [None, None]
        _assert_identical(before, _search_all(ix, queries))
    assert (index_copy / "manifest.json").read_bytes() == manifest0
    assert sorted(p.name for p in (index_copy / "segments").iterdir()) == segs0
    n1, after = _snapshot(index_copy, queries)
    assert n1 == n0
    _assert_identical(before, after)


def test_add_on_read_only_index_refused(built_index, fake_encoder):
    new = make_docs(2, prefix="ro")
    enc = fake_encoder.encode_documents([d.full_text for d in new])
    with Index.open(built_index) as ix:
        with pytest.raises(HylexError, match="read-only"):
            ix.add(new, enc.dense, enc.sparse)


def test_build_index_with_present_id_refused(index_copy, docs, fake_encoder, queries):
    n0, before = _snapshot(index_copy, queries)
    with pytest.raises(HylexError, match="d0007.*already in"):
        build_index(make_docs(3, prefix="extra") + [docs[7]], index_copy, fake_encoder, progress=False)
    n1, after = _snapshot(index_copy, queries)
    assert n1 == n0
    _assert_identical(before, after)


# -- locking -----------------------------------------------------------------------------------------------------
def test_second_writer_refused_reader_works(index_copy, queries, fake_encoder):
    n0, before = _snapshot(index_copy, queries)
    writer = Index.open(index_copy, writable=True)
    try:
        with pytest.raises(HylexError, match="another process is writing"):
            Index.open(index_copy, writable=True)
        with pytest.raises(HylexError, match="another process is writing"):
            build_index(make_docs(2, prefix="w2"), index_copy, fake_encoder, progress=False)
        # a reader in this process works while the writer is open, and sees the writer's commit after reopening
        with Index.open(index_copy) as reader:
            _assert_identical(before, _search_all(reader, queries))
        new = make_docs(2, prefix="w1")
        enc = fake_encoder.encode_documents([d.full_text for d in new])
        writer.add(new, enc.dense, enc.sparse)
        with Index.open(index_copy) as reader:
            assert reader.n_docs == n0 + 2 and reader.rows_of(["w10001"]) == [n0 + 1]
    finally:
        writer.close()
    # a reader and a refused writer in another process
    script = textwrap.dedent(f"""
        import sys
        from hylex.errors import HylexError
        from hylex.indexing import Index
        p = {str(index_copy)!r}
        with Index.open(p) as r:
            print("reader", r.n_docs, r.rows_of(["w10000"])[0])
        try:
            Index.open(p, writable=True)
            print("second writer opened")
        except HylexError as e:
            print("refused:", e)
    """)
    with Index.open(index_copy, writable=True):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             cwd=Path(hylex.__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"reader {n0 + 2} {n0}"
    assert lines[1].startswith("refused: another process is writing")
    # the lock is released on close: a new writer opens
    with Index.open(index_copy, writable=True) as w:
        assert w.n_docs == n0 + 2


def test_other_encoder_refused(index_copy, fake_encoder, queries):
    n0, before = _snapshot(index_copy, queries)
    new = make_docs(3, prefix="other")
    for other, what in [(FakeEncoder(fingerprint="fake-2"), "fingerprint: index 'fake-1', given 'fake-2'"),
                        (FakeEncoder(settings={"hash": "md5"}), "hash: index .*, given 'md5'"),
                        (FakeEncoder(dim=16), "dim: index \\d+, given 16")]:
        # the message names the differing key and both values
        with pytest.raises(HylexError, match=f"was built with another encoder: {what}.*model and settings"):
            build_index(new, index_copy, other, progress=False)
        # refused before anything was written, and the writer lock was released
        with Index.open(index_copy, writable=True) as w:
            assert w.n_docs == n0
    n1, after = _snapshot(index_copy, queries)
    assert n1 == n0
    _assert_identical(before, after)
    # the matching encoder still adds
    build_index(new, index_copy, FakeEncoder(), progress=False)
    with Index.open(index_copy) as ix:
        assert ix.n_docs == n0 + 3 and ix.validate() == []


def test_create_refuses_existing_and_nonempty(built_index, tmp_path, fake_encoder):
    with pytest.raises(HylexError, match="already holds a hylex index"):
        Index.create(built_index, fake_encoder.describe())
    d = tmp_path / "full"
    d.mkdir()
    (d / "x").write_text("x")
    with pytest.raises(HylexError, match="not empty"):
        Index.create(d, fake_encoder.describe())
    assert os.listdir(d) == ["x"]
    with pytest.raises(HylexError, match="lacks 'settings'"):
        Index.create(tmp_path / "new", {"model_id": "m", "dim": 4, "vocab_size": 5})
    assert not (tmp_path / "new").exists()


# -- sparse storage settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,msg", [
    ({"bits": 12}, "sparse bits must be 8 or 16"),
    ({"block_size": 0}, "block_size must be an integer >= 1"),
    ({"keep_top": 0}, "keep_top must be None or an integer >= 1"),
    ({"keep_fraction": 1.5}, r"keep_fraction must be None or a number in \(0, 1\]"),
    ({"max_weight": -1.0}, "max_weight must be None or a finite number > 0"),
    ({"quantum": 3}, "unknown sparse setting 'quantum'"),
])
def test_bad_sparse_settings_are_refused_before_writing(tmp_path, fake_encoder, cfg, msg):
    with pytest.raises(HylexError, match=msg):
        Index.create(tmp_path / "ix", fake_encoder.describe(), sparse=cfg)
    assert not (tmp_path / "ix").exists()


def test_sparse_settings_are_recorded_and_used(tmp_path, docs, fake_encoder, queries):
    _, _, qs = queries
    build_index(docs, tmp_path / "ix", fake_encoder, sparse={"bits": 8, "keep_top": 5}, progress=False)
    with Index.open(tmp_path / "ix") as ix:
        assert ix.manifest["sparse"]["bits"] == 8 and ix.manifest["sparse"]["keep_top"] == 5
        seg = ix.segments[0].sparse
        assert seg.impacts.dtype == np.uint8
        assert np.diff(np.asarray(seg.indptr)).max() <= 5  # statically pruned lists
        # the forward index keeps every posting: stored weights equal the unpruned ones
        S = fake_encoder.encode_documents([d.full_text for d in docs]).sparse
        assert quantized_sparse(ix).nnz == sp.csr_matrix(S).nnz
    # adding with other sparse settings is refused, the index untouched
    with pytest.raises(HylexError, match="stores sparse postings with"):
        build_index(make_docs(3, prefix="x"), tmp_path / "ix", fake_encoder, sparse={"bits": 16}, progress=False)


def test_sparse_weight_above_max_weight_is_refused(tmp_path, docs, fake_encoder):
    enc = fake_encoder.encode_documents([d.full_text for d in docs[:5]])
    with Index.create(tmp_path / "ix", fake_encoder.describe(), sparse={"max_weight": 0.01}) as ix:
        with pytest.raises(HylexError, match="exceeds this index's max_weight 0.01"):
            ix.add(docs[:5], enc.dense, enc.sparse)
        assert ix.n_docs == 0 and ix.validate() == []


def test_dense_index_moves_to_gpu_when_one_is_visible(monkeypatch, tmp_path):
    """faiss-gpu is used automatically: with a GPU visible, a loaded Flat/IVF index is converted, HNSW is not
    (FAISS has no GPU HNSW). The conversion is simulated here (no GPU on CI); the device check runs it for real."""
    import faiss

    from hylex.indexing.dense import DenseIndex

    calls = []

    def fake_to_gpus(index):
        calls.append(type(index).__name__)
        return index

    monkeypatch.setenv("HYLEX_FAISS_GPU", "1")  # skip the probe search: it runs in a child process
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_to_gpus, raising=False)
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    for factory in ("Flat", "HNSW16", "IVF4,Flat"):
        DenseIndex.build(x, factory).save(tmp_path / f"{factory}.faiss")
        DenseIndex.load(tmp_path / f"{factory}.faiss", factory)
    assert calls == ["IndexFlatIP", "IndexIVFFlat"]
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    DenseIndex.load(tmp_path / "Flat.faiss", "Flat")
    assert len(calls) == 2  # no GPU visible: untouched


def test_dense_index_stays_on_cpu_when_the_gpu_probe_fails(monkeypatch, tmp_path, caplog):
    """A faiss-gpu that sees a GPU it has no kernels for (PyPI wheels stop at compute capability 8.9: no H100)
    aborts the process on its first search. hylex probes in a child process first and stays on the CPU. Here
    the child has faiss-cpu, so its probe fails for real; HYLEX_FAISS_GPU=0 skips GPUs altogether."""
    import faiss

    from hylex.indexing import placement as dense
    from hylex.indexing.dense import DenseIndex

    calls = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda ix: calls.append(ix) or ix, raising=False)
    monkeypatch.setattr(dense, "_gpu_probe", {})
    monkeypatch.delenv("HYLEX_FAISS_GPU", raising=False)
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    DenseIndex.build(x, "Flat").save(tmp_path / "f.faiss")
    with caplog.at_level("WARNING", logger="hylex.indexing.dense"):
        loaded = DenseIndex.load(tmp_path / "f.faiss")
    assert calls == [] and type(loaded.index).__name__ == "IndexFlatIP"
    assert "cannot search on them" in caplog.text and "HYLEX_FAISS_GPU=0" in caplog.text
    assert dense.gpu_available() is False  # cached: no second child process
    monkeypatch.setenv("HYLEX_FAISS_GPU", "0")
    monkeypatch.setattr(dense, "_probe_gpu", lambda: pytest.fail("probe must not run with HYLEX_FAISS_GPU=0"))
    monkeypatch.setattr(dense, "_gpu_probe", {})
    assert dense.gpu_available() is False
