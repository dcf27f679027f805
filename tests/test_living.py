"""A living index: upserts, deletes, merges and metadata filters, each checked against a from-scratch build of
the same live documents (hypothesis drives random sequences of changes)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import QUERY_TEXTS, assert_same_results, make_docs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hylex.corpus import Document
from hylex.errors import HylexError
from hylex.indexing import Index
from hylex.indexing.index import merge_candidates
from hylex.retrieval import (
    FilterError,
    Searcher,
    check_filter,
    delete_where,
    matching_rows,
)

POOL = make_docs(60, seed=11, prefix="p")
# second versions of the same ids (upserts): other texts, other metadata
POOL_V2 = [Document(id=d.id, title=d.title + " revised", text=" ".join(reversed(d.text.split())) + " revised",
                    metadata={**d.metadata, "v": 2}) for d in make_docs(60, seed=12, prefix="p")]


def encode(enc, docs):
    out = enc.encode_documents([d.full_text for d in docs])
    return out.dense, out.sparse


def all_modes(index, enc, k=10, flt=None):
    qd, qs = enc.encode_queries(QUERY_TEXTS)
    s = Searcher(index, encoder=enc)
    kw = {"filter": flt}
    return {
        "dense": s.search(None, k=k, mode="dense", dense=qd, **kw),
        "sparse": s.search(None, k=k, mode="sparse", sparse=qs, **kw),
        "bm25": s.search(None, k=k, mode="bm25", bm25_queries=QUERY_TEXTS, **kw),
        "hybrid": s.search(None, k=k, mode="hybrid", arms=("dense", "sparse", "bm25"), dense=qd, sparse=qs,
                           bm25_queries=QUERY_TEXTS, **kw),
        "rrf": s.search(None, k=k, mode="hybrid", fusion="rrf", dense=qd, sparse=qs, **kw),
    }


def scratch(tmp_path, enc, docs, name="scratch", like=None):
    """A fresh one-segment index of ``docs``; with ``like`` (an index holding them), in that index's row order,
    so that both break score ties (by row) alike."""
    if like is not None:
        rows = like.rows_of([d.id for d in docs])
        docs = [d for _, d in sorted(zip(rows, docs), key=lambda x: x[0])]
    ix = Index.create(tmp_path / name, enc.describe())
    if docs:
        ix.add(docs, *encode(enc, docs))
    return ix


def assert_equivalent(a, b, enc, k=10, flt=None):
    ra, rb = all_modes(a, enc, k, flt), all_modes(b, enc, k, flt)
    for mode in ra:
        # BM25 statistics are float sums: allow their rounding; every other arm is exact
        assert_same_results(ra[mode], rb[mode], atol=1e-4 if mode in ("bm25", "hybrid") else 1e-5)


# -- upsert / delete / merge ---------------------------------------------------------------------------------
def test_upsert_replaces_and_delete_removes(tmp_path, fake_encoder):
    enc = fake_encoder
    with Index.create(tmp_path / "ix", enc.describe(), merge={"auto": False}) as ix:
        ix.add(POOL[:30], *encode(enc, POOL[:30]))
        ix.add(POOL[30:50], *encode(enc, POOL[30:50]))
        with pytest.raises(HylexError, match="already in the index.*upsert"):
            ix.add(POOL[:2], *encode(enc, POOL[:2]))
        ix.upsert(POOL_V2[25:35], *encode(enc, POOL_V2[25:35]))  # replaces docs of both segments
        assert ix.n_docs == 50 and ix.n_deleted == 10
        assert ix.get(["p0026"])[0]["metadata"]["v"] == 2
        assert ix.delete(["p0000", "p0031", "nope", "p0000"]) == 2
        assert ix.delete(["p0000"]) == 0  # already gone
        assert ix.n_docs == 48 and ix.get(["p0000", "p0031"]) == [None, None]
        live = [d for d in POOL[1:25]] + POOL_V2[25:31] + POOL_V2[32:35] + POOL[35:50]
        assert None not in ix.rows_of([d.id for d in live])
        ref = scratch(tmp_path, enc, live, like=ix)
        assert_equivalent(ix, ref, enc, k=10)
        assert ix.validate() == []
        # merge drops the deleted documents and changes nothing a search sees
        before = all_modes(ix, enc)
        name = ix.merge()
        assert name is not None and len(ix.segments) == 1 and ix.n_deleted == 0 and ix.n_docs == 48
        after = all_modes(ix, enc)
        for mode in before:
            assert_same_results(before[mode], after[mode], atol=1e-4)
        assert ix.validate() == []
        assert ix.merge() is None  # one segment, nothing deleted
        ref.close()
    with Index.open(tmp_path / "ix") as ix:  # durable: a fresh reader sees the same
        assert ix.n_docs == 48 and ix.validate() == []
        assert ix.stats()["deleted"] == 0


def test_deleted_documents_never_hit_and_k_hits_still_come(tmp_path, fake_encoder):
    """Delete most documents: every arm still returns k hits (k live matches exist) and none is deleted."""
    enc = fake_encoder
    docs = make_docs(120, seed=3)
    with Index.create(tmp_path / "ix", enc.describe(), merge={"auto": False}) as ix:
        ix.add(docs, *encode(enc, docs))
        gone = {d.id for d in docs[:100]}
        ix.delete(sorted(gone))
        for mode, res in all_modes(ix, enc, k=10).items():
            ids = [i for row in res.ids for i in row if i is not None]
            assert not gone & set(ids), mode
            if mode in ("dense", "rrf"):  # dense has every live doc as a candidate
                assert (res.ids != None).sum(1).min() == 10, mode
        assert_equivalent(ix, scratch(tmp_path, enc, docs[100:], like=ix), enc)


def test_bm25_statistics_follow_deletes_exactly(tmp_path, fake_encoder):
    """Document frequencies, N and the average length count live documents only: scores equal a fresh build."""
    enc = fake_encoder
    docs = make_docs(80, seed=4)
    with Index.create(tmp_path / "ix", enc.describe(), merge={"auto": False}) as ix:
        ix.add(docs[:40], *encode(enc, docs[:40]))
        ix.add(docs[40:], *encode(enc, docs[40:]))
        ix.delete([d.id for d in docs[::3]])
        live = [d for i, d in enumerate(docs) if i % 3]
        ref = scratch(tmp_path, enc, live, like=ix)
        a = Searcher(ix).search(QUERY_TEXTS, k=20, mode="bm25")
        b = Searcher(ref).search(QUERY_TEXTS, k=20, mode="bm25")
        assert_same_results(a, b, atol=1e-5)
        assert ix.manifest["bm25"]["total_len"] == ref.manifest["bm25"]["total_len"]


def test_merge_policy():
    assert merge_candidates([("a", 10, 0), ("b", 12, 0)], 3, 0.5) == []
    assert merge_candidates([("a", 10, 0), ("b", 12, 0), ("c", 20, 0)], 3, 0.5) == ["a", "b", "c"]
    assert merge_candidates([("a", 10, 0), ("b", 100, 0), ("c", 20, 0)], 3, 0.5) == []
    assert merge_candidates([("a", 4, 6), ("b", 12, 0)], 3, 0.5) == ["a"]  # 60% deleted: rewritten alone
    assert merge_candidates([("a", 0, 5)], 3, 0.5) == ["a"]
    # max_docs: a tier whose merge would be too large merges only its smallest segments that fit, if still factor
    tier = [("a", 10, 0), ("b", 12, 0), ("c", 20, 0), ("d", 15, 0)]
    assert merge_candidates(tier, 3, 0.5, 57) == ["a", "b", "c", "d"]
    assert merge_candidates(tier, 3, 0.5, 40) == ["a", "b", "d"]
    assert merge_candidates(tier, 3, 0.5, 36) == []


def test_auto_merge_never_writes_a_segment_over_max_docs(tmp_path, fake_encoder):
    enc = fake_encoder
    with Index.create(tmp_path / "ix", enc.describe(), merge={"factor": 3, "max_docs": 20}) as ix:
        for i in range(0, 60, 5):
            ix.add(POOL[i:i + 5], *encode(enc, POOL[i:i + 5]))
            assert max(s.n_live for s in ix.segments) <= 20
        # three 5s merge into a 15; 15s would merge into 45 > 20, so four 15s stay
        assert [s.n_live for s in ix.segments] == [15] * 4 and ix.n_docs == 60 and ix.validate() == []
        assert_equivalent(ix, scratch(tmp_path, enc, POOL, like=ix), enc)
    with pytest.raises(HylexError, match="max_docs must be an integer >= 1"):
        Index.create(tmp_path / "bad", enc.describe(), merge={"max_docs": 0})


def test_auto_merge_keeps_segments_few(tmp_path, fake_encoder):
    enc = fake_encoder
    with Index.create(tmp_path / "ix", enc.describe(), merge={"factor": 3}) as ix:
        for i in range(0, 60, 5):
            ix.add(POOL[i:i + 5], *encode(enc, POOL[i:i + 5]))
            assert len(ix.segments) < 3 * 3  # at most factor - 1 per tier
        assert ix.n_docs == 60 and ix.validate() == []
        assert_equivalent(ix, scratch(tmp_path, enc, POOL, like=ix), enc)
        # a segment with most documents deleted is rewritten without them
        big = max(ix.segments, key=lambda s: s.n_docs)
        ids = [d["id"] for d in ix.documents(range(big.row_offset, big.row_offset + big.n_docs))]
        ix.delete(ids[:int(len(ids) * 0.8)])
        assert all(s.n_deleted <= 0.5 * s.n_docs for s in ix.segments)
        assert ix.validate() == []


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(st.integers(0, 59), min_size=1, max_size=12, unique=True)),
    st.tuples(st.just("upsert"), st.lists(st.integers(0, 59), min_size=1, max_size=12, unique=True)),
    st.tuples(st.just("delete"), st.lists(st.integers(0, 59), min_size=1, max_size=12)),
    st.tuples(st.just("merge"), st.just([])),
), min_size=1, max_size=8)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops, factor=st.sampled_from([2, 3, 100]))
def test_random_changes_equal_a_fresh_build(tmp_path_factory, fake_encoder, sequence, factor):
    """Any sequence of add / upsert / delete / merge (with automatic merges) searches exactly like a
    from-scratch build of the live documents, in every mode."""
    enc = fake_encoder
    tmp = tmp_path_factory.mktemp("seq")
    live: dict[str, Document] = {}
    with Index.create(tmp / "ix", enc.describe(), merge={"factor": factor}) as ix:
        for op, idx in sequence:
            if op == "add":
                batch = [POOL[i] for i in idx if POOL[i].id not in live]
                if batch:
                    ix.add(batch, *encode(enc, batch))
                    live.update((d.id, d) for d in batch)
            elif op == "upsert":
                batch = [POOL_V2[i] if POOL[i].id in live else POOL[i] for i in idx]
                ix.upsert(batch, *encode(enc, batch))
                live.update((d.id, d) for d in batch)
            elif op == "delete":
                ids = [POOL[i].id for i in idx]
                n = ix.delete(ids)
                assert n == len({i for i in ids if i in live})
                for i in ids:
                    live.pop(i, None)
            else:
                ix.merge()
            assert ix.n_docs == len(live)
        assert ix.validate() == []
        assert sorted(d["id"] for d in ix.get(sorted(live))) == sorted(live)
        ref = scratch(tmp, enc, list(live.values()), like=ix)
        assert_equivalent(ix, ref, enc)
        flt = {"topic": {"$in": ["astronomy", "baking", "chess"]}}
        assert_equivalent(ix, ref, enc, flt=flt)
        ref.close()


# -- filters -------------------------------------------------------------------------------------------------
META_DOCS = [Document(id=f"m{i:03d}", text=d.text, title=d.title, metadata=m) for i, (d, m) in enumerate(zip(
    make_docs(40, seed=21), [
        {"topic": t, "year": 2000 + (i % 25), "tags": ["a", "b"] if i % 4 == 0 else ["c"], "score": i / 7,
         "src": {"name": "wiki" if i % 3 else "news"}, "flag": i % 2 == 0, **({"opt": None} if i % 5 == 0 else {})}
        for i, t in enumerate(["astronomy", "baking", "chess", "fishing"] * 10)]))]


def py_match(meta: dict, flt: dict) -> bool:
    """A plain-Python reference of the filter semantics (module doc of hylex.retrieval.filters)."""
    def values(field):
        v = meta
        for part in field.split("."):
            if not isinstance(v, dict) or part not in v:
                return None
            v = v[part]
        return v if isinstance(v, list) else [v]

    def eq(vals, x):
        def same(a, b):
            if a is None or b is None:
                return a is b
            if isinstance(a, bool) or isinstance(b, bool):
                return isinstance(a, bool) and isinstance(b, bool) and a == b
            if isinstance(a, str) or isinstance(b, str):
                return isinstance(a, str) and isinstance(b, str) and a == b
            return float(a) == float(b)
        return vals is not None and any(same(v, x) for v in vals)

    def cmp(vals, op, x):
        if vals is None:
            return False
        kind = str if isinstance(x, str) else (int, float)
        ok = [v for v in vals if isinstance(v, kind) and not isinstance(v, bool)]
        f = {"$gt": lambda a: a > x, "$gte": lambda a: a >= x, "$lt": lambda a: a < x, "$lte": lambda a: a <= x}[op]
        return any(f(v) for v in ok)

    for key, cond in flt.items():
        if key == "$and":
            if not all(py_match(meta, f) for f in cond):
                return False
        elif key == "$or":
            if not any(py_match(meta, f) for f in cond):
                return False
        elif key == "$not":
            if py_match(meta, cond):
                return False
        else:
            vals = values(key)
            if not (isinstance(cond, dict) and any(k.startswith("$") for k in cond)):
                cond = {"$eq": cond}
            for op, x in cond.items():
                ok = {"$eq": lambda: eq(vals, x), "$ne": lambda: not eq(vals, x),
                      "$in": lambda: any(eq(vals, v) for v in x), "$nin": lambda: not any(eq(vals, v) for v in x),
                      "$exists": lambda: (vals is not None) == x}.get(op, lambda: cmp(vals, op, x))()
                if not ok:
                    return False
    return True


FILTERS = [
    {"topic": "baking"}, {"topic": "baking", "flag": True}, {"year": {"$gte": 2010, "$lt": 2015}},
    {"year": 2003.0}, {"score": {"$gt": 2.5}}, {"topic": {"$in": ["chess", "fishing"]}},
    {"topic": {"$nin": ["chess", "fishing"]}}, {"topic": {"$ne": "chess"}}, {"tags": "a"}, {"tags": {"$in": ["c"]}},
    {"src.name": "news"}, {"opt": {"$exists": True}}, {"opt": {"$exists": False}}, {"opt": None},
    {"$or": [{"topic": "chess"}, {"year": {"$lte": 2002}}]}, {"$not": {"topic": "chess"}},
    {"$and": [{"flag": False}, {"$or": [{"tags": "a"}, {"src.name": "news"}]}]},
    {"title": {"$gte": "C"}}, {"flag": 1}, {"missing": "x"}, {"topic": "nothing-matches"},
]


@pytest.fixture(scope="module")
def meta_index(tmp_path_factory, fake_encoder):
    path = tmp_path_factory.mktemp("meta") / "ix"
    with Index.create(path, fake_encoder.describe(), merge={"auto": False}) as ix:
        ix.add(META_DOCS[:25], *encode(fake_encoder, META_DOCS[:25]))
        ix.add(META_DOCS[25:], *encode(fake_encoder, META_DOCS[25:]))
        ix.delete(["m003", "m030"])
    return path


@pytest.mark.parametrize("flt", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_filter_matches_reference(meta_index, flt):
    with Index.open(meta_index) as ix:
        got = {d["id"] for d in ix.documents(matching_rows(ix, flt))}
    want = {d.id for d in META_DOCS if d.id not in ("m003", "m030") and py_match(d.metadata, flt)}
    assert got == want


@pytest.mark.parametrize("flt", [FILTERS[0], FILTERS[2], FILTERS[14], FILTERS[16]])
def test_filtered_search_equals_a_build_of_the_matching_documents(meta_index, tmp_path, fake_encoder, flt):
    """Pre-filtering: the filtered top-k is the top-k of an index holding only the matching documents (BM25
    statistics stay those of the whole index, so the bm25 arm is compared on ids and order only)."""
    enc = fake_encoder
    matching = [d for d in META_DOCS if d.id not in ("m003", "m030") and py_match(d.metadata, flt)]
    with Index.open(meta_index) as ix:
        ref = scratch(tmp_path, enc, matching, like=ix)
        ra, rb = all_modes(ix, enc, k=5, flt=flt), all_modes(ref, enc, k=5)
        for mode in ("dense", "sparse"):
            assert_same_results(ra[mode], rb[mode])
        for q in range(len(QUERY_TEXTS)):  # hits of every mode pass the filter, and there are min(k, n) of them
            for mode in ra:
                ids = [i for i in ra[mode].ids[q] if i is not None]
                assert set(ids) <= {d.id for d in matching}, mode
            assert sum(i is not None for i in ra["dense"].ids[q]) == min(5, len(matching))


def test_filter_matching_nothing_returns_empty_results(meta_index, fake_encoder):
    with Index.open(meta_index) as ix:
        for mode, res in all_modes(ix, fake_encoder, k=4, flt={"topic": "none"}).items():
            assert (res.ids == None).all() and np.isneginf(res.scores).all(), mode
        res = Searcher(ix).search(["bread"], k=3, mode="bm25", filter='{"year": {"$gt": 3000}}')
        assert res.shape == (1, 3) and (res.ids == None).all()


@pytest.mark.parametrize("bad, msg", [
    ("{oops", "not valid JSON"), ([1], "must be an object"), ({"$foo": 1}, "unknown operator '\\$foo'"),
    ({"a": {"$regex": "x"}}, "unknown operator '\\$regex'"), ({"a": {"$in": "x"}}, "must be a list"),
    ({"a": {"$gt": [1]}}, "finite number or a string"), ({"a": {"$gt": float("nan")}}, "finite number"),
    ({"a": {"$exists": 1}}, "true or false"), ({"$and": []}, "non-empty list"), ({"a": [1, 2]}, "equality needs"),
    ({"$or": [{"a": 1}, "x"]}, r"filter\.\$or\[1\] must be an object"), ({"": 1}, "empty field name"),
])
def test_bad_filters_are_named(bad, msg):
    with pytest.raises(FilterError, match=msg):
        check_filter(bad)


def test_delete_by_filter(tmp_path, fake_encoder):
    enc = fake_encoder
    with Index.create(tmp_path / "ix", enc.describe(), merge={"auto": False}) as ix:
        ix.add(META_DOCS, *encode(enc, META_DOCS))
        n = delete_where(ix, {"topic": "chess"})
        assert n == 10 and ix.n_docs == 30
        assert delete_where(ix, {"topic": "chess"}) == 0
        assert matching_rows(ix, {"topic": "chess"}) == []
        assert_equivalent(ix, scratch(tmp_path, enc, [d for d in META_DOCS if d.metadata["topic"] != "chess"],
                                  like=ix),
                          enc)


# -- snapshots and writers -----------------------------------------------------------------------------------
def test_reader_keeps_its_snapshot_while_a_writer_commits(tmp_path, fake_encoder):
    enc = fake_encoder
    with Index.create(tmp_path / "ix", enc.describe(), merge={"auto": False}) as w:
        w.add(POOL[:20], *encode(enc, POOL[:20]))
        w.add(POOL[20:40], *encode(enc, POOL[20:40]))
        reader = Index.open(tmp_path / "ix")
        before = all_modes(reader, enc)
        w.delete([d.id for d in POOL[:10]])
        w.upsert(POOL_V2[15:25], *encode(enc, POOL_V2[15:25]))
        w.merge()  # the reader's segments become garbage, kept while it holds its snapshot
        after = all_modes(reader, enc)
        for mode in before:
            assert before[mode].ids.tolist() == after[mode].ids.tolist(), mode
            np.testing.assert_array_equal(before[mode].scores, after[mode].scores)
        assert reader.n_docs == 40 and w.n_docs == 30
        with pytest.raises(HylexError, match="another process is writing"):
            Index.open(tmp_path / "ix", writable=True)
        reader.close()
        w.add(POOL[40:45], *encode(enc, POOL[40:45]))  # the first commit after it closed removes the garbage
        assert len(list((tmp_path / "ix" / "segments").iterdir())) == len(w.segments)
        assert w.store.count() == w.n_docs and w.validate() == []


def test_version_3_directory_is_read_and_upgraded(index_copy, fake_encoder):
    mf = index_copy / "manifest.json"
    m = json.loads(mf.read_text())
    for key in ("next_row", "generation", "garbage", "merge"):
        del m[key]
    m["format_version"] = 3
    mf.write_text(json.dumps(m))
    with Index.open(index_copy, writable=True) as ix:
        assert ix.n_docs == 200
        ix.delete(["d0001"])
        assert ix.n_docs == 199
    m = json.loads(mf.read_text())
    assert m["format_version"] == 5 and m["next_row"] == 200


@pytest.mark.parametrize("factory", ["HNSW8", "IVF2,Flat", "SQ8", "IVF2,PQ4x4"])
def test_merge_with_other_faiss_indexes(tmp_path, fake_encoder, factory):
    """Merges read the vectors back (HNSW stores them; PQ codes are lossy, so the raw vectors are kept beside
    them; SQ likewise): the merged index equals a fresh build of the live documents in the same order."""
    enc = fake_encoder
    with Index.create(tmp_path / "ix", enc.describe(), factory, merge={"auto": False}) as ix:
        ix.add(POOL[:30], *encode(enc, POOL[:30]))
        ix.add(POOL[30:], *encode(enc, POOL[30:]))
        lossy = (tmp_path / "ix" / "segments" / "seg-000000" / "dense_raw.npy").exists()
        assert lossy == ("Q" in factory)
        ix.delete([d.id for d in POOL[::4]])
        ix.merge()
        live = [d for i, d in enumerate(POOL) if i % 4]
        ref = Index.create(tmp_path / "ref", enc.describe(), factory)
        ref.add(live, *encode(enc, live))
        qd = enc.encode_queries(QUERY_TEXTS).dense
        a = Searcher(ix).search(None, k=5, mode="dense", dense=qd)
        b = Searcher(ref).search(None, k=5, mode="dense", dense=qd)
        assert_same_results(a, b)
        assert ix.validate() == []


def test_maxsim_segments_merge_and_filter(tmp_path, fake_encoder):
    """Documents with several dense vectors (chunks, maxsim): deletes and filters mask every vector of a
    document, and a merge keeps each live document's vectors."""
    enc = fake_encoder
    docs = POOL[:24]
    dense, sparse = encode(enc, docs)
    rng = np.random.default_rng(0)
    owner = np.repeat(np.arange(len(docs)), rng.integers(1, 4, len(docs)))
    vecs = dense[owner] + 0.05 * rng.standard_normal((len(owner), dense.shape[1])).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    half = int(np.searchsorted(owner, 12))
    qd = enc.encode_queries(QUERY_TEXTS).dense
    with Index.create(tmp_path / "ix", enc.describe(), merge={"auto": False}) as ix:
        ix.add(docs[:12], vecs[:half], sparse[:12], owner[:half])
        ix.add(docs[12:], vecs[half:], sparse[12:], owner[half:] - 12)
        gone = {d.id for d in docs[::3]}
        ix.delete(sorted(gone))
        s = Searcher(ix)
        res = s.search(None, k=24, mode="dense", dense=qd, filter={"topic": {"$ne": "chess"}})
        hits = {i for row in res.ids for i in row if i is not None}
        assert not hits & gone and all(ix.get([h])[0]["metadata"]["topic"] != "chess" for h in hits)
        # every live document is a candidate: k=24 returns all 16 live ones
        assert (res.ids != None).sum(1).max() == sum(  # noqa: E711
            d.id not in gone and d.metadata["topic"] != "chess" for d in docs)
        before = s.search(None, k=8, mode="dense", dense=qd)
        ix.merge()
        after = Searcher(ix).search(None, k=8, mode="dense", dense=qd)
        assert_same_results(before, after)
        assert ix.validate() == []


