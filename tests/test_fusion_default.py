"""The stored fusion: what a plain hybrid search fuses (index choice > model's > built-in), how `hylex fuse` chooses
it on training queries, and that searches, eval, stats and the service use it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import QUERY_TEXTS, TOPICS, FakeEncoder, write_jsonl
from hylex import cli
from hylex.errors import HylexError
from hylex.indexing import Index
from hylex.retrieval import Searcher
from hylex.retrieval.fusion import BUILTIN_FUSION, choose_fusion, model_fusion, stored_fusion, weight_grid
from test_cli import assert_one_line_error, fake_cli, run  # noqa: F401  (fixture)


def test_weight_grid_is_the_simplex():
    g = weight_grid(3, 0.1)
    assert len(g) == 66  # C(10 + 2, 2)
    assert all(abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in g)
    assert (1.0, 0.0, 0.0) in g and (0.0, 0.0, 1.0) in g and (0.2, 0.2, 0.6) in g
    assert weight_grid(1, 0.5) == [(1.0,)]
    with pytest.raises(HylexError, match="does not divide"):
        weight_grid(2, 0.3)
    with pytest.raises(HylexError, match="step"):
        weight_grid(2, 0)


def _arms(nq=4, depth=5):
    """Three arms ranking disjoint documents, so each fusion is told apart by the score below."""
    D = np.tile(np.linspace(1, 0.5, depth, dtype=np.float32), (nq, 1))
    return {a: (D.copy(), np.tile(np.arange(depth, dtype=np.int64) + 100 * i, (nq, 1)))
            for i, a in enumerate(("dense", "sparse", "bm25"))}


def test_choose_fusion_maximises_the_score_and_breaks_ties_towards_fewer_arms():
    arms = _arms()

    def score(D, I):  # rewards bm25's documents at the top, then sparse's
        top = I[:, 0]
        return float(np.mean(top >= 200) + 0.5 * np.mean((top >= 100) & (top < 200)))

    best, table = choose_fusion(arms, score, k=3, step=0.25)
    # bm25 alone scores 1.0, as does any fusion where bm25 leads: the tie goes to the single arm
    assert best["arms"] == ["bm25"] and best["weights"] == [1.0] and best["score"] == 1.0
    assert table[0]["score"] == 1.0 and len({tuple(r["arms"]) + tuple(r["weights"]) for r in table}) == len(table)
    only = choose_fusion(arms, score, k=3, step=0.25, candidates=("dense", "sparse"))[0]
    assert only["arms"] == ["sparse"]
    with pytest.raises(HylexError, match="no arm"):
        choose_fusion(arms, score, candidates=("nothing",))


@pytest.fixture
def ix(tmp_path, docs, fake_encoder):
    from hylex.indexing import build_index

    path = tmp_path / "ix"
    build_index(docs, path, fake_encoder, progress=False)
    return path


def _same(a, b):
    assert a.ids.tolist() == b.ids.tolist()
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_plain_search_uses_the_stored_fusion(ix, fake_encoder):
    s = Searcher(ix, encoder=fake_encoder)
    assert s.default_fusion["source"] == "builtin"  # the fake model has no stored choice
    plain = s.search(QUERY_TEXTS, k=10)
    _same(plain, s.search(QUERY_TEXTS, k=10, arms=BUILTIN_FUSION["arms"], weights=BUILTIN_FUSION["weights"]))
    # alpha alone still means a dense + sparse fusion; rrf over the stored arms; weights for the stored arms
    _same(s.search(QUERY_TEXTS, k=10, alpha=0.3), s.search(QUERY_TEXTS, k=10, arms=("dense", "sparse"),
                                                             weights=(0.3, 0.7)))
    _same(s.search(QUERY_TEXTS, k=10, fusion="rrf"),
          s.search(QUERY_TEXTS, k=10, fusion="rrf", arms=BUILTIN_FUSION["arms"]))
    _same(s.search(QUERY_TEXTS, k=10, weights=(1, 0, 0)), s.search(QUERY_TEXTS, k=10, arms=BUILTIN_FUSION["arms"],
                                                                  weights=(1, 0, 0)))
    with pytest.raises(HylexError, match="weight"):
        s.search(QUERY_TEXTS, k=10, weights=(0.5, 0.5))  # two weights for the three stored arms

    reader = Searcher(Index.open(ix), encoder=fake_encoder)  # another handle, read-only
    with Index.open(ix, writable=True) as w:
        w.set_fusion({"method": "convex", "arms": ["bm25"], "weights": [1.0], "chosen_on": "test"})
    assert s.index.manifest.get("fusion") is None  # a snapshot until refreshed
    assert reader.index.refresh() is False  # same segments: no reload, but the manifest is taken up
    assert reader.default_fusion["source"] == "index" and reader.default_fusion["arms"] == ["bm25"]
    _same(reader.search(QUERY_TEXTS, k=10), reader.search(QUERY_TEXTS, k=10, mode="bm25"))
    with Index.open(ix, writable=True) as w:
        w.set_fusion(None)
    reader.index.refresh()
    assert reader.default_fusion["source"] == "builtin"


def test_a_damaged_stored_fusion_is_one_clear_error(ix, fake_encoder):
    with Index.open(ix, writable=True) as w:
        w.set_fusion({"method": "convex", "arms": ["dense", "nope"], "weights": [1, 1]})
        with pytest.raises(ValueError):
            w.set_fusion({"arms": ["dense"], "weights": [float("nan")]})  # JSON cannot hold it: nothing written
    s = Searcher(ix, encoder=fake_encoder)
    with pytest.raises(HylexError, match="hylex fuse") as e:
        s.search(QUERY_TEXTS, k=5)
    assert "\n" not in str(e.value)
    s.search(QUERY_TEXTS, k=5, arms=("dense",), weights=(1,))  # explicit arms do not need it


def test_model_fusion_from_a_card_and_the_registry(tmp_path, monkeypatch):
    from hylex.engine import models

    folder = tmp_path / "tuned"
    folder.mkdir()
    card = {"format": models.CARD_FORMAT, "fingerprint": "x", "fusion": {
        "method": "convex", "arms": ["dense", "bm25"], "weights": [0.4, 0.6], "chosen_on": "dev"}}
    (folder / models.MODEL_CARD).write_text(json.dumps(card))
    f = model_fusion(str(folder))
    assert f["arms"] == ["dense", "bm25"] and f["source"].startswith("model card")
    manifest = {"encoder": {"model_id": str(folder)}}
    assert stored_fusion(manifest)["weights"] == [0.4, 0.6]
    # the index's own choice wins over the model's
    manifest["fusion"] = {"method": "convex", "arms": ["sparse"], "weights": [1]}
    assert stored_fusion(manifest)["arms"] == ["sparse"] and stored_fusion(manifest)["source"] == "index"
    # a packaged model's registry entry
    entry = models.PACKAGED_MODELS["smollm2-135m"]
    monkeypatch.setitem(models.PACKAGED_MODELS, "smollm2-135m", models.PackagedModel(
        entry.name, entry.packages, entry.description, fusion={"method": "convex", "arms": ["bm25", "dense"],
                                                               "weights": [0.7, 0.3]}))
    f = stored_fusion({"encoder": {"model_id": "smollm2-135m"}})
    assert f["arms"] == ["bm25", "dense"] and f["source"] == "model smollm2-135m"
    assert stored_fusion({"encoder": {"model_id": "unknown-model"}}) == BUILTIN_FUSION


def _toy_beir(tmp_path, docs):
    beir = tmp_path / "toy"
    write_jsonl(beir / "corpus.jsonl", docs)
    topics = list(TOPICS)
    queries = [{"_id": f"q{i}", "text": f"{t} {' '.join(TOPICS[t].split()[1:4])}"} for i, t in enumerate(topics)]
    write_jsonl(beir / "queries.jsonl", queries)
    qrels = ["query-id\tcorpus-id\tscore"] + [f"q{i}\t{d.id}\t1" for i, t in enumerate(topics)
                                              for d in docs if d.metadata["topic"] == t]
    (beir / "qrels").mkdir()
    for split in ("train", "test"):
        (beir / "qrels" / f"{split}.tsv").write_text("\n".join(qrels) + "\n")
    return beir


def test_fuse_command_chooses_on_train_and_stores_it(tmp_path, capsys, fake_cli, docs):
    beir = _toy_beir(tmp_path, docs)
    ix = tmp_path / "ix"
    assert run(capsys, "index", beir / "corpus.jsonl", "--index", ix)[0] == 0
    before = (ix / "manifest.json").read_bytes()
    rc, out, err = run(capsys, "fuse", ix, beir, "--split", "train", "--dry-run", "--json", "--step", "0.5")
    assert rc == 0, err
    res = json.loads(out)
    assert res["written"] is False and (ix / "manifest.json").read_bytes() == before
    assert res["score"] == max(r["score"] for r in res["top"]) and set(res["singles"]) == {"dense", "sparse", "bm25"}
    assert res["score"] >= max(res["singles"].values())  # single arms are grid points too

    rc, out, err = run(capsys, "fuse", ix, beir, "--split", "train", "--step", "0.5")
    assert rc == 0, err and "stored in" in out
    stored = json.loads((ix / "manifest.json").read_text())["fusion"]
    assert stored["arms"] == res["arms"] and stored["weights"] == res["weights"] and "train" in stored["chosen_on"]

    rc, out, err = run(capsys, "stats", ix)
    assert rc == 0 and "default search: convex fusion of" in out and "(index; chosen on toy train" in out
    rc, out, err = run(capsys, "eval", beir, "--index", ix, "--json", "--runs-dir", tmp_path / "runs")
    assert rc == 0, err
    ev = json.loads(out)
    assert ev["hybrid"]["fusion"]["source"] == "index" and ev["hybrid"]["fusion"]["arms"] == stored["arms"]
    rc, out, err = run(capsys, "eval", beir, "--index", ix, "--json", "--alpha", "0.5", "--runs-dir", tmp_path / "r")
    assert json.loads(out)["hybrid"]["fusion"] == {"method": "convex", "arms": ["dense", "sparse"],
                                                   "weights": [0.5, 0.5], "source": "given"}


@pytest.mark.parametrize("argv,needles", [
    (["--split", "test"], ["meaningless", "training"]),
    (["--step", "0.3"], ["does not divide"]),
    (["--arms", "dense,nope"], ["'nope'"]),
])
def test_fuse_command_errors(tmp_path, capsys, fake_cli, docs, argv, needles):
    beir = _toy_beir(tmp_path, docs)
    ix = tmp_path / "ix"
    assert run(capsys, "index", beir / "corpus.jsonl", "--index", ix)[0] == 0
    before = (ix / "manifest.json").read_bytes()
    rc, out, err = run(capsys, "fuse", ix, beir, *argv)
    assert_one_line_error(rc, err, *needles)
    assert (ix / "manifest.json").read_bytes() == before


def test_fuse_show_must_be_positive(capsys):
    from hylex import cli

    with pytest.raises(SystemExit) as e:  # argparse: --show -1 printed all grid points but the last
        cli.main(["fuse", "ix", "beir", "--show", "-1"])
    assert e.value.code == 2 and "--show: must be a positive integer, got -1" in capsys.readouterr().err


def test_service_uses_the_stored_fusion(ix, fake_encoder):
    from fastapi.testclient import TestClient

    from hylex.service.app import create_app

    with Index.open(ix, writable=True) as w:
        w.set_fusion({"method": "convex", "arms": ["sparse", "bm25"], "weights": [0.5, 0.5]})
    app = create_app(str(ix), encoder=fake_encoder)
    with TestClient(app) as c:
        st = c.get("/stats").json()
        assert st["default_fusion"]["arms"] == ["sparse", "bm25"] and st["default_fusion"]["source"] == "index"
        got = c.post("/search", json={"queries": QUERY_TEXTS[:3], "k": 5, "with_documents": False}).json()
        want = Searcher(ix, encoder=FakeEncoder()).search(QUERY_TEXTS[:3], k=5, arms=("sparse", "bm25"),
                                                           weights=(0.5, 0.5))
        assert [[h["id"] for h in r["hits"]] for r in got["results"]] == \
            [[i for i in row if i is not None] for row in want.ids.tolist()]
        schema = c.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]
        rule = schema["allOf"][0]["anyOf"][1]
        assert rule["properties"]["weights"] == {"minItems": 2, "maxItems": 2}
