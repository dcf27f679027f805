"""hylex.tuning.data: training groups from BEIR qrels, pair files and bare corpora; dev split; mined negatives."""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from hylex.corpus import Document
from hylex.tuning.data import (
    Group, MiningWindow, TrainingData, TrainingDataError, beir_groups, corpus_groups, dev_split, mine_negatives,
    mix, read_pairs,
)

TOPICS = {
    "volcano": "magma lava eruption crater ash volcano",
    "football": "goal striker match league keeper football",
    "finance": "stock bond market dividend shares finance",
    "cooking": "oven flour recipe baking dough cooking",
    "astronomy": "star planet galaxy telescope orbit astronomy",
}


def _beir(tmp_path: Path, qrels_rows: list[tuple[str, str, int]], extra_docs: int = 30) -> Path:
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    docs = []
    for topic, words in TOPICS.items():
        for j in range(extra_docs // len(TOPICS)):
            docs.append({"_id": f"{topic}-{j}", "title": f"{topic} {j}", "text": f"{words} item {j} " * 3})
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q-{t}", "text": f"{t} {w.split()[0]}"} for t, w in TOPICS.items()]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                              "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels_rows))
    return root


def test_beir_groups(tmp_path):
    root = _beir(tmp_path, [("q-volcano", "volcano-0", 1), ("q-volcano", "volcano-1", 0),
                            ("q-finance", "finance-2", 2), ("q-cooking", "cooking-0", 0)])
    data, docs = beir_groups(root, "train")
    assert len(docs) == 30
    by_q = {g.qid: g for g in data.groups}
    assert set(by_q) == {"q-volcano", "q-finance"}  # q-cooking has no positive: skipped and counted
    assert data.skipped == {"no positive": 1}
    g = by_q["q-volcano"]
    assert g.pos == ("volcano 0\n" + ("magma lava eruption crater ash volcano item 0 " * 3).strip(),)
    assert len(g.neg) == 1 and g.pos_ids == {"volcano-0", "volcano-1"}
    assert data.sources == {"beir:beir": 2}


def test_beir_qrels_naming_unknown_documents(tmp_path):
    root = _beir(tmp_path, [("q-volcano", "nope-7", 1)])
    with pytest.raises(TrainingDataError, match=r"names 1 documents missing from corpus.jsonl.*'nope-7'"):
        beir_groups(root, "train")


def test_beir_without_any_positive(tmp_path):
    root = _beir(tmp_path, [("q-volcano", "volcano-0", 0)])
    with pytest.raises(TrainingDataError, match="no query with a relevant document"):
        beir_groups(root, "train")


def _pairs(tmp_path: Path, rows: list, name: str = "pairs.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_read_pairs(tmp_path):
    p = _pairs(tmp_path, [{"query": "q1", "pos": ["a"], "neg": ["b", "c"]},
                          {"query": "q2", "pos": "single positive"},
                          {"query": "q3", "pos": [], "neg": ["x"]},  # a labelled non-match: skipped
                          {"query": "lone \ud800", "pos": ["p \udc00"]}])
    data = read_pairs(p)
    assert [g.query for g in data.groups] == ["q1", "q2", "lone \ufffd"]
    assert data.groups[0].neg == ("b", "c") and data.groups[1].pos == ("single positive",)
    assert data.groups[2].pos == ("p \ufffd",)
    assert data.skipped == {"no positive": 1} and data.sources == {"pairs": 3}


@pytest.mark.parametrize("row, needle", [
    ('{"query": "q", "pos": ["a"]', "line 1: not valid JSON"),
    ('["q", "a"]', "line 1: expected a JSON object"),
    ('{"pos": ["a"]}', "line 1: \"query\" is missing"),
    ('{"query": "  ", "pos": ["a"]}', "line 1: \"query\" is missing or not a non-empty string"),
    ('{"query": "q"}', "line 1: no \"pos\" field"),
    ('{"query": "q", "pos": [1, 2]}', "line 1: \"pos\" must be a list of strings"),
    ('{"query": "q", "pos": ["a"], "neg": {"x": 1}}', "line 1: \"neg\" must be a list of strings"),
])
def test_bad_pair_records(tmp_path, row, needle):
    with pytest.raises(TrainingDataError, match=needle):
        read_pairs(_pairs(tmp_path, [row]))


def test_compressed_pair_files_read_as_plain_ones(tmp_path):
    rows = [{"query": "q1", "pos": ["a"], "neg": ["b"]}, {"query": "q2", "pos": ["c"]}]
    plain = read_pairs(_pairs(tmp_path, rows))
    gz = tmp_path / "pairs.jsonl.gz"
    gz.write_bytes(gzip.compress(_pairs(tmp_path, rows, "other.jsonl").read_bytes()))
    got = read_pairs(gz)
    assert got.groups == plain.groups and got.sources == {"pairs": 2}  # the source is named without .jsonl.gz
    bom = tmp_path / "bom.jsonl"  # a UTF-8 byte order mark, as some editors write it
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "other.jsonl").read_bytes())
    assert read_pairs(bom, source="pairs").groups == plain.groups