def test_reader_refresh_takes_up_other_commits(tmp_path, fake_encoder):
    enc = fake_encoder
    with Index.create(tmp_path / "ix", enc.describe(), merge={"auto": False}) as w:
        w.add(POOL[:20], *encode(enc, POOL[:20]))
        reader = Index.open(tmp_path / "ix")
        assert reader.refresh() is False  # nothing new: one stat
        first = reader.segments[0]
        w.add(POOL[20:30], *encode(enc, POOL[20:30]))
        w.delete([POOL[0].id])
        assert reader.refresh() is True and reader.n_docs == 29
        assert reader.segments[1].name == w.segments[1].name and reader.get([POOL[0].id]) == [None]
        assert_equivalent(reader, w, enc)
        w.merge()
        w.add(POOL[30:35], *encode(enc, POOL[30:35]))  # the merged segments stay: the reader still holds them
        assert reader.refresh() is True and len(reader.segments) == 2 and reader.n_docs == 34
        assert first not in reader.segments
        assert_equivalent(reader, scratch(tmp_path, enc, POOL[1:35], like=w), enc)
        reader.close()
    assert w.refresh() is False  # a writer is always current


def test_writing_commits_through_a_read_only_handle_and_releases_the_lock(tmp_path, fake_encoder):
    """Index.writing(): a reader takes the writer lock for a few commits, first taking up what others committed,
    and gives the lock back, so writers in several processes (the service's workers) can take turns."""
    from hylex.errors import IndexLockedError

    enc = fake_encoder
    with Index.create(tmp_path / "ix", enc.describe(), merge={"auto": False}) as w:
        w.add(POOL[:10], *encode(enc, POOL[:10]))
    a, b = Index.open(tmp_path / "ix"), Index.open(tmp_path / "ix")
    try:
        with pytest.raises(HylexError, match="read-only"):
            a.upsert(POOL[10:12], *encode(enc, POOL[10:12]))
        with a.writing():
            a.upsert(POOL[10:15], *encode(enc, POOL[10:15]))
            with pytest.raises(IndexLockedError, match="another process is writing"):
                Index.open(tmp_path / "ix", writable=True)
            with pytest.raises(IndexLockedError):
                with b.writing():
                    pass
        assert not a.writable and a.n_docs == 15
        assert a.refresh() is False  # its own commit is already loaded
        with pytest.raises(HylexError, match="read-only"):
            a.delete([POOL[0].id])
        with b.writing():  # b had not seen a's commit: it is taken up before b writes
            assert b.n_docs == 15
            b.delete([POOL[0].id, POOL[11].id])
        assert a.refresh() is True and a.n_docs == 13 and a.get([POOL[11].id]) == [None]
        with Index.open(tmp_path / "ix", writable=True) as w:  # the lock is free again
            w.add(POOL[20:22], *encode(enc, POOL[20:22]))
        with a.writing():  # a failed commit leaves the handle read-only, unlocked and unchanged
            with pytest.raises(HylexError, match="twice"):
                a.add([POOL[30], POOL[30]], *encode(enc, [POOL[30], POOL[30]]))
        assert not a.writable and a.n_docs == 15
        with Index.open(tmp_path / "ix", writable=True):
            pass
        live = [d for d in POOL[1:22] if d.id not in (POOL[11].id,) and d not in POOL[15:20]]
        assert_equivalent(a, scratch(tmp_path, enc, live, like=a), enc)
    finally:
        a.close()
        b.close()


