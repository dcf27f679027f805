"""Pseudo-queries an instruct LLM writes for a bare corpus (``--pairs-from generate``): cleaning, the generic-query
filter, the resumable cache, the generator on a tiny random-weight Llama (conftest's ``tiny_model``), and
``tune()`` wired to it."""
from __future__ import annotations

import json
import shutil

import pytest

from hylex.corpus import Document
from hylex.tuning.data import TrainingDataError
from hylex.tuning.generate import QueryGenerator, clean_query, content_words, generated_groups

WORDS = ["volcano", "football", "finance", "cooking", "astronomy", "music", "chess", "garden", "ocean", "desert",
         "railway", "medicine"]


class FakeGenerator:
    """Writes "what about <the document's first word>?" (or what ``reply`` returns), counting the texts it saw."""

    def __init__(self, reply=None, key: str = "k1", batch: int = 3):
        self.reply = reply or (lambda text: f"what about {text.split()[0]}?")
        self.key, self.batch, self.model, self.seen = key, batch, "fake", []

    def __call__(self, texts):
        self.seen.extend(texts)
        return [self.reply(t) for t in texts]


def _docs(n: int = len(WORDS)) -> list[Document]:
    return [Document(id=f"d{i}", text=f"{w} facts in brief " + f"more on {w} " * 4) for i, w in enumerate(WORDS[:n])]


def test_clean_query_keeps_the_first_line_without_labels_or_quotes():
    assert clean_query('  "What causes volcanic eruptions?"\nExplanation: ...') == "What causes volcanic eruptions?"
    assert clean_query("Question: how do tides work") == "how do tides work"
    assert clean_query("\n\nquery : 'solar wind'") == "solar wind"
    assert clean_query("   ") == ""


def test_content_words_leave_out_stopwords_and_the_generic_vocabulary():
    assert content_words("What is the main finding of the study on Vitamin D?") == {"vitamin"}
    assert content_words("What are the main points of the document?") == {"points"}


def test_generated_groups_pair_each_query_with_its_whole_document_and_drop_generic_ones():
    docs = _docs()
    gen = FakeGenerator(lambda t: "What is the main focus of this study?" if t.startswith("chess") else
                        ("" if t.startswith("ocean") else f"what about {t.split()[0]}?"))
    data = generated_groups(docs, gen, limit=len(docs), seed=0)
    assert data.skipped == {"generic query": 1, "empty query": 1}
    assert data.sources == {"corpus:generate": len(docs) - 2} and len(data) == len(docs) - 2
    by_id = {d.id: d for d in docs}
    for g in data.groups:
        assert g.pos == (by_id[g.qid].text,) and g.pos_ids == frozenset({g.qid})
        assert g.query == f"what about {by_id[g.qid].text.split()[0]}?" and g.source == "corpus:generate"
    # a seeded sample of the documents, the same for the same seed, another for another seed
    assert [g.qid for g in generated_groups(docs, FakeGenerator(), limit=5, seed=0).groups] == \
        [g.qid for g in generated_groups(docs, FakeGenerator(), limit=5, seed=0).groups]
    assert [g.qid for g in generated_groups(docs, FakeGenerator(), limit=5, seed=0).groups] != \
        [g.qid for g in generated_groups(docs, FakeGenerator(), limit=5, seed=1).groups]


def test_generated_groups_skip_short_documents_and_refuse_bad_counts():
    docs = _docs(4) + [Document(id="short", text="too short")]
    gen = FakeGenerator()
    data = generated_groups(docs, gen, limit=10)
    assert len(data) == 4 and data.skipped == {"too short": 1} and "too short" not in gen.seen
    for bad in (0, -1, 1.5, True):
        with pytest.raises(TrainingDataError, match="must be >= 1"):
            generated_groups(docs, gen, limit=bad)
    with pytest.raises(TrainingDataError, match="no usable query"):
        generated_groups(docs, FakeGenerator(lambda t: "What is the main idea of the document?"), limit=3)