def test_pair_file_bytes_that_are_not_utf8_or_json_too_deep(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"query": "q1", "pos": ["a"]}\n{"query": "caf\xe9", "pos": ["b"]}\n')
    with pytest.raises(TrainingDataError, match=r"latin1.jsonl line 2: not valid UTF-8 .*Re-encode the file"):
        read_pairs(p)
    deep = _pairs(tmp_path, ['{"query": "q", "pos": ["a"], "x": ' + "[" * 100_000 + "]" * 100_000 + "}"])
    with pytest.raises(TrainingDataError, match="line 1: JSON nested too deeply"):
        read_pairs(deep)
    gz = tmp_path / "cut.jsonl.gz"  # a truncated download
    rng = random.Random(0)
    text = "".join(json.dumps({"query": f"q{i}", "pos": [f"{rng.random()}"]}) + "\n" for i in range(1000))
    whole = gzip.compress(text.encode())
    gz.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(TrainingDataError, match="compressed stream is damaged"):
        read_pairs(gz)


def test_pair_file_without_positives_or_missing(tmp_path):
    with pytest.raises(TrainingDataError, match="no record with a positive"):
        read_pairs(_pairs(tmp_path, [{"query": "q", "pos": []}]))
    with pytest.raises(TrainingDataError, match="does not exist"):
        read_pairs(tmp_path / "missing.jsonl")


def _data(n: int, source: str) -> TrainingData:
    return TrainingData([Group(f"{source} query {i}", (f"{source} pos {i}",), source=source) for i in range(n)],
                        {source: n})


def test_mix_caps_and_weights():
    a, b = _data(100, "a"), _data(10, "b")
    capped = mix([a, b], caps=[20, None], seed=1)
    assert capped.sources == {"a": 20, "b": 10}
    weighted = mix([a, b], weights=[1, 1], total=30, seed=1)
    assert weighted.sources == {"a": 15, "b": 10}  # b gives all it has, never more
    assert mix([a, b], caps=[20, None], seed=1).groups == capped.groups  # seeded
    with pytest.raises(TrainingDataError, match="one per source"):
        mix([a, b], caps=[1])
    with pytest.raises(TrainingDataError, match="not all 0"):
        mix([a, b], weights=[0, 0], total=5)
    with pytest.raises(TrainingDataError, match="no training group"):
        mix([a, b], caps=[0, 0])


def test_dev_split_is_disjoint_by_query():
    data = _data(50, "a")
    data.groups.append(Group("a query 3", ("another positive",), source="a"))  # same query twice
    train, dev = dev_split(data, 0.2, seed=3)
    tq, dq = {g.query for g in train.groups}, {g.query for g in dev.groups}
    assert not tq & dq and len(dq) == 10 and len(train) + len(dev) == 51
    assert dev_split(data, 0.2, seed=3)[1].groups == dev.groups
    assert len(dev_split(data, 5)[1]) in (5, 6)
    for bad in (0, 0.0, 1.0, -3, True):
        with pytest.raises(TrainingDataError, match="dev must be"):
            dev_split(data, bad)
    with pytest.raises(TrainingDataError, match="leaves none"):
        dev_split(_data(3, "a"), 3)


def _docs() -> list[Document]:
    docs = []
    for topic, words in TOPICS.items():
        for j in range(6):
            docs.append(Document(f"{topic}-{j}", f"{words} number {j} " * 4, title=f"All about {topic} {j}"))
    return docs


def test_corpus_groups_title_lead_and_crop():
    docs = _docs()
    titled = corpus_groups(docs, "auto", seed=0)
    assert titled.sources == {"corpus:title": 30}
    g = titled.groups[0]
    d = next(d for d in docs if d.id == g.qid)
    assert g.query == d.title and g.pos == (d.text,) and g.pos_ids == {d.id}
    untitled = [Document(d.id, d.text) for d in docs]
    # without titles auto takes lead pairs (crops lowered the dense arm on real queries), with lead's length floor
    auto = corpus_groups(untitled, "auto", seed=0)
    assert auto.sources == {"corpus:lead": 30} and auto.groups == corpus_groups(untitled, "lead", seed=0).groups
    with pytest.raises(TrainingDataError, match="no document yields a lead pair .*too short"):
        corpus_groups(untitled, "auto", min_words=1, lead=(30, 40))  # lead's floor, 70 words, not min_words
    crops = corpus_groups(untitled, "crop", seed=0, crop=(0.2, 0.4))
    assert crops.sources == {"corpus:crop": 30}
    for g in crops.groups:
        src = next(d for d in untitled if d.id == g.qid).text
        n = len(src.split())
        for span in (g.query, *g.pos):
            assert span in " ".join(src.split()) and round(0.2 * n) <= len(span.split()) <= round(0.4 * n)
    assert corpus_groups(untitled, "crop", seed=0).groups == corpus_groups(untitled, "crop", seed=0).groups
    assert len(corpus_groups(docs, "title", limit=7)) == 7
    with pytest.raises(TrainingDataError, match="no document yields a title pair"):
        corpus_groups(untitled, "title")
    with pytest.raises(TrainingDataError, match="unknown pair construction"):
        corpus_groups(docs, "pseudo")
    with pytest.raises(TrainingDataError, match="crop fractions"):
        corpus_groups(docs, "crop", crop=(0.6, 0.2))