def test_a_writer_waits_for_the_lock_when_asked(tmp_path, fake_encoder):
    import threading
    import time

    from hylex.errors import IndexLockedError

    enc = fake_encoder
    Index.create(tmp_path / "ix", enc.describe()).close()
    held = Index.open(tmp_path / "ix", writable=True)
    t0 = time.monotonic()
    with pytest.raises(IndexLockedError, match=r"waited 0.2 s"):
        Index.open(tmp_path / "ix", writable=True, wait=0.2)
    assert time.monotonic() - t0 >= 0.2
    with pytest.raises(HylexError, match="wait must be a number"):
        Index.open(tmp_path / "ix", writable=True, wait=-1)
    timer = threading.Timer(0.3, held.close)
    timer.start()
    with Index.open(tmp_path / "ix", writable=True, wait=10) as w:  # got it once the holder closed
        assert time.monotonic() - t0 >= 0.3
        w.add(POOL[:3], *encode(enc, POOL[:3]))
    timer.join()
    reader = Index.open(tmp_path / "ix")
    reader.acquire_writer()
    with pytest.raises(HylexError, match="already holds"):
        reader.acquire_writer()
    with reader.writing():  # uses the lock already taken, and leaves it held
        reader.delete([POOL[0].id])
    with pytest.raises(IndexLockedError):
        Index.open(tmp_path / "ix", writable=True)
    reader.release_writer()
    Index.open(tmp_path / "ix", writable=True).close()
    reader.close()