def test_the_cache_is_appended_per_batch_and_reused_for_the_same_generator_only(tmp_path):
    docs, cache = _docs(), tmp_path / "work" / "generated.jsonl"
    first = FakeGenerator(batch=4)
    a = generated_groups(docs, first, limit=7, cache=cache)
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    assert len(lines) == 7 and len(first.seen) == 7 and {x["key"] for x in lines} == {"k1"}
    # the same run again: nothing generated, the same groups
    again = FakeGenerator(batch=4)
    assert generated_groups(docs, again, limit=7, cache=cache).groups == a.groups and again.seen == []
    # a longer run generates only the documents it adds; a line cut by a kill mid-write is written again
    with open(cache, "a") as f:
        f.write('{"id": "d3", "que')
    more = FakeGenerator(batch=4)
    b = generated_groups(docs, more, limit=9, cache=cache)
    assert len(b) == 9 and len(more.seen) == 2 and b.groups[:7] == a.groups
    # the appended lines start on a line of their own: the next run reads them all
    again = FakeGenerator(batch=4)
    assert generated_groups(docs, again, limit=9, cache=cache).groups == b.groups and again.seen == []
    # another generator or prompt (another key) does not read the first one's queries
    other = FakeGenerator(lambda t: f"tell me about {t.split()[0]}", key="k2")
    c = generated_groups(docs, other, limit=7, cache=cache)
    assert len(other.seen) == 7 and all(g.query.startswith("tell me about") for g in c.groups)


def test_query_generator_writes_one_reproducible_query_per_text_with_left_padding(tiny_model):
    gen = QueryGenerator(str(tiny_model), max_new_tokens=6, dtype="float32", device="cpu")
    assert gen.lm is None  # loaded by the first call only (a run whose cache holds every query loads no model)
    texts = ["volcano facts in brief", "a much longer text about chess openings and endgames " * 3]
    out = gen(texts)
    assert len(out) == 2 and all(isinstance(q, str) for q in out)
    assert gen(texts) == out  # greedy decoding
    # batched rows equal each one alone: left padding keeps every row's continuation at its own last token
    assert [gen([t])[0] for t in texts] == out
    assert "volcano facts in brief" in gen.render(texts[0]) and gen.render(texts[0]).endswith("assistant\n")
    assert QueryGenerator(str(tiny_model), max_new_tokens=7, dtype="float32").key != gen.key


def test_query_generator_refuses_a_model_without_chat_template_and_bad_settings(tiny_model, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    (plain / "chat_template.jinja").unlink()
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TrainingDataError, match="no chat template"):
        QueryGenerator(str(plain))
    with pytest.raises(TrainingDataError, match="batch must be a positive integer"):
        QueryGenerator(str(tiny_model), batch=0)
    with pytest.raises(TrainingDataError, match="must contain"):
        QueryGenerator(str(tiny_model), prompt="no slot")
    with pytest.raises(TrainingDataError, match="dtype must be auto, bfloat16 or float32, got 'bfloat16-rounded'"):
        QueryGenerator(str(tiny_model), dtype="bfloat16-rounded")  # an encoder dtype, not a generator's


def test_tune_from_generated_queries_uses_the_work_folders_cache(tiny_model, tmp_path):
    """``tune()`` with ``pair_method="generate"``: the run's documents get their queries (here from a prefilled
    cache, as a resumed run finds it, since a random-weight generator writes noise), the card names the source."""
    from hylex.engine.models import read_card
    from hylex.tuning.trainer import TuneArgs
    from hylex.tuning.tune import DataArgs, generate_count, tune

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in _docs()))
    data = DataArgs(from_corpus=str(corpus), pair_method="generate", generator=str(tiny_model), dev=3, n=1,
                    skip=0, dev_distractors=2)
    args = TuneArgs(steps=2, queries_per_step=4, negatives=1, lr=5e-3, warmup=0.0, lora_rank=4, lora_alpha=8.0,
                    query_max_length=32, passage_max_length=32, save_every=2, eval_every=2, bf16="off",
                    gradient_checkpointing=False)
    assert generate_count(data, 8) == 11  # 2 steps x 4 queries + 3 dev
    key = QueryGenerator(str(tiny_model)).key
    work = tmp_path / "model.work"
    work.mkdir()
    (work / "generated-queries.jsonl").write_text("".join(
        json.dumps({"id": d.id, "query": f"what about {d.text.split()[0]}?", "key": key}) + "\n" for d in _docs()))
    res = tune(data, tmp_path / "model", model=str(tiny_model), args=args,
               encoder_options={"pooling": "mean", "max_length": 96}, progress=False, report=lambda _: None)
    card = read_card(res.out)
    assert card["training"]["sources"] == {"corpus:generate": 11 - 3}
    assert card["training"]["data"]["generator"] == str(tiny_model)
    assert card["fusion"]["dev_choice"]["chosen_on"] == "dev (3 generate pairs built from the corpus, not real queries)"
    assert len((work / "generated-queries.jsonl").read_text().splitlines()) == len(WORDS)  # nothing written again