def test_corpus_groups_lead():
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(50)]
    docs = [Document(f"d{i}", " ".join(rng.choice(vocab) for _ in range(rng.randint(10, 40)))) for i in range(60)]
    docs.append(Document("s", "Short opening sentence here. " + " ".join(vocab[:20])))   # a 4-word first sentence
    docs.append(Document("long", "One " + " ".join(vocab) + ". Then more words follow"))   # sentence > 12 words
    data = corpus_groups(docs, "lead", seed=0)
    assert data.sources == {"corpus:lead": len(data.groups)}
    by_id = {d.id: d for d in docs}
    assert {g.qid for g in data.groups} == {d.id for d in docs if len(d.text.split()) >= 16}
    assert data.skipped == {"too short": sum(len(d.text.split()) < 16 for d in docs)}
    lengths = set()
    for g in data.groups:
        text = by_id[g.qid].text
        q, (p,) = g.query, g.pos
        n = len(q.split())
        lengths.add(n)
        assert 4 <= n <= 12 and text.startswith(q) and text.endswith(p)   # the opening words, the rest: no overlap
        assert q.split() + p.split() == text.split()
    assert len(lengths) > 3    # random lengths where no sentence ends in range
    s = next(g for g in data.groups if g.qid == "s")
    assert s.query == "Short opening sentence here." and s.pos[0].startswith("w0 w1")
    assert corpus_groups(docs, "lead", seed=0).groups == data.groups
    with pytest.raises(TrainingDataError, match="lead lengths"):
        corpus_groups(docs, "lead", lead=(5, 2))


def test_mined_negatives_never_contain_positives(tmp_path):
    root = _beir(tmp_path, [(f"q-{t}", f"{t}-{j}", 1) for t in TOPICS for j in range(3)] +
                 [("q-volcano", "volcano-3", 0)], extra_docs=50)
    data, docs = beir_groups(root, "train")
    window = MiningWindow(skip=0, depth=40, n=5)
    mined = mine_negatives(data, docs, window=window, seed=0)
    by_id = {f"{d.title}\n{d.text}".strip(): d.id for d in docs}
    for g in mined.groups:
        assert len(g.neg) == window.n
        assert not set(g.neg) & set(g.pos)
        ids = {by_id[t] for t in g.neg}
        judged_pos = {i for i in g.pos_ids if i.startswith(g.qid[2:]) and int(i.rsplit("-", 1)[1]) < 3}
        assert not ids & judged_pos
        # hard: the mined negatives share the query's topic (only those share its terms)
        topic = g.qid[2:]
        assert all(i.startswith(topic) for i in ids)
    # the labelled negative is kept first
    volcano = next(g for g in mined.groups if g.qid == "q-volcano")
    assert volcano.neg[0].startswith("volcano 3\n")
    assert mine_negatives(data, docs, window=window, seed=0).groups == mined.groups


def test_mining_skips_the_top_ranks_and_pools_pair_passages():
    data = TrainingData([Group("magma eruption", ("magma lava eruption crater",),
                               neg=(), source="s"),
                         Group("stock dividend", ("stock bond dividend",), neg=("magma ash",), source="s")])
    extra = ["magma eruption crater ash", "magma lava", "stock market shares", "dividend stock bond shares"]
    passages = [*extra, "magma lava eruption crater", "stock bond dividend", "magma ash"]
    # n covers the whole window, so every candidate comes back, in rank order
    full = mine_negatives(data, passages, window=MiningWindow(skip=0, depth=10, n=10), keep_given=False)
    skipped = mine_negatives(data, passages, window=MiningWindow(skip=2, depth=10, n=10), keep_given=False)
    # ranks 1-2 are the positive itself and the best non-positive match: both out once skipped
    assert full.groups[0].neg[0] == "magma eruption crater ash"
    assert skipped.groups[0].neg == full.groups[0].neg[1:]
    assert "magma lava eruption crater" not in full.groups[0].neg
    pooled = mine_negatives(data, None, window=MiningWindow(skip=0, depth=10, n=1), keep_given=False)
    assert pooled.groups[0].neg == ("magma ash",)  # the only other passage in the data sharing a term
    with pytest.raises(TrainingDataError, match="mining window"):
        MiningWindow(skip=5, depth=5)