# -- disk: small segments, garbage removed when no reader needs it (issue 12, item 15) ---------------------------
def _du(path) -> int:
    from pathlib import Path

    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _superseded(path) -> list[str]:
    """What the index directory holds beyond what its manifest names (segment directories and files, stored rows
    of no listed segment), and the garbage entries its manifest still lists."""
    m = json.loads((path / "manifest.json").read_text())
    listed = {s["name"]: s for s in m["segments"]}
    out = [f"garbage entry {g}" for g in m.get("garbage", [])]
    for d in (path / "segments").iterdir():
        if d.name not in listed:
            out.append(f"segment {d.name}")
            continue
        out += [f"{d.name}/{f.name}" for f in d.iterdir() if f.name not in listed[d.name]["files"]]
    with Index.open(path) as ix:
        rows = {r for seg in ix.segments for r in range(seg.row_offset, seg.row_offset + seg.n_docs)}
        out += [f"row {r}" for r, _ in ix.store.scan(0, 1 << 62) if r not in rows]
    return out


def test_a_small_upsert_adds_a_small_segment(tmp_path):
    """A 3-document upsert into an index of the default model's sizes (dense 576, vocabulary 49,152) wrote a
    993,698-byte segment, 983,440 bytes of it vocabulary-sized per-term arrays; now it is a few KB."""
    from conftest import FakeEncoder

    enc = FakeEncoder(dim=576, vocab_size=49152)
    with Index.create(tmp_path / "ix", enc.describe()) as ix:
        ix.add(POOL[:40], *encode(enc, POOL[:40]))
        before = {d.name for d in (tmp_path / "ix" / "segments").iterdir()}
        ix.upsert(POOL_V2[:3], *encode(enc, POOL_V2[:3]))
        new = [d for d in (tmp_path / "ix" / "segments").iterdir() if d.name not in before]
        assert len(new) == 1
        assert _du(new[0]) < 64 << 10, _du(new[0])  # 11,734 bytes, 6,957 of them the 3 dense vectors
        assert _du(tmp_path / "ix" / "segments") < 256 << 10
        qd, qs = enc.encode_queries(QUERY_TEXTS)
        got = Searcher(ix, encoder=enc).search(None, k=10, mode="sparse", sparse=qs)
        live = POOL_V2[:3] + POOL[3:40]
        ref = scratch(tmp_path, enc, live, like=ix)
        assert_same_results(got, Searcher(ref, encoder=enc).search(None, k=10, mode="sparse", sparse=qs))
        ref.close()


