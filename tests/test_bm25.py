"""The BM25 arm: analyzer, postings, scores equal to bm25s's, exact global statistics across segments and
additions, three-arm fusion and its argument checks, the command line, and the format-1 refusal."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from conftest import QUERY_TEXTS, FakeEncoder, make_docs, write_jsonl
from hylex.corpus import Document
from hylex.errors import HylexError, IndexFormatError
from hylex.indexing import Bm25Postings, Index, bm25_search, build_index
from hylex.kernels import fuse_ref
from hylex.retrieval import Searcher
from hylex.text import ENGLISH_STOPWORDS, Bm25Analyzer, term_hash, term_hashes
from test_cli import assert_one_line_error, run

bm25s = pytest.importorskip("bm25s")


@pytest.fixture
def fake_cli(monkeypatch):
    """Every encoder the CLI makes is a FakeEncoder; the list records the encoders made (as in test_cli)."""
    import hylex.engine.encoder as engine_encoder

    made = []

    def factory(*args, **kwargs):
        made.append((args, kwargs))
        return FakeEncoder()

    monkeypatch.setattr(engine_encoder, "Encoder", factory)
    return made

# -- a corpus with inflections (so stemming matters), repeats, stopwords, unicode and empty docs -----------------
STEMS = ("connect run comput index retriev search token galaxi cook bake market invest gene protein orbit court "
         "judg train stat jump fish sail paint music play").split()
SUFFIXES = ("", "s", "ing", "ed", "er", "ion", "ions", "ers")
WORDS = [s + x for s in STEMS for x in SUFFIXES] + ["café", "naïve", "Straße", "東京", "x86", "2024"]


def word_docs(n: int = 300, seed: int = 0, prefix: str = "w") -> list[Document]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1) ** 0.8  # Zipf-like: frequent and rare terms
    p /= p.sum()
    stop = sorted(ENGLISH_STOPWORDS)
    docs = []
    for i in range(n):
        m = int(rng.integers(0, 40))
        words = list(rng.choice(WORDS, size=m, p=p)) + list(rng.choice(stop, size=int(rng.integers(0, 8))))
        rng.shuffle(words)
        title = " ".join(rng.choice(WORDS, size=int(rng.integers(0, 3)))).title()
        docs.append(Document(id=f"{prefix}{i:04d}", title=title, text=" ".join(words) or "the of and"))
    docs.append(Document(id=f"{prefix}-stop", text="The and of it is."))  # nothing left after stopwords
    return docs


def word_queries(n: int = 40, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    out = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 6)))) for _ in range(n)]
    return out + ["Connecting connected CONNECTIONS", "running runs run run", "zebra qwertyuiop", "the of and",
                  "café Straße 東京 search"]


@pytest.fixture(scope="module")
def corpus():
    return word_docs()


@pytest.fixture(scope="module")
def word_index(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("bm25") / "index"
    build_index(corpus, path, FakeEncoder(), progress=False)
    return path


def bm25s_model(tokens, k1=0.9, b=0.4):
    model = bm25s.BM25(k1=k1, b=b, method="lucene")
    model.index(tokens, show_progress=False)
    return model


# -- analyzer ----------------------------------------------------------------------------------------------------
def test_analyzer():
    an = Bm25Analyzer()
    assert an.analyze(["The Runners were RUNNING; connections connected!", "", "the of"]) == \
        [["runner", "run", "connect", "connect"], [], []]
    assert an.analyze(["Café naïve Straße 東京 x86_64"]) == [["café", "naïv", "straße", "東京", "x86_64"]]
    raw = Bm25Analyzer(stemmer="none", stopwords="none")
    assert raw.analyze(["The Runners ran"]) == [["the", "runners", "ran"]]
    assert Bm25Analyzer.from_dict(an.to_dict()) == an and an.to_dict() == {"stemmer": "english",
                                                                          "stopwords": "english"}
    assert Bm25Analyzer("porter").analyze(["generalization"]) == [["gener"]]
    with pytest.raises(HylexError, match="stemmer 'klingon' is unknown.*english"):
        Bm25Analyzer("klingon")
    with pytest.raises(HylexError, match="stopwords 'french' are unknown"):
        Bm25Analyzer(stopwords="french")
    with pytest.raises(HylexError, match="unknown"):
        Bm25Analyzer.from_dict({"stemmer": "english", "lowercase": False})
    # term ids: blake2b-64 little-endian of the UTF-8 term, the same in every process
    want = int.from_bytes(hashlib.blake2b(b"run", digest_size=8).digest(), "little")
    assert term_hash("run") == want
    h = term_hashes(["run", "東京"])
    assert h.dtype == np.uint64 and int(h[0]) == want


def test_postings_round_trip(tmp_path):
    tokens = [["b", "a", "b"], [], ["c", "b"], ["a"]]
    p = Bm25Postings.from_tokens(tokens)
    assert p.n_docs == 4 and p.n_terms == 3 and p.nnz == 5 and p.total_len == 6
    assert (np.diff(p.terms.astype(np.float64)) > 0).all() and p.terms.dtype == np.uint64
    rows = p.lookup(term_hashes(["a", "b", "c", "zz"]))
    assert rows.dtype == np.int32 and rows[3] == -1 and sorted(rows[:3].tolist()) == [0, 1, 2]
    assert p.df(term_hashes(["a", "b", "c", "zz"])).tolist() == [2, 2, 1, 0]
    rb = int(rows[1])
    lo, hi = p.indptr[rb], p.indptr[rb + 1]
    assert p.docs[lo:hi].tolist() == [0, 2] and p.tf[lo:hi].tolist() == [2.0, 1.0]
    assert p.doc_len.tolist() == [3, 0, 2, 1]
    assert p.save(tmp_path) == ["bm25_terms.npy", "bm25_indptr.npy", "bm25_docs.npy", "bm25_tf.npy",
                                "bm25_doclen.npy"]
    for mmap in (True, False):
        q = Bm25Postings.load(tmp_path, mmap=mmap)
        for name in ("terms", "indptr", "docs", "tf", "doc_len"):
            np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
        assert q.total_len == 6 and (np.load(tmp_path / "bm25_terms.npy", allow_pickle=False).dtype == np.uint64)
    empty = Bm25Postings.from_tokens([[], []])
    assert empty.n_terms == 0 and (empty.lookup(term_hashes(["a"])) == -1).all()
    D, I = bm25_search([(0, empty)], [["a"]], 3)
    assert (I == -1).all() and np.isneginf(D).all()


# -- (a) the same scores and top-k as bm25s ------------------------------------------------------------------------
@pytest.mark.parametrize("k1,b", [(0.9, 0.4), (1.5, 0.75), (1.2, 1.0), (0.5, 0.0)])
def test_scores_equal_bm25s(word_index, corpus, k1, b):
    an = Bm25Analyzer()
    tokens = an.analyze([d.full_text for d in corpus])
    model = bm25s_model(tokens, k1, b)
    texts = word_queries()
    qtok = an.analyze(texts)
    with Index.open(word_index) as ix:
        s = Searcher(ix)
        kw = {} if (k1, b) == (0.9, 0.4) else {"k1": k1, "b": b}  # the index's defaults are bm25s's
        full = s.search(texts, k=len(corpus), mode="bm25", **kw)
        top = s.search(texts, k=10, mode="bm25", **kw)
    assert full.mode == "bm25"
    for q, toks in enumerate(qtok):
        ref = model.get_scores(toks) if toks else np.zeros(len(corpus), np.float32)
        hit = full.rows[q] >= 0
        # the hits are exactly the docs bm25s scores > 0, with the same scores
        assert set(full.rows[q, hit].tolist()) == set(np.flatnonzero(ref > 0).tolist()), texts[q]
        np.testing.assert_allclose(full.scores[q, hit], ref[full.rows[q, hit]], rtol=1e-5, atol=1e-6)
        # top-10: the same scores as bm25s's best, and the same docs up to ties
        n = min(10, int((ref > 0).sum()))
        best = np.sort(ref)[::-1][:n]
        np.testing.assert_allclose(top.scores[q, :n], best, rtol=1e-5, atol=1e-6)
        assert (top.rows[q, n:] == -1).all()
        for j in range(n):
            tied = np.isclose(ref, top.scores[q, j], rtol=1e-5, atol=1e-6)
            assert tied[top.rows[q, j]]
    # bm25s's own top-k (queries with a known term) agrees
    known = [i for i, t in enumerate(qtok) if any(w in model.vocab_dict for w in t)]
    res, sc = model.retrieve([qtok[i] for i in known], k=10, show_progress=False, n_threads=0)
    for r, q in enumerate(known):
        n = int((sc[r] > 0).sum())
        np.testing.assert_allclose(top.scores[q, :n], sc[r, :n], rtol=1e-5, atol=1e-6)
        ref = model.get_scores(qtok[q])
        for j in range(n):  # the same doc wherever no other doc has (about) the same score
            if np.isclose(ref, sc[r, j], rtol=1e-5, atol=1e-6).sum() == 1:
                assert top.rows[q, j] == res[r, j], (texts[q], j)


def test_repeated_query_terms_count_each_time(word_index):
    """As in bm25s, where a query is a token list: "run run" scores twice what "run" does."""
    with Index.open(word_index) as ix:
        s = Searcher(ix)
        one = s.search(["running"], k=20, mode="bm25")
        two = s.search(["run runs"], k=20, mode="bm25")  # both stem to "run"
    assert one.rows.tolist() == two.rows.tolist()
    hit = one.rows[0] >= 0
    np.testing.assert_allclose(two.scores[0, hit], 2 * one.scores[0, hit], rtol=1e-6)


def test_bm25_needs_no_encoder(word_index, monkeypatch):
    import hylex.engine.encoder as engine_encoder

    def refuse(*a, **kw):
        raise AssertionError("the bm25 arm must not load the LLM")

    monkeypatch.setattr(engine_encoder, "Encoder", refuse)
    with Index.open(word_index) as ix:
        s = Searcher(ix)
        r = s.search("connecting runners", k=5, mode="bm25", with_documents=True)
        assert r.shape == (1, 5) and r.ids[0, 0] is not None and r.documents[0][0]["id"] == r.ids[0, 0]
        h = s.search(["connect"], k=5, mode="hybrid", arms=["bm25"])
        assert h.rows[0, 0] == r.rows[0, 0] or h.scores[0, 0] == h.scores[0, 1]
        D, I = s.search_bm25(["connect", "the of"], 4)
        assert (I[1] == -1).all() and np.isneginf(D[1]).all()  # a query of stopwords matches nothing


# -- (b) global statistics stay exact when documents are split and added ---------------------------------------------
def test_segments_and_additions_equal_one_segment(tmp_path, corpus):
    enc = FakeEncoder()
    single, multi = tmp_path / "single", tmp_path / "multi"
    build_index(corpus, single, enc, progress=False)
    build_index(corpus[:200], multi, enc, segment_size=100, progress=False)
    build_index(corpus[200:], multi, enc, progress=False)  # added later, as a third segment
    texts = word_queries()
    qd, qs = enc.encode_queries(texts)
    with Index.open(single) as a, Index.open(multi) as b:
        assert len(a.segments) == 1 and len(b.segments) == 3 and b.validate() == []
        assert a.manifest["bm25"]["total_len"] == b.manifest["bm25"]["total_len"] > 0
        for mode, kw in [("bm25", {}), ("bm25", {"k1": 1.3, "b": 0.8}),
                         ("hybrid", {"arms": ("dense", "sparse", "bm25")}),
                         ("hybrid", {"arms": ("bm25", "sparse"), "fusion": "rrf"})]:
            ra = Searcher(a).search(None, k=25, mode=mode, dense=qd, sparse=qs, bm25_queries=texts, **kw)
            rb = Searcher(b).search(None, k=25, mode=mode, dense=qd, sparse=qs, bm25_queries=texts, **kw)
            # same rows (the same documents in the same order); BM25 and sparse scores bit-identical. A dense arm
            # may differ in the last float32 bit: BLAS sums a segment's inner products in an order that depends on
            # the matrix's size and the CPU's kernel (seen on an AMD EPYC: 1 ulp between 301 rows and 3 x 100)
            np.testing.assert_array_equal(ra.rows, rb.rows, err_msg=f"{mode} {kw}")
            if "dense" in kw.get("arms", ()):
                np.testing.assert_allclose(ra.scores, rb.scores, rtol=1e-6, atol=1e-7, err_msg=f"{mode} {kw}")
            else:
                np.testing.assert_array_equal(ra.scores, rb.scores, err_msg=f"{mode} {kw}")
            assert ra.ids.tolist() == rb.ids.tolist()
        # the test has teeth: one segment scored with its own statistics gives other scores
        seg = b.segments[2]
        tokens = b.bm25_analyzer.analyze(texts)
        D_local, I_local = bm25_search([(seg.row_offset, seg.bm25)], tokens, 25)
        D_glob, I_glob = bm25_search([(s.row_offset, s.bm25) for s in b.segments], tokens, len(corpus))
        q = next(i for i in range(len(texts)) if I_local[i, 0] >= 0)
        glob = dict(zip(I_glob[q].tolist(), D_glob[q].tolist()))
        assert D_local[q, 0] != pytest.approx(glob[int(I_local[q, 0])], rel=1e-3)


# -- (c) fusion of three arms, and argument checks ------------------------------------------------------------
@pytest.fixture(scope="module")
def searcher(built_index, fake_encoder):
    ix = Index.open(built_index)
    yield Searcher(ix, encoder=fake_encoder)
    ix.close()


def test_three_arm_fusion_equals_reference(searcher, queries):
    texts, qd, qs = queries
    depth, k = 30, 10
    Dd, Id = searcher.search_dense(qd, depth)
    Ds, Is = searcher.search_sparse(qs, depth)
    Db, Ib = searcher.search_bm25(texts, depth)
    arms = {"dense": (Dd, Id), "sparse": (Ds, Is), "bm25": (Db, Ib)}
    cases = [
        (("dense", "sparse", "bm25"), "convex", None, [1 / 3] * 3),
        (("dense", "sparse", "bm25"), "convex", [0.3, 0.3, 0.4], [0.3, 0.3, 0.4]),
        (("bm25", "dense"), "convex", [2.0, 0.0], [2.0, 0.0]),
        (("sparse", "bm25"), "rrf", None, [1.0, 1.0]),
        (("dense", "sparse", "bm25"), "rrf", [1.0, 0.5, 2.0], [1.0, 0.5, 2.0]),
    ]
    for names, fusion, weights, want_w in cases:
        r = searcher.search(texts, k=k, mode="hybrid", arms=names, weights=weights, fusion=fusion, depth=depth)
        pre = searcher.search(None, k=k, mode="hybrid", arms=names, weights=weights, fusion=fusion, depth=depth,
                              dense=qd, sparse=qs, bm25_queries=texts)
        D, I = fuse_ref(np.stack([arms[a][1] for a in names]), np.stack([arms[a][0] for a in names]), want_w,
                        fusion, k)
        for res in (r, pre):
            np.testing.assert_array_equal(res.rows, I, err_msg=str((names, fusion, weights)))
            np.testing.assert_allclose(res.scores, D, rtol=1e-6)
            assert res.mode == "hybrid"
    # the two-arm default is unchanged, and alpha follows the dense arm in any order
    a = searcher.search(texts, k=k, alpha=0.3)
    b = searcher.search(texts, k=k, arms="sparse,dense", weights=[0.7, 0.3])
    c = searcher.search(texts, k=k, arms=("sparse", "dense"), alpha=0.3)
    assert a.rows.tolist() == b.rows.tolist() == c.rows.tolist()
    # topical queries still find their topic with all three arms
    by_id = {d.id: d for d in make_docs(200)}
    r = searcher.search(texts[:20], k=1, arms=("dense", "sparse", "bm25"))
    assert sum(by_id[r.ids[q, 0]].metadata["topic"] == t.split()[0] for q, t in enumerate(texts[:20])) == 20


@pytest.mark.parametrize("kwargs,msg", [
    ({"arms": ("dense", "bm26")}, "arm 'bm26' is unknown"),
    ({"arms": ("dense", "bm25", "dense")}, "arm 'dense' is given twice"),
    ({"arms": ()}, "arms is empty"),
    ({"arms": 3}, "arms must be a sequence"),
    ({"arms": ("dense", "sparse", "bm25"), "weights": [0.5, 0.5]}, r"2 weight\(s\) for 3 arm\(s\)"),
    ({"weights": [0.5, -0.1]}, "finite and >= 0"),
    ({"weights": [0.5, float("nan")]}, "finite and >= 0"),
    ({"weights": [0.0, 0.0, 0.0]}, "all 0"),  # the stored arms are three
    ({"weights": ["a", "b"]}, "not a number"),
    ({"weights": "0.5,0.5"}, "sequence of numbers"),
    ({"weights": [0.5, 0.5], "alpha": 0.5}, "alpha or weights, not both"),
    ({"arms": ("dense", "sparse", "bm25"), "alpha": 0.2}, "pass weights"),
    ({"k1": 0}, "k1 must be a finite number > 0"),
    ({"k1": -1.0}, "k1 must be a finite number > 0"),
    ({"k1": float("inf")}, "k1 must be a finite number > 0"),
    ({"b": 1.5}, r"b must be in \[0, 1\]"),
    ({"b": -0.1}, r"b must be in \[0, 1\]"),
])
def test_bad_fusion_arguments(searcher, queries, kwargs, msg):
    texts, qd, qs = queries
    with pytest.raises(HylexError, match=msg):
        searcher.search(texts[:2], mode="hybrid", **kwargs)
    with pytest.raises(HylexError, match=msg):
        searcher.search(None, mode="hybrid", dense=qd, sparse=qs, bm25_queries=texts, **kwargs)


def test_bm25_query_errors(searcher, queries):
    texts, qd, qs = queries
    with pytest.raises(HylexError, match="bm25 arm needs query texts.*bm25_queries"):
        searcher.search(None, mode="bm25", dense=qd, sparse=qs)
    with pytest.raises(HylexError, match="bm25 arm needs query texts"):
        searcher.search(None, mode="hybrid", arms=("dense", "bm25"), dense=qd)
    with pytest.raises(HylexError, match="needs sparse query vectors"):
        searcher.search(None, mode="hybrid", arms=("sparse", "bm25"), dense=qd, bm25_queries=texts)
    with pytest.raises(HylexError, match="bm25_queries only with pre-encoded"):
        searcher.search(texts, mode="bm25", bm25_queries=texts)
    with pytest.raises(HylexError, match=r"\d+ dense queries but 3 bm25 query texts"):
        searcher.search(None, mode="hybrid", arms=("dense", "bm25"), dense=qd, bm25_queries=texts[:3])
    with pytest.raises(HylexError, match="query 1 is empty"):
        searcher.search(None, mode="bm25", bm25_queries=["fine", " "])
    with pytest.raises(HylexError, match="query 0 is empty or not a string"):
        searcher.search_bm25([3], 5)
    with pytest.raises(HylexError, match="k must be a positive integer"):
        searcher.search_bm25(["chess"], 0)
    with pytest.raises(HylexError, match="k1 must be"):
        searcher.search_bm25(["chess"], 5, k1=0.0)
    # bm25_queries are ignored by arms that do not use them; one text is one query
    assert searcher.search(None, mode="dense", dense=qd, bm25_queries=texts).shape == (len(texts), 10)
    assert searcher.search("chess pawn", mode="bm25", k=3).shape == (1, 3)


# -- index settings ------------------------------------------------------------------------------------------------
def test_index_bm25_settings(tmp_path, fake_encoder):
    docs = word_docs(30)
    p = tmp_path / "porter"
    build_index(docs, p, fake_encoder, bm25={"k1": 1.2, "b": 0.75, "stemmer": "porter", "stopwords": "none"},
                progress=False)
    with Index.open(p) as ix:
        m = ix.manifest["bm25"]
        assert m["analyzer"] == {"stemmer": "porter", "stopwords": "none"} and (m["k1"], m["b"]) == (1.2, 0.75)
        assert ix.bm25_analyzer == Bm25Analyzer("porter", "none")
        tokens = Bm25Analyzer("porter", "none").analyze([d.full_text for d in docs])
        assert m["total_len"] == sum(map(len, tokens))
        # searches default to the index's k1 and b
        r = Searcher(ix).search(["connecting the runners"], k=5, mode="bm25")
        ref = bm25s_model(tokens, 1.2, 0.75).get_scores(Bm25Analyzer("porter", "none").analyze(
            ["connecting the runners"])[0])
        np.testing.assert_allclose(r.scores[0], np.sort(ref)[::-1][:5], rtol=1e-5)
    # adding with other settings is refused; the same or none given is fine
    with pytest.raises(HylexError, match="has BM25 settings.*not"):
        build_index(word_docs(3, prefix="x"), p, fake_encoder, bm25={"k1": 0.9}, progress=False)
    build_index(word_docs(3, prefix="y"), p, fake_encoder, progress=False)
    build_index(word_docs(3, prefix="z"), p, fake_encoder, bm25={"k1": 1.2, "b": 0.75, "stemmer": "porter",
                                                                 "stopwords": "none"}, progress=False)
    with Index.open(p) as ix:
        assert ix.n_docs == len(docs) + 2 * 4 and ix.validate() == []
    for bad, msg in [({"k1": 0}, "k1"), ({"b": 2}, r"b must be in \[0, 1\]"), ({"stemmer": "nope"}, "stemmer"),
                     ({"colour": 1}, "colour"), ({"analyzer": {"stemmer": "none"}, "stemmer": "none"}, "not both")]:
        with pytest.raises(HylexError, match=msg):
            Index.create(tmp_path / "bad", fake_encoder.describe(), bm25=bad)
        assert not (tmp_path / "bad").exists()


def test_validate_finds_bm25_damage(index_copy):
    f = index_copy / "segments" / "seg-000000" / "bm25_doclen.npy"
    arr = np.load(f)
    arr[0] += 1
    np.save(f, arr, allow_pickle=False)
    with pytest.raises(IndexFormatError, match="bm25_doclen.npy does not match its checksum"):
        Index.open(index_copy)
    with Index.open(index_copy, verify=False) as ix:
        problems = ix.validate()
    assert any("bm25_doclen.npy" in p and "checksum" in p for p in problems)
    assert any("BM25 document lengths" in p for p in problems)


# -- (d) command line ------------------------------------------------------------------------------------------------
def test_cli_bm25(tmp_path, capsys, fake_cli, corpus):
    src = write_jsonl(tmp_path / "corpus.jsonl", corpus)
    ix = tmp_path / "ix"
    rc, out, err = run(capsys, "index", src, "--index", ix, "--bm25-k1", 1.2, "--bm25-b", 0.7,
                       "--bm25-stemmer", "english", "--segment-size", 120)
    assert rc == 0, err
    n_made = len(fake_cli)
    with Index.open(ix) as index:
        assert (index.bm25_k1, index.bm25_b) == (1.2, 0.7) and len(index.segments) == 3
        lib = Searcher(index).search(["connecting runners"], k=5, mode="bm25")
        lib3 = Searcher(index, encoder=FakeEncoder()).search(
            ["connecting runners"], k=5, arms=("dense", "sparse", "bm25"), weights=[0.3, 0.3, 0.4])
    rc, out, err = run(capsys, "search", ix, "connecting runners", "-k", 5, "--mode", "bm25", "--json")
    assert rc == 0, err
    hits = json.loads(out)[0]["hits"]
    assert [h["id"] for h in hits] == lib.ids[0].tolist()
    np.testing.assert_allclose([h["score"] for h in hits], lib.scores[0], rtol=1e-6)
    assert len(fake_cli) == n_made  # BM25 alone never made an encoder
    rc, out, err = run(capsys, "search", ix, "connecting runners", "-k", 5, "--arms", "dense,sparse,bm25",
                       "--weights", "0.3,0.3,0.4", "--json")
    assert rc == 0, err
    assert [h["id"] for h in json.loads(out)[0]["hits"]] == lib3.ids[0].tolist()
    rc, out, err = run(capsys, "search", ix, "connecting runners", "-k", 3, "--mode", "bm25", "--bm25-k1", 2.0)
    assert rc == 0 and out.strip().splitlines()[0] == "query: connecting runners"
    # one-line errors
    rc, out, err = run(capsys, "search", ix, "q", "--arms", "dense,bm42")
    assert_one_line_error(rc, err, "arm 'bm42' is unknown")
    rc, out, err = run(capsys, "search", ix, "q", "--arms", "dense,bm25", "--weights", "1,2,3")
    assert_one_line_error(rc, err, "3 weight(s) for 2 arm(s)")
    rc, out, err = run(capsys, "search", ix, "q", "--mode", "bm25", "--bm25-b", 3)
    assert_one_line_error(rc, err, "b must be in [0, 1]")
    n_made = len(fake_cli)
    rc, out, err = run(capsys, "index", src, "--index", tmp_path / "new", "--bm25-stemmer", "klingon")
    assert_one_line_error(rc, err, "stemmer 'klingon' is unknown")
    assert not (tmp_path / "new").exists() and len(fake_cli) == n_made  # refused before a model was made


def test_cli_eval_arms(tmp_path, capsys, fake_cli):
    docs = make_docs(120)
    beir = tmp_path / "toy"
    write_jsonl(beir / "corpus.jsonl", docs)
    write_jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": t} for i, t in enumerate(QUERY_TEXTS[:20])])
    topics = [t.split()[0] for t in QUERY_TEXTS[:20]]
    (beir / "qrels").mkdir()
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\t{d.id}\t1\n" for i, t in enumerate(topics) for d in docs if d.metadata["topic"] == t))
    ix = tmp_path / "ix"
    assert run(capsys, "index", beir / "corpus.jsonl", "--index", ix)[0] == 0
    rc, out, err = run(capsys, "eval", beir, "--index", ix, "--json", "--runs-dir", tmp_path / "runs",
                       "--arms", "dense,sparse,bm25", "--weights", "0.2,0.3,0.5")
    assert rc == 0, err
    res = json.loads(out)
    assert set(res) >= {"dense", "sparse", "bm25", "hybrid"}
    assert res["bm25"]["ndcg@10"] > 0.9 and res["hybrid"]["ndcg@10"] > 0.9
    rc, out, err = run(capsys, "eval", beir, "--index", ix, "--arms", "dense,dense")
    assert_one_line_error(rc, err, "arm 'dense' is given twice")


# -- (e) indexes of older formats ----------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2])
def test_old_format_index_is_refused_with_rebuild_hint(index_copy, version):
    mf = index_copy / "manifest.json"
    m = json.loads(mf.read_text())
    m["format_version"] = version
    if version == 1:
        del m["bm25"]
    mf.write_text(json.dumps(m))
    what = "float sparse postings, no BM25" if version == 1 else "float sparse postings"
    with pytest.raises(IndexFormatError, match=rf"format version {version} \({what}\).*reads versions 3, 4 and 5"
                                               r".*rebuild the index"):
        Index.open(index_copy)
    with pytest.raises(IndexFormatError, match="rebuild"):
        Searcher(index_copy)