def test_a_mixs_generated_share_is_filled_past_generic_queries():
    """``_generated_share`` with ``exact``: documents whose query is dropped as generic are made up by further
    documents (the same seeded order), so a mix keeps its share; without ``exact`` the count is of documents."""
    from hylex.tuning.tune import DataArgs, _generated_share

    generic = {"volcano", "football", "finance", "chess"}
    gen = FakeGenerator(lambda t: "What is this about?" if t.split()[0] in generic else f"what about {t.split()[0]}?")
    docs, d = _docs(), DataArgs(from_corpus="c.jsonl", pair_method="lead+generate")
    plain = generated_groups(docs, gen, limit=6, seed=0)
    assert len(plain) < 6  # some of the first six documents got a generic query (the premise of the test)
    filled = _generated_share(d, docs, gen, 6, exact=True, cache=None, progress=False)
    assert len(filled) == 6 and filled.sources == {"corpus:generate": 6}
    assert all(g.query.split()[-1].rstrip("?") not in generic for g in filled.groups)
    assert [g.qid for g in filled.groups][:len(plain)] == [g.qid for g in plain.groups]  # a superset, same order
    assert len(_generated_share(d, docs, gen, 6, exact=False, cache=None, progress=False)) == len(plain)


def test_load_data_mixes_constructions_in_equal_shares_on_separate_documents(tiny_model, tmp_path):
    """``pair_method="lead+generate"``: each construction gives an equal share of the run's groups (steps x queries
    + dev), the lead pairs from documents the generated queries did not use; the dev carved from the mix."""
    from hylex.tuning.tune import DataArgs, load_data, run_groups, share

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in _docs()))
    key = QueryGenerator(str(tiny_model)).key
    cache = tmp_path / "generated-queries.jsonl"
    cache.write_text("".join(
        json.dumps({"id": d.id, "query": f"what about {d.text.split()[0]}?", "key": key}) + "\n" for d in _docs()))
    d = DataArgs(from_corpus=str(corpus), pair_method="lead+generate", generator=str(tiny_model), dev=2, n=1,
                 skip=0, dev_distractors=2)
    assert (run_groups(d, 8), share(d, 8)) == (10, 5)
    train, dev, _ = load_data(d, queries=8, cache=cache, progress=False)
    groups = train.groups + dev.groups
    by = {m: [g for g in groups if g.source == f"corpus:{m}"] for m in ("lead", "generate")}
    assert len(train) == 8 and len(dev) == 2 and {m: len(v) for m, v in by.items()} == {"lead": 5, "generate": 5}
    assert not {g.qid for g in by["lead"]} & {g.qid for g in by["generate"]}  # separate documents
    assert all(g.query.startswith("what about") for g in by["generate"])
    text = {d.id: d.text.strip() for d in _docs()}
    assert all(f"{g.query} {g.pos[0]}" == text[g.qid] for g in by["lead"])  # opening words -> the rest
    # the order of the names does not matter; a mix needs the run's size
    again = load_data(DataArgs(**{**d.__dict__, "pair_method": "generate+lead"}), queries=8, cache=cache,
                      progress=False)
    assert sorted(g.qid for g in again[0].groups + again[1].groups) == sorted(g.qid for g in groups)
    with pytest.raises(TrainingDataError, match="need a count"):
        load_data(DataArgs(from_corpus=str(corpus), pair_method="lead+crop"), cache=cache)


def test_data_args_refuse_an_unknown_construction_and_a_bad_count():
    from hylex.tuning.tune import DataArgs

    with pytest.raises(TrainingDataError, match="unknown pair construction 'summary'"):
        DataArgs(from_corpus="c.jsonl", pair_method="summary").check()
    with pytest.raises(TrainingDataError, match="generate .* must be an integer >= 1"):
        DataArgs(from_corpus="c.jsonl", pair_method="generate", generate=0).check()
    with pytest.raises(TrainingDataError, match="applies to generated pairs only"):
        DataArgs(from_corpus="c.jsonl", pair_method="lead", generate=10).check()
    for bad, needle in (("lead+lead", "names each at most once"), ("auto+lead", "not auto"),
                        ("lead+summary", "unknown pair construction 'summary'")):
        with pytest.raises(TrainingDataError, match=needle):
            DataArgs(from_corpus="c.jsonl", pair_method=bad).check()
    assert DataArgs(from_corpus="c.jsonl", pair_method="lead+generate", generate=10).check().generated