def test_merge_with_no_other_reader_leaves_no_superseded_file(tmp_path, fake_encoder, capsys):
    """`hylex merge DIR` kept every merged segment, old tombstone and stored row until the next commit; with no
    other handle open, the commit removes them at once (a delete and an upsert likewise)."""
    from hylex import cli

    enc = fake_encoder
    path = tmp_path / "ix"
    with Index.create(path, enc.describe(), merge={"auto": False}) as w:
        for i in range(0, 40, 10):
            w.add(POOL[i:i + 10], *encode(enc, POOL[i:i + 10]))
        w.delete([d.id for d in POOL[:5]])
        w.delete([d.id for d in POOL[5:7]])  # supersedes the first tombstone file
        assert _superseded(path) == []
        w.upsert(POOL_V2[10:13], *encode(enc, POOL_V2[10:13]))
        assert _superseded(path) == []
    size = _du(path / "segments")
    assert cli.main(["merge", str(path), "--no-progress"]) == 0
    capsys.readouterr()
    assert _superseded(path) == []
    assert [d.name for d in (path / "segments").iterdir()] == ["seg-000005"]
    assert _du(path / "segments") < size
    assert list((path / "readers").iterdir()) == []  # every handle closed: no lock file left
    with Index.open(path) as ix:
        assert ix.validate() == [] and ix.store.count() == ix.n_docs == 33
        assert_equivalent(ix, scratch(tmp_path, enc, POOL_V2[10:13] + POOL[7:10] + POOL[13:40], like=ix), enc)
    reader = Index.open(path)
    with Index.open(path, writable=True) as w:
        w.delete([POOL[7].id])
        w.merge()
    assert "segment seg-000005" in _superseded(path)  # kept for `reader`
    reader.close()
    assert cli.main(["merge", str(path), "--no-progress"]) == 0  # nothing to merge; what it kept goes
    assert "nothing to merge" in capsys.readouterr().out
    assert _superseded(path) == [] and list((path / "readers").iterdir()) == []