def test_the_dev_pool_holds_no_mined_negatives(tmp_path):
    """Training groups get BM25-mined negatives; dev groups keep at most `dev_negatives` labelled ones, and pair
    files give the dev pool other training queries' positives as distractors (never a dev passage)."""
    from hylex.tuning.tune import DataArgs, load_data

    topics = ["volcano lava magma", "football goal striker", "bond market yield", "oven flour bake",
              "star galaxy telescope", "guitar melody concert", "chess pawn bishop", "seed soil compost"]
    rows = [{"query": f"about {t.split()[0]} {i}", "pos": [f"{t} passage number {i}"],
             "neg": [f"labelled negative {j} for {i}" for j in range(5)]} for i, t in enumerate(topics * 3)]
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, dev, distractors = load_data(DataArgs(pairs=[str(p)], dev=4, n=7, skip=0, dev_distractors=6,
                                                 dev_negatives=2))
    assert len(dev) == 4 and all(len(g.neg) == 2 and g.neg[0].startswith("labelled") for g in dev.groups)
    assert any(len(g.neg) > 5 for g in train.groups)  # mined ones added to the training groups
    dev_texts = {t for g in dev.groups for t in (*g.pos, *g.neg)}
    assert len(distractors) == 6 and not set(distractors) & dev_texts
    assert set(distractors) <= {g.pos[0] for g in train.groups}
    with pytest.raises(TrainingDataError, match="dev_negatives"):
        DataArgs(pairs=[str(p)], dev_negatives=-1).check()


def test_negatives_mined_with_an_index_follow_its_search(tmp_path):
    """--mine-index: negatives come from the index's own ranking (here its dense arm, checked against brute force),
    past the skipped top ranks, never a judged positive, the labelled negative first; bad settings are refused."""
    import numpy as np

    from hylex.indexing import build_index
    from hylex.tuning.data import mine_negatives_index
    from hylex.tuning.tune import DataArgs
    from conftest import FakeEncoder

    root = _beir(tmp_path, [(f"q-{t}", f"{t}-{j}", 1) for t in TOPICS for j in range(3)] +
                 [("q-volcano", "volcano-3", 0)], extra_docs=50)
    data, docs = beir_groups(root, "train")
    enc = FakeEncoder()
    build_index(docs, tmp_path / "idx", enc, progress=False)
    window = MiningWindow(skip=2, depth=30, n=30)  # n covers the window: every candidate, in rank order
    mined = mine_negatives_index(data, tmp_path / "idx", window=window, mode="dense", encoder=enc, keep_given=False)
    texts = [f"{d.title}\n{d.text}".strip() for d in docs]
    doc_dense = enc.encode_documents(texts).dense
    for g, m in zip(data.groups, mined.groups):
        order = np.argsort(-(doc_dense @ enc.encode_queries([g.query]).dense[0]), kind="stable")[:30]
        expect = [texts[i] for i in order[2:] if docs[i].id not in g.pos_ids]
        assert list(m.neg) == expect
        assert not set(m.neg) & set(g.pos)
    kept = mine_negatives_index(data, tmp_path / "idx", window=MiningWindow(skip=0, depth=40, n=5), mode="dense",
                                encoder=enc)
    volcano = next(g for g in kept.groups if g.qid == "q-volcano")
    assert volcano.neg[0].startswith("volcano 3\n") and len(volcano.neg) == 5
    assert all(len(g.neg) == 5 for g in kept.groups)
    # BM25 needs no encoder: the index's own BM25 arm, the same rules
    by_bm25 = mine_negatives_index(data, tmp_path / "idx", window=MiningWindow(skip=0, depth=40, n=5), mode="bm25")
    by_id = {t: d.id for t, d in zip(texts, docs)}
    for g in by_bm25.groups:
        mined_ids = [by_id[t] for t in g.neg if by_id[t] != "volcano-3"]  # the labelled negative is given
        assert len(g.neg) == 5 and not set(mined_ids) & g.pos_ids
    assert by_bm25.groups != kept.groups
    with pytest.raises(TrainingDataError, match="mining mode"):
        mine_negatives_index(data, tmp_path / "idx", mode="colbert")
    with pytest.raises(TrainingDataError, match="is not a folder"):
        DataArgs(beir=str(root), mine_index=str(tmp_path / "nope")).check()
    with pytest.raises(TrainingDataError, match="mining turned off"):
        DataArgs(beir=str(root), mine_index=str(tmp_path / "idx"), mine=False).check()
    with pytest.raises(TrainingDataError, match="mining mode"):
        DataArgs(beir=str(root), mine_mode="colbert").check()