def _read_everything(ix, enc, ids):
    return all_modes(ix, enc), ix.get(ids), ix.documents(list(range(int(ix.manifest["next_row"]))))


def test_garbage_is_kept_while_an_older_snapshot_is_open(tmp_path, fake_encoder):
    """A reader of an older generation keeps searching and fetching its documents through any number of commits
    (before, the second commit after its snapshot dropped its documents' rows); the commit after it closes (or
    refreshes) removes the garbage."""
    enc = fake_encoder
    path = tmp_path / "ix"
    ids = [d.id for d in POOL[:40]]
    with Index.create(path, enc.describe(), merge={"auto": False}) as w:
        w.add(POOL[:20], *encode(enc, POOL[:20]))
        w.add(POOL[20:40], *encode(enc, POOL[20:40]))
        old = Index.open(path)
        before = _read_everything(old, enc, ids)
        w.delete([d.id for d in POOL[:10]])
        w.upsert(POOL_V2[15:25], *encode(enc, POOL_V2[15:25]))
        w.merge()
        w.add(POOL[40:45], *encode(enc, POOL[40:45]))
        w.delete([POOL[41].id])
        mid = Index.open(path)  # a reader of the merged generation, then one more commit
        w.upsert(POOL_V2[40:42], *encode(enc, POOL_V2[40:42]))
        assert any(s.startswith("segment seg-00000") for s in _superseded(path))
        after = _read_everything(old, enc, ids)
        for mode in before[0]:
            assert before[0][mode].ids.tolist() == after[0][mode].ids.tolist(), mode
            np.testing.assert_array_equal(before[0][mode].scores, after[0][mode].scores)
        assert before[1] == after[1] and before[2] == after[2]
        assert [d["id"] for d in after[1]] == ids and after[1][0]["text"] == POOL[0].text
        assert old.validate() == []
        old.close()
        w.delete([POOL[42].id])  # removes what only `old` read (the merged segments, their rows), keeps the
        leftover = _superseded(path)  # tombstone files superseded since `mid` opened
        assert leftover and not any(s.startswith(("segment", "row")) for s in leftover), leftover
        assert sorted(g["generation"] for g in w.manifest["garbage"]) == [8, 9]
        assert mid.refresh() is True  # moves to the current generation
        w.delete([POOL[43].id])  # removes all garbage older than it; keeps what this commit superseded
        assert [g["generation"] for g in w.manifest["garbage"]] == [w.manifest["generation"]]
        assert mid.n_docs == w.n_docs + 1 and mid.validate() == [] and w.validate() == []
        mid.close()
        w.delete([POOL[44].id])
        assert _superseded(path) == []
        assert [f.name for f in (path / "readers").iterdir()] == [f"gen-{w.manifest['generation']:09d}.lock"]


CHILD = r"""
import json, sys
from hylex.indexing import Index
from hylex.retrieval import Searcher
ix = Index.open(sys.argv[1])
ids = json.loads(sys.argv[2])
def report():
    D, I = Searcher(ix).search_bm25(["star galaxy telescope", "recipe oven flour"], 10)
    docs = ix.get(ids)
    print(json.dumps({"D": D.tolist(), "I": I.tolist(), "docs": docs, "n": ix.n_docs}), flush=True)
report()
sys.stdin.readline()
report()
sys.stdin.readline()
ix.close()
"""


def test_a_reader_in_another_process_keeps_its_snapshot(tmp_path, fake_encoder):
    """Another process holding the index open at an older generation: a merge keeps what it reads until it
    exits, and the next commit after that removes it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    enc = fake_encoder
    path = tmp_path / "ix"
    ids = [d.id for d in POOL[:30]]
    with Index.create(path, enc.describe(), merge={"auto": False}) as w:
        w.add(POOL[:15], *encode(enc, POOL[:15]))
        w.add(POOL[15:30], *encode(enc, POOL[15:30]))
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), json.dumps(ids)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        first = json.loads(child.stdout.readline())
        assert first["n"] == 30 and [d["id"] for d in first["docs"]] == ids
        with Index.open(path, writable=True) as w:
            w.upsert(POOL_V2[:5], *encode(enc, POOL_V2[:5]))
            w.delete([d.id for d in POOL[20:25]])
            w.merge()
            w.add(POOL[30:35], *encode(enc, POOL[30:35]))
            assert {"segment seg-000000", "segment seg-000001"} <= set(_superseded(path))
            child.stdin.write("\n")
            child.stdin.flush()
            assert json.loads(child.stdout.readline()) == first  # its searches and documents are unchanged
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.wait(60) == 0
            w.delete([POOL[30].id])
            assert _superseded(path) == []
            assert w.validate() == [] and w.n_docs == 29
            assert w.store.count() == 30  # the merged-away rows are gone; a tombstoned one stays until merged
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_segments_of_the_vocabulary_sized_impact_format_are_read(tmp_path, fake_encoder):
    """Indexes written before impact format 3 (every segment's per-term arrays vocabulary-sized) open, search
    exactly as before, take new segments beside their old ones and merge into the new format."""
    import hashlib

    from hylex.indexing.impact import ImpactIndex

    enc = fake_encoder
    path = tmp_path / "ix"
    with Index.create(path, enc.describe(), merge={"auto": False}) as w:
        w.add(POOL[:25], *encode(enc, POOL[:25]))
        w.add(POOL[25:50], *encode(enc, POOL[25:50]))
        w.delete([POOL[3].id])
        want = all_modes(w, enc)
    m = json.loads((path / "manifest.json").read_text())
    for seg in m["segments"]:  # rewrite each segment's sparse postings as format 2 wrote them
        d = path / "segments" / seg["name"]
        imp = ImpactIndex.load(d, mmap=False)
        (d / "impact_terms.npy").unlink()
        del seg["files"]["impact_terms.npy"]
        for name in ("indptr", "docs", "impacts", "block_indptr", "block_max", "block_first", "block_last",
                     "term_scale", "fwd_indptr", "fwd_terms", "fwd_impacts"):
            np.save(d / f"impact_{name}.npy", np.ascontiguousarray(getattr(imp, name)), allow_pickle=False)
        (d / "impact_meta.json").write_text(json.dumps({**imp.meta(), "format": 2}))
        for fname in seg["files"]:
            if fname.startswith("impact_"):
                data = (d / fname).read_bytes()
                seg["files"][fname] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert (d / "impact_indptr.npy").stat().st_size > 8 * enc.vocab_size
    (path / "manifest.json").write_text(json.dumps(m))
    with Index.open(path, writable=True) as ix:
        assert ix.validate() == [] and len(ix.segments[0].sparse.indptr) == enc.vocab_size + 1
        got = all_modes(ix, enc)
        for mode in want:
            assert got[mode].ids.tolist() == want[mode].ids.tolist(), mode
            np.testing.assert_array_equal(got[mode].scores, want[mode].scores)
        ix.upsert(POOL_V2[:5], *encode(enc, POOL_V2[:5]))  # a format-3 segment beside format-2 ones
        live = POOL_V2[:5] + POOL[5:50]  # p0003 was deleted: the upsert adds it again
        assert_equivalent(ix, scratch(tmp_path, enc, live, like=ix), enc)
        ix.merge()
        assert json.loads((path / "segments" / ix.segments[0].name / "impact_meta.json").read_text())["format"] == 3
        assert_equivalent(ix, scratch(tmp_path, enc, live, name="scratch2", like=ix), enc)
        assert ix.validate() == [] and _superseded(path) == []
