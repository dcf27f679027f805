"""The trainer on a tiny random-weight Llama (the default model's tokenizer): the loss falls on a learnable toy
task, resume equals an uninterrupted run, LoRA merges back into plain weights, bad settings are refused."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hylex.engine import Encoder
from hylex.engine.models import resolve_model
from hylex.tuning.data import Group, TrainingData, TrainingDataError
from hylex.tuning.trainer import TuneArgs, Trainer, batch_at, check_batches, merge_lora, micro_batches

WORDS = ["volcano", "football", "finance", "cooking", "astronomy", "music", "chess", "garden", "ocean", "desert",
         "railway", "medicine"]


def _encoder(folder: Path) -> Encoder:
    # mean pooling: in a 2-layer random model the prompt's last token barely sees the text, so "last" pooling
    # would leave nothing to learn from in a few steps
    return Encoder(str(folder), progress=False, encoding_cache=False, dtype="float32", max_length=96,
                   pooling="mean")


def _toy() -> TrainingData:
    # each topic's negative is the next topic's passage: every passage of a batch is distinct
    groups = [Group(f"about {w}", (f"{w} {w} is the topic here",),
                    neg=(f"{WORDS[(i + 1) % len(WORDS)]} {WORDS[(i + 1) % len(WORDS)]} is the topic here",),
                    source="toy") for i, w in enumerate(WORDS)]
    return TrainingData(groups, {"toy": len(groups)})


ARGS = dict(queries_per_step=4, negatives=1, lr=5e-3, warmup=0.0, lora_rank=4, lora_alpha=8.0, temperature=0.05,
            query_max_length=32, passage_max_length=32, save_every=3, eval_every=100, bf16="off",
            gradient_checkpointing=False)


def test_loss_falls_on_a_toy_task(tiny_model, tmp_path):
    enc = _encoder(tiny_model)
    args = TuneArgs(steps=24, **ARGS)
    state = Trainer(enc, _toy(), args, tmp_path / "run", progress=False).run()
    losses = [r["loss"] for r in state.log]
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.8 * first, (first, last)
    logged = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 25))
    assert {"dense", "sparse", "lr", "loss", "tokens", "tokens_per_s"} <= set(logged[0]) and logged[0]["tokens"] > 0


def test_resume_equals_an_uninterrupted_run(tiny_model, tmp_path):
    args = TuneArgs(steps=6, **ARGS)
    straight = Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "a", progress=False)
    straight.run()
    first = Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "b", progress=False)
    first.run(until=3)
    assert first.latest_checkpoint().name == "step-0000003"
    second = Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "b", progress=False)
    second.run(resume=True)
    a, b = straight.trainable_state(), second.trainable_state()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the trained adapter changed the model
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)


def _step_gradients(tiny_model, tmp_path, **kw) -> dict[str, torch.Tensor]:
    """The gradient of step 0's loss, from a fresh trainer whose LoRA weights are all seeded and non-zero (peft
    starts lora_B at zero, where lora_A's gradient is zero too)."""
    torch.manual_seed(0)
    tr = Trainer(_encoder(tiny_model), _toy(), TuneArgs(steps=1, **{**ARGS, "queries_per_step": 6, **kw}),
                 tmp_path / f"g{len(list(tmp_path.iterdir()))}", progress=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tr.params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    q, p = batch_at(tr.train.groups, 0, tr.args)
    tr.encoder.lm.train()
    if tr.args.grad_cache:
        tr.cached_loss(q, p)
    else:
        for mq, mp in micro_batches(q, p, tr.args):
            (tr.micro_loss(mq, mp)[0]["loss"] / tr.args.accumulate).backward()
    return {n: p.grad.detach().clone() for n, p in zip(tr.names, tr.params)}


@pytest.mark.parametrize("loss", [{}, {"sparse_weight": 0.0}, {"dense_weight": 0.0, "flops_p": 0.1}])
def test_grad_cache_gives_the_full_batch_gradient(tiny_model, tmp_path, loss):
    full = _step_gradients(tiny_model, tmp_path, **loss)
    cached = _step_gradients(tiny_model, tmp_path, accumulate=3, grad_cache=True, **loss)
    plain = _step_gradients(tiny_model, tmp_path, accumulate=3, **loss)
    assert full.keys() == cached.keys() == plain.keys()
    flat = {k: torch.cat([d[n].ravel() for n in sorted(d)]) for k, d in
            (("full", full), ("cached", cached), ("plain", plain))}
    assert flat["full"].abs().max() > 0 and all(v.abs().sum() > 0 for v in full.values())
    scale = flat["full"].abs().max()
    # GradCache: every query of the step sees all 12 passages, as in one batch of 6
    assert (flat["cached"] - flat["full"]).abs().max() <= 1e-5 * scale
    # plain accumulation: each pass's 2 queries see only their own 4 passages (a different loss, another gradient)
    assert (flat["plain"] - flat["full"]).abs().max() > 1e-2 * scale


def test_the_sparse_temperature_probe_scores_the_softmax_training_computes(tiny_model):
    from hylex.tuning.trainer import choose_sparse_temperature

    enc, groups = _encoder(tiny_model), _toy().groups

    def grid(**kw):
        args = TuneArgs(steps=1, **{**ARGS, "queries_per_step": 6, **kw})
        return {float(t): v for t, v in choose_sparse_temperature(enc, groups, args, batches=2)[1]["grid"].items()}

    full, cached, plain = grid(), grid(accumulate=3, grad_cache=True), grid(accumulate=3)
    assert all(abs(cached[t] - full[t]) < 1e-3 for t in full)  # one softmax over the step's 12 passages
    assert any(abs(plain[t] - full[t]) > 0.05 for t in full)   # softmaxes over a micro-batch's 4 passages


def test_grad_cache_runs_each_micro_batch_twice_with_the_same_dropout(tiny_model, tmp_path, monkeypatch):
    from hylex.tuning import trainer as tmod

    seen = []
    real = tmod.batch_features

    def spy(encoder, queries, passages, args):
        out = real(encoder, queries, passages, args)
        seen.append(((tuple(queries), tuple(passages)), [x.detach().clone() for x in out[:4]]))
        return out

    monkeypatch.setattr(tmod, "batch_features", spy)
    args = TuneArgs(steps=2, **{**ARGS, "accumulate": 2, "grad_cache": True, "lora_dropout": 0.5})
    torch.manual_seed(0)
    tr = Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "d", progress=False)
    tr.run()  # step 1 makes lora_B non-zero, so dropout changes step 2's representations
    first, second = seen[4:6], seen[6:8]  # step 2: both micro-batches without gradients, then both again
    assert [q for q, _ in first] == [q for q, _ in second] and len(seen) == 8
    for (_, a), (_, b) in zip(first, second):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    # dropout does act: the same micro-batch run twice without restoring the RNG gives other representations
    (q, p), _ = first[0]
    tr.encoder.lm.train()
    with torch.no_grad():
        a, b = (real(tr.encoder, list(q), list(p), args)[0] for _ in range(2))
    assert not torch.equal(a, b)


def test_resume_with_other_settings_is_refused(tiny_model, tmp_path):
    Trainer(_encoder(tiny_model), _toy(), TuneArgs(steps=3, **ARGS), tmp_path / "r", progress=False).run()
    other = TuneArgs(steps=3, **{**ARGS, "lr": 1e-3})
    with pytest.raises(TrainingDataError, match="other settings.*lr: checkpoint 0.005, given 0.001"):
        Trainer(_encoder(tiny_model), _toy(), other, tmp_path / "r", progress=False).run(resume=True)
    with pytest.raises(TrainingDataError, match="nothing to resume"):
        Trainer(_encoder(tiny_model), _toy(), other, tmp_path / "empty", progress=False).run(resume=True)


def test_a_checkpoint_older_than_a_setting_resumes_only_with_its_old_behaviour(tiny_model, tmp_path):
    # checkpoints written before float32_loss existed computed the loss's scores under autocast (the setting off)
    Trainer(_encoder(tiny_model), _toy(), TuneArgs(steps=6, **ARGS), tmp_path / "r", progress=False).run(until=3)
    meta_file = tmp_path / "r" / "checkpoints" / "step-0000003" / "trainer.json"
    meta = json.loads(meta_file.read_text())
    assert meta["args"].pop("float32_loss") is False
    meta_file.write_text(json.dumps(meta))
    newer = TuneArgs(steps=6, **{**ARGS, "float32_loss": True})
    with pytest.raises(TrainingDataError, match="other settings.*float32_loss: checkpoint False, given True"):
        Trainer(_encoder(tiny_model), _toy(), newer, tmp_path / "r", progress=False).run(resume=True)
    resumed = Trainer(_encoder(tiny_model), _toy(), TuneArgs(steps=6, **ARGS), tmp_path / "r", progress=False)
    assert resumed.run(resume=True).step == 6


def test_resume_with_gradient_checkpointing_switched_on(tiny_model, tmp_path):
    # a run killed for memory resumes with checkpointing on: it recomputes activations, the steps are the same
    args = TuneArgs(steps=6, **ARGS)
    straight = Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "a", progress=False)
    straight.run()
    Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "b", progress=False).run(until=3)
    ckpt = TuneArgs(steps=6, **{**ARGS, "gradient_checkpointing": True})
    second = Trainer(_encoder(tiny_model), _toy(), ckpt, tmp_path / "b", progress=False)
    second.run(resume=True)
    assert second.state.step == 6
    a, b = straight.trainable_state(), second.trainable_state()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    # the resumed steps trained the adapter (checkpointed layers still pass gradients to LoRA)
    mid = Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "c", progress=False)
    mid.run(until=3)
    assert any(not torch.equal(mid.trainable_state()[k], b[k]) for k in b if "lora_B" in k)


def test_the_estimate_runs_a_step_as_training_does(tiny_model, tmp_path, monkeypatch):
    # with --gradient-checkpointing the estimate's step must checkpoint too (in eval mode it kept every layer's
    # activations, so its peak memory was the run's peak whatever the setting), and leave the model as it found it
    from hylex.tuning.tune import estimate

    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    tr = Trainer(_encoder(tiny_model), _toy(), TuneArgs(steps=2, **{**ARGS, "gradient_checkpointing": True}),
                 tmp_path / "e", progress=False)
    before = tr.trainable_state()
    est = estimate(tr)
    assert len(calls) == 2 * 2 * 2  # twice (the second timed): the query and the passage pass, through both layers
    assert est["seconds_per_step"] > 0 and est["peak_rss_gib"] > 0
    assert not tr.encoder.lm.training
    after = tr.trainable_state()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights untouched
    assert all(p.grad is None for p in tr.params)


def test_the_estimate_of_a_grad_cache_step_times_both_passes(tiny_model, tmp_path, monkeypatch):
    from hylex.tuning import trainer as tmod
    from hylex.tuning.tune import estimate

    grads = []
    real = tmod.batch_features
    monkeypatch.setattr(tmod, "batch_features", lambda *a: grads.append(torch.is_grad_enabled()) or real(*a))
    args = TuneArgs(steps=2, **{**ARGS, "accumulate": 2, "grad_cache": True})
    tr = Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "e", progress=False)
    before = tr.trainable_state()
    assert estimate(tr)["seconds_per_step"] > 0
    # one micro-batch without gradients, then with them (times 2 micro-batches); twice, the second timed
    assert grads == [False, True] * 2
    after = tr.trainable_state()
    assert all(torch.equal(before[k], after[k]) for k in before) and all(p.grad is None for p in tr.params)


def test_float32_loss_scores_the_softmax_outside_autocast(tiny_model, tmp_path, monkeypatch):
    from hylex.tuning import loss as lmod

    seen = []
    real = lmod.info_nce
    monkeypatch.setattr(lmod, "info_nce", lambda s, *a: seen.append(s.dtype) or real(s, *a))
    for f32 in (False, True):
        args = TuneArgs(steps=1, **{**ARGS, "bf16": "on", "float32_loss": f32})
        tr = Trainer(_encoder(tiny_model), _toy(), args, tmp_path / f"f{f32}", progress=False)
        q, p = batch_at(tr.train.groups, 0, args)
        seen.clear()
        with torch.no_grad():
            got = tr.micro_loss(q, p)[0]
            scored = list(seen)
            reps = [x.float() for x in tr.features(q, p)[:4]]
            want = tr.loss(*reps, 1 + args.negatives, tr.false_negatives(q, p))
        assert reps[0].shape[0] == 4 and got.keys() == want.keys()
        if f32:  # the same representations, the scores and softmax in float32
            assert scored == [torch.float32] * 2
            for k in want:
                torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5)
        else:  # under autocast the cosines and sparse dot products come out bfloat16
            assert scored == [torch.bfloat16] * 2
            assert not torch.equal(got["dense"], want["dense"])


def test_merged_adapter_equals_the_peft_model(tiny_model, tmp_path):
    args = TuneArgs(steps=3, **ARGS)
    tr = Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "m", progress=False)
    tr.run()
    with torch.no_grad():
        want = tr.encoder.features(["about chess"], "query")[0]
    plain = _encoder(tiny_model)
    adapter = tr.adapter_weights()
    assert merge_lora(plain.lm, adapter, args.lora_rank, args.lora_alpha) == 2 * 7
    with torch.no_grad():
        got = plain.features(["about chess"], "query")[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_batches_are_deterministic_and_well_formed():
    data = _toy()
    args = TuneArgs(steps=10, **{**ARGS, "negatives": 2})
    q, p = batch_at(data.groups, 5, args)  # one labelled negative each, one padded from another group
    assert (q, p) == batch_at(data.groups, 5, args)
    assert len(q) == 4 and len(p) == 12
    for i, query in enumerate(q):
        w = query.split()[1]
        assert p[3 * i].startswith(w) and not any(x.startswith(w) for x in p[3 * i + 1:3 * i + 3])


def test_one_query_with_too_few_negatives_is_an_error_not_a_hang():
    # batch_at pads a short group with another query's positive; with one query there is none, and the padding loop
    # used to spin for ever (a tiny pair file after its dev split reached it)
    same = [Group("what is a kidney", ("The kidney filters blood.",), ()),
            Group("what is a kidney", ("Kidneys make urine.",), ("A liver is not a kidney.",))]
    args = TuneArgs(steps=1, queries_per_step=2, negatives=1)
    with pytest.raises(TrainingDataError, match="same query .* set negatives to 0 or less"):
        batch_at(same, 0, args)
    check_batches(same, TuneArgs(steps=1, negatives=0))  # nothing to pad: fine
    check_batches([same[1]], args)                        # enough negatives: fine
    other = [*same, Group("what is a liver", ("The liver stores glycogen.",), ())]
    check_batches(other, args)
    q, p = batch_at(other, 0, args)
    assert len(q) == 2 and len(p) == 4


@pytest.mark.parametrize("kw, needle", [({"steps": 0}, "steps must be a positive integer"),
                                        ({"lr": -1.0}, "lr must be"), ({"lr": float("nan")}, "lr must be"),
                                        ({"queries_per_step": 0}, "queries_per_step"),
                                        ({"queries_per_step": 6, "accumulate": 4}, "multiple of accumulate"),
                                        ({"negatives": -1}, "negatives"), ({"warmup": 1.0}, "warmup"),
                                        ({"bf16": "maybe"}, "bf16"),
                                        ({"grad_cache": True}, "set accumulate > 1"),
                                        ({"grad_cache": 1, "accumulate": 2}, "grad_cache must be true or false"),
                                        ({"float32_loss": "yes"}, "float32_loss must be true or false")])
def test_bad_training_settings(kw, needle):
    with pytest.raises(TrainingDataError, match=needle):
        TuneArgs(**kw).check()


def test_lora_targets_must_exist(tiny_model, tmp_path):
    with pytest.raises(TrainingDataError, match="not linear layers of this model"):
        Trainer(_encoder(tiny_model), _toy(), TuneArgs(steps=1, **{**ARGS, "lora_targets": ("c_attn",)}),
                tmp_path / "x", progress=False)


def test_saved_model_loads_encodes_and_differs_from_its_base(tiny_model, tmp_path):
    from hylex.engine.models import read_card
    from hylex.tuning.output import save_tuned

    args = TuneArgs(steps=3, **ARGS)
    tr = Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "w", progress=False)
    tr.run()
    with torch.no_grad():
        want = tr.encoder.features(["about chess"], "query")[0]
    out = save_tuned(tr, tmp_path / "tuned", training=_toy().summary(), dev={"ndcg@10": 0.5})
    card = read_card(out)
    assert card["base"]["model"] == str(tiny_model) and card["steps"] == 3 and card["adapter"]["rank"] == 4
    assert card["settings"]["pooling"] == "mean" and card["training"]["groups"] == len(WORDS)
    base = _encoder(tiny_model)
    # settings come from the card: no pooling/max_length given here
    tuned = Encoder(str(out), progress=False, encoding_cache=False, dtype="float32")
    assert tuned.config.pooling == "mean" and tuned.config.max_length == 96
    assert tuned.describe()["fingerprint"] == card["fingerprint"] != base.describe()["fingerprint"]
    with torch.no_grad():
        got = tuned.features(["about chess"], "query")[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    a, b = tuned.encode_queries(["about chess"]), base.encode_queries(["about chess"])
    assert float((a.dense * b.dense).sum()) < 0.99999  # the tuned encoder encodes differently
    from hylex.tuning.data import TrainingDataError as E
    with pytest.raises(E, match="already exists"):
        save_tuned(tr, out, training={})


def test_a_failed_save_leaves_nothing_that_loads(tiny_model, tmp_path, monkeypatch):
    import hylex.tuning.output as output

    tr = Trainer(_encoder(tiny_model), _toy(), TuneArgs(steps=1, **ARGS), tmp_path / "w", progress=False)
    tr.run()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(output, "sha256_file", boom)
    with pytest.raises(OSError, match="disk full"):
        output.save_tuned(tr, tmp_path / "tuned", training={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_tuned_model_whose_base_is_missing(tmp_path):
    from hylex.errors import ModelError

    d = tmp_path / "tuned"
    d.mkdir()
    (d / "adapter.safetensors").write_bytes(b"")
    (d / "hylex-model.json").write_text(json.dumps({"format": "hylex-model", "fingerprint": "x",
                                                    "base": {"model": str(tmp_path / "gone")},
                                                    "adapter": {"file": "adapter.safetensors", "rank": 4,
                                                                "alpha": 8}}))
    with pytest.raises(ModelError, match="needs its base model .*gone.*install the base model"):
        resolve_model(str(d))
    (d / "hylex-model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        resolve_model(str(d))


def test_dev_evaluator_scores_each_arm_and_fusion(tiny_model):
    from hylex.tuning.evaluate import FUSIONS, DevEvaluator, _topk, best_fusion

    dev = _toy()
    ev = DevEvaluator(dev, extra=["an unrelated passage about nothing"])
    assert len(ev.pool) == len(WORDS) + 1  # each positive is another group's negative: pooled once
    scores = ev(_encoder(tiny_model))
    assert set(scores) == {"dense", "sparse", "bm25", "best", *FUSIONS}
    assert all(0 <= v <= 1 for v in scores.values())
    # the BM25 arm finds every positive first ("about chess" shares only "chess" with its positive): perfect
    assert scores["bm25"] == 1.0
    assert best_fusion(scores)[0] in scores and best_fusion(scores)[0] != "best"
    # the weight grid's best is at least every arm's (single arms are grid points), and is kept
    assert scores["best"] >= max(scores[a] for a in ("dense", "sparse", "bm25")) - 1e-9
    assert ev.last_fusion["score"] == scores["best"]
    assert ev.last_fusion["arms"] == ["bm25"]  # ties go to the fewest arms
    D, I = _topk(np.array([[0.0, 2.0, 2.0, 1.0]], np.float32), 3, positive_only=True)
    assert I.tolist() == [[1, 2, 3]] and D.tolist() == [[2.0, 2.0, 1.0]]
    D, I = _topk(np.array([[0.0, 0.0, 1.0]], np.float32), 3, positive_only=True)
    assert I.tolist() == [[2, -1, -1]]


def test_tune_end_to_end_on_pair_files(tiny_model, tmp_path):
    from hylex.engine.models import read_card
    from hylex.tuning.trainer import TuneArgs as A
    from hylex.tuning.tune import DataArgs, tune

    rows = [{"query": f"about {w}", "pos": [f"{w} {w} is the topic here"]} for w in WORDS]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = []
    res = tune(DataArgs(pairs=[str(pairs)], dev=3, n=1, skip=0), tmp_path / "model", model=str(tiny_model),
               args=A(steps=4, **{**ARGS, "eval_every": 2, "save_every": 2}),
               encoder_options={"pooling": "mean", "max_length": 96}, progress=False, report=lines.append)
    card = read_card(res.out)
    assert card["training"]["groups"] == len(WORDS) - 3 and card["dev"]["queries"] == 3
    assert len(card["dev"]["history"]) == 2 and card["fusion"]["chosen_on"] == "dev (3 queries)"
    # the stored fusion is the weight grid's best on dev at the kept evaluation, and a valid search default
    assert card["fusion"]["dev"] == card["dev"]["after"]["best"] and card["fusion"]["method"] == "convex"
    from hylex.retrieval.fusion import check_fusion, model_fusion

    assert check_fusion(model_fusion(str(res.out)), "card")["arms"] == card["fusion"]["arms"]
    assert any(x.startswith("estimate: ") and "GiB" in x for x in lines)
    logged = [json.loads(x) for x in (tmp_path / "model.work" / "log.jsonl").read_text().splitlines()]
    assert [("dev" in r) for r in logged] == [False, True, False, True]
    assert Encoder(str(res.out), progress=False, encoding_cache=False).config.pooling == "mean"
    with pytest.raises(TrainingDataError, match="exactly one source"):
        tune(DataArgs(), tmp_path / "m2", model=str(tiny_model))


def test_a_resumed_tune_keeps_its_dev_history_and_starting_point(tiny_model, tmp_path, monkeypatch):
    from hylex.engine.models import read_card
    from hylex.tuning.trainer import TuneArgs as A
    from hylex.tuning.tune import DataArgs, tune

    rows = [{"query": f"about {w}", "pos": [f"{w} {w} is the topic here"]} for w in WORDS]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(model=str(tiny_model), args=A(steps=4, **{**ARGS, "eval_every": 2, "save_every": 2}),
              encoder_options={"pooling": "mean", "max_length": 96}, progress=False, report=None)
    data = DataArgs(pairs=[str(pairs)], dev=3, n=1, skip=0)
    first = read_card(tune(data, tmp_path / "model", **kw).out)
    assert [h["step"] for h in first["dev"]["history"]] == [2, 4]
    # as if killed after step 2's checkpoint: the resumed run restores step 2's evaluation from the log and the
    # starting point from run.json (not evaluated again), then trains and evaluates step 4 itself
    shutil.rmtree(tmp_path / "model")
    shutil.rmtree(tmp_path / "model.work" / "checkpoints" / "step-0000004")
    calls = []
    from hylex.tuning import evaluate as ev_mod

    real = ev_mod.DevEvaluator.__call__

    def counted(self, enc):
        calls.append(1)
        return real(self, enc)

    monkeypatch.setattr(ev_mod.DevEvaluator, "__call__", counted)
    again = read_card(tune(data, tmp_path / "model", resume=True, **kw).out)
    assert len(calls) == 1  # step 4 only
    assert [h["step"] for h in again["dev"]["history"]] == [2, 4]
    assert again["dev"]["before"] == first["dev"]["before"]
    assert again["dev"]["history"][0] == first["dev"]["history"][0]


def test_tune_from_a_corpus_keeps_its_bases_fusion_and_names_the_pseudo_dev(tiny_model, tmp_path):
    """No labels: lead pairs from the documents. By default (auto) the card keeps the base's fusion, since a fusion
    chosen on pseudo-queries did not transfer to real ones; the dev's choice is recorded beside it under its
    corpus-built name, and ``fusion_from="dev"`` stores that choice instead, so nobody reads it as chosen on real
    queries."""
    from hylex.engine.models import read_card
    from hylex.retrieval.fusion import BUILTIN_FUSION, stored_fusion
    from hylex.tuning.data import TrainingDataError
    from hylex.tuning.trainer import TuneArgs as A
    from hylex.tuning.tune import DataArgs, tune

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"{w} facts in brief " + f"more on {w} " * 8})
                              + "\n" for i, w in enumerate(WORDS)))
    data = DataArgs(from_corpus=str(corpus), pair_method="lead", dev=3, n=1, skip=0, dev_distractors=2)
    kw = dict(model=str(tiny_model), args=A(steps=2, **{**ARGS, "eval_every": 2}),
              encoder_options={"pooling": "mean", "max_length": 96}, progress=False, report=lambda _: None)
    with pytest.raises(TrainingDataError, match="fusion_from must be one of auto, dev, base"):
        tune(data, tmp_path / "bad", fusion_from="train", **kw)
    assert not (tmp_path / "bad").exists()
    pseudo = "dev (3 lead pairs built from the corpus, not real queries)"
    card = read_card(tune(data, tmp_path / "model", **kw).out)
    assert card["training"]["sources"] == {"corpus:lead": len(WORDS) - 3}
    assert "generator" not in card["training"]["data"]  # recorded for generated pairs only
    f = card["fusion"]  # the tiny base carries no fusion: the built-in one, as an untuned search of it would use
    assert (f["arms"], f["weights"]) == (BUILTIN_FUSION["arms"], BUILTIN_FUSION["weights"])
    assert f["chosen_on"].startswith(f"the base model {tiny_model}'s fusion, kept (builtin")
    assert f["dev_choice"]["chosen_on"] == pseudo and f["dev_choice"]["weights"]
    s = stored_fusion({"encoder": {"model_id": str(tmp_path / "model")}})  # what a plain search of it fuses
    assert (s["arms"], s["weights"]) == (f["arms"], f["weights"])
    dev = read_card(tune(data, tmp_path / "model-dev", fusion_from="dev", **kw).out)["fusion"]
    assert dev["chosen_on"] == pseudo and "dev_choice" not in dev
    assert (dev["arms"], dev["weights"]) == (f["dev_choice"]["arms"], f["dev_choice"]["weights"])
    # a tune over that model keeps no fusion its pseudo-query dev chose: it goes down to the base's
    from hylex.tuning.tune import kept_fusion

    assert kept_fusion(str(tmp_path / "model-dev"))[0] == str(tiny_model)
    kw2 = {**kw, "model": str(tmp_path / "model-dev")}
    chained = read_card(tune(data, tmp_path / "model-2", fusion_from="base", **kw2).out)["fusion"]
    assert (chained["arms"], chained["weights"]) == (BUILTIN_FUSION["arms"], BUILTIN_FUSION["weights"])
    assert f"its base {tiny_model}'s (its own was chosen on pseudo-queries)" in chained["chosen_on"]
    assert kept_fusion(str(tmp_path / "model"))[0] == str(tmp_path / "model")  # kept, not pseudo-chosen


def test_tuning_a_tuned_model_chains_its_adapters(tiny_model, tmp_path):
    from hylex.engine.models import read_card
    from hylex.errors import ModelError
    from hylex.tuning.output import save_tuned

    args = TuneArgs(steps=2, **ARGS)
    first = Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "w1", progress=False)
    first.run()
    one = save_tuned(first, tmp_path / "one", training={})
    enc1 = Encoder(str(one), progress=False, encoding_cache=False, dtype="float32")
    second = Trainer(enc1, _toy(), TuneArgs(steps=2, **{**ARGS, "seed": 1}), tmp_path / "w2", progress=False)
    second.run()
    with torch.no_grad():
        want = second.encoder.features(["about chess"], "query")[0]
    two = save_tuned(second, tmp_path / "two", training={})
    card = read_card(two)
    assert card["base"] == {"model": str(one), "fingerprint": read_card(one)["fingerprint"], "relative": "../one"}
    enc2 = Encoder(str(two), progress=False, encoding_cache=False, dtype="float32")
    assert len(enc2.resolved.adapters) == 2 and enc2.config.pooling == "mean"
    with torch.no_grad():
        got = enc2.features(["about chess"], "query")[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # both folders moved together: the recorded absolute base is gone, the relative one loads the same model
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(str(one), moved / "one")
    shutil.move(str(two), moved / "two")
    enc3 = Encoder(str(moved / "two"), progress=False, encoding_cache=False, dtype="float32")
    assert enc3.resolved.adapters[0][0] == str(moved / "one" / "adapter.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(enc3.features(["about chess"], "query")[0], want, atol=1e-5, rtol=1e-4)
    # moved without its base: one line naming both ways out
    shutil.move(str(moved / "one"), tmp_path / "gone")
    with pytest.raises(ModelError, match=r"needs its base model .*move it with this one \(expected at \.\./one"):
        Encoder(str(moved / "two"), progress=False, encoding_cache=False, dtype="float32")


def test_resume_from_another_base_model_is_refused(tiny_model, tmp_path):
    args = TuneArgs(steps=2, **ARGS)
    Trainer(_encoder(tiny_model), _toy(), args, tmp_path / "r", progress=False).run()
    other = Encoder(str(tiny_model), progress=False, encoding_cache=False, dtype="float32", max_length=96,
                    pooling="last")
    with pytest.raises(TrainingDataError, match="another model.*encoder settings differ|another model"):
        Trainer(other, _toy(), args, tmp_path / "r", progress=False).run(resume=True)


def test_a_shipped_tuned_model_loads_by_name_with_a_bfloat16_adapter(tiny_model, tmp_path, monkeypatch):
    """A tuned folder inside the package (hylex/models/<name>) loads by name; its manifests record the name; a
    bfloat16 adapter is half the file and encodes as the float32 weights rounded to bfloat16."""
    from safetensors.torch import load_file

    from hylex.engine import models
    from hylex.retrieval.fusion import model_fusion
    from hylex.tuning.output import save_tuned

    tr = Trainer(_encoder(tiny_model), _toy(), TuneArgs(steps=2, **ARGS), tmp_path / "w", progress=False)
    tr.run()
    full = save_tuned(tr, tmp_path / "f32", training={})
    fusion = {"method": "convex", "arms": ["dense", "bm25"], "weights": [0.3, 0.7], "chosen_on": "dev"}
    (tmp_path / "shipped").mkdir()
    half = save_tuned(tr, tmp_path / "shipped" / "smollm2-135m-hylex", training={}, adapter_dtype="bfloat16",
                      fusion=fusion)
    assert (half / "adapter.safetensors").stat().st_size < 0.6 * (full / "adapter.safetensors").stat().st_size
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(half / "adapter.safetensors")).values())
    monkeypatch.setattr(models, "SHIPPED_DIR", tmp_path / "shipped")
    r = resolve_model("smollm2-135m-hylex")
    assert r.model_id == "smollm2-135m-hylex" and r.path == str(tiny_model) and len(r.adapters) == 1
    enc = Encoder("smollm2-135m-hylex", progress=False, encoding_cache=False, dtype="float32")
    assert enc.describe()["model_id"] == "smollm2-135m-hylex" and enc.config.pooling == "mean"
    assert model_fusion("smollm2-135m-hylex")["arms"] == ["dense", "bm25"]
    ref = Encoder(str(full), progress=False, encoding_cache=False, dtype="float32")
    got, want = enc.encode_queries(["about chess"]).dense, ref.encode_queries(["about chess"]).dense
    assert np.abs(got - want).max() < 5e-3 and not np.array_equal(got, want)  # rounded, not another model
    with pytest.raises(Exception, match="adapter_dtype"):
        save_tuned(tr, tmp_path / "bad", training={}, adapter_dtype="float16")
    monkeypatch.setattr(models, "SHIPPED_DIR", tmp_path / "nothing-here")
    with pytest.raises(models.ModelError, match="missing from this hylex installation"):
        resolve_model("smollm2-135m-hylex")


def test_demo_tries_another_model_beside_the_default_index(tiny_model, tmp_path, capsys):
    from hylex import cli

    rc = cli.main(["--no-progress", "demo", "--model", str(tiny_model), "--limit", "12", "--workdir", str(tmp_path),
                   "--no-encoding-cache", "-k", "2", "compress data with gzip"])
    out = capsys.readouterr().out
    assert rc == 0, out
    index = tmp_path / f"stdlib-12-{tiny_model.name}"
    assert json.loads((index / "manifest.json").read_text())["encoder"]["model_id"] == str(tiny_model)
    assert not (tmp_path / "stdlib-12").exists()  # the default model's sample index is another folder
    assert f"with {tiny_model} into {index}" in out and "query: compress data with gzip" in out
    rc = cli.main(["--no-progress", "demo", "--model", str(tiny_model), "--limit", "12", "--workdir", str(tmp_path),
                   "--no-encoding-cache", "-k", "2", "compress data with gzip"])
    assert rc == 0 and "using the sample index" in capsys.readouterr().out


def test_choose_sparse_temperature_is_the_lowest_starting_loss(tiny_model):
    from hylex.tuning.loss import info_nce
    from hylex.tuning.trainer import choose_sparse_temperature

    enc, args = _encoder(tiny_model), TuneArgs(steps=3, **ARGS)
    chosen, probe = choose_sparse_temperature(enc, _toy().groups, args, grid=(0.5, 1.0, 10.0), batches=2)
    assert probe["batches"] == 2 and set(probe["grid"]) == {"0.5", "1.0", "10.0"} and chosen == probe["chosen"]
    assert probe["grid"][str(chosen)] == min(probe["grid"].values())
    # the same numbers computed by hand from the first two batches' sparse features
    want = []
    for step in range(2):
        q, p = batch_at(_toy().groups, step, args)
        with torch.no_grad():
            _, qs = enc.features(q, "query", max_text_tokens=32)
            _, ps = enc.features(p, "passage", max_text_tokens=32)
        # the toy's negatives are other groups' positives: masked out, as training masks them
        known = {g.query: frozenset(g.pos) for g in _toy().groups}
        mask = torch.tensor([[c != 2 * i and (p[c] in known[qq] or p[c] == p[2 * i]) for c in range(len(p))]
                             for i, qq in enumerate(q)])
        want.append(float(info_nce((qs @ ps.T) / 10.0, 2, mask if mask.any() else None)))
    assert probe["grid"]["10.0"] == pytest.approx(sum(want) / 2, abs=1e-4)
    with pytest.raises(TrainingDataError, match="grid"):
        choose_sparse_temperature(enc, _toy().groups, args, grid=(0.0,))
    with pytest.raises(TrainingDataError, match="chosen before training"):
        Trainer(enc, _toy(), TuneArgs(steps=3, **{**ARGS, "sparse_temperature": "auto"}), "unused", progress=False)
    with pytest.raises(TrainingDataError, match="or 'auto'"):
        TuneArgs(sparse_temperature="hot").check()


def test_tune_with_an_automatic_sparse_temperature_records_and_resumes_it(tiny_model, tmp_path, monkeypatch):
    from hylex.engine.models import read_card
    from hylex.tuning import trainer as trainer_mod
    from hylex.tuning.trainer import SPARSE_TEMPERATURES
    from hylex.tuning.trainer import TuneArgs as A
    from hylex.tuning.tune import DataArgs, tune

    rows = [{"query": f"about {w}", "pos": [f"{w} {w} is the topic here"]} for w in WORDS]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = []
    kw = dict(model=str(tiny_model), args=A(steps=4, **{**ARGS, "eval_every": 2, "save_every": 2,
                                                          "sparse_temperature": "auto"}),
              encoder_options={"pooling": "mean", "max_length": 96}, progress=False, report=lines.append)
    data = DataArgs(pairs=[str(pairs)], dev=3, n=1, skip=0)
    first = read_card(tune(data, tmp_path / "model", **kw).out)
    t = first["hyperparameters"]["sparse_temperature"]
    probe = first["training"]["sparse_temperature_probe"]
    assert t in SPARSE_TEMPERATURES and probe["chosen"] == t and probe["grid"][str(t)] == min(probe["grid"].values())
    assert any(x.startswith("sparse temperature: ") for x in lines)
    # resumed: the run's own number from its checkpoint, no second probe
    shutil.rmtree(tmp_path / "model")
    shutil.rmtree(tmp_path / "model.work" / "checkpoints" / "step-0000004")

    def no_probe(*a, **k):
        raise AssertionError("probed again on resume")

    monkeypatch.setattr(trainer_mod, "choose_sparse_temperature", no_probe)
    again = read_card(tune(data, tmp_path / "model", resume=True, **kw).out)
    assert again["hyperparameters"]["sparse_temperature"] == t
    assert again["training"]["sparse_temperature_probe"] == probe


def test_run_cost_counts_each_step_once_and_takes_the_gpu_peak(tmp_path):
    """A resumed run logs some steps twice (the last record wins); a CUDA run's peak GPU memory is the largest
    logged; a CPU log has no GPU figure."""
    from hylex.tuning.tune import run_cost

    rows = [{"step": 1, "tokens": 100, "seconds": 2.0, "cuda_peak_gib": 1.5},
            {"step": 2, "tokens": 100, "seconds": 2.0, "cuda_peak_gib": 2.5},
            {"step": 2, "tokens": 120, "seconds": 3.0, "cuda_peak_gib": 2.0},  # the resumed run's step 2
            {"step": 3, "tokens": 80, "seconds": 1.0, "cuda_peak_gib": 2.25}]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cost = run_cost(log)
    assert (cost["steps"], cost["tokens"], cost["step_seconds"]) == (3, 300, 6.0)
    assert cost["tokens_per_s"] == 50.0 and cost["cuda_peak_gib"] == 2.25 and cost["peak_rss_gib"] > 0
    log.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "cuda_peak_gib"}) + "\n" for r in rows))
    assert "cuda_peak_gib" not in run_cost(log)


def test_a_run_that_never_beats_its_start_keeps_its_best_evaluation(tiny_model, tmp_path, monkeypatch):
    """Dev scores scripted to fall (start 0.9, step 2 0.6, step 4 0.3): the saved model is step 2's, not the last
    step's, and the run says that no evaluation beat the start."""
    from hylex.engine.models import read_card
    from hylex.tuning import evaluate as ev_mod
    from hylex.tuning.trainer import TuneArgs as A
    from hylex.tuning.tune import DataArgs, tune

    rows = [{"query": f"about {w}", "pos": [f"{w} {w} is the topic here"]} for w in WORDS]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = iter([0.9, 0.6, 0.3])

    def scripted(self, enc):
        v = next(script)
        self.last_fusion = {"arms": ["dense", "sparse"], "weights": [0.5, 0.5], "score": v}
        return {k: v for k in ("dense", "sparse", "bm25", "dense+sparse", "dense+bm25", "sparse+bm25",
                               "dense+sparse+bm25", "best")}

    monkeypatch.setattr(ev_mod.DevEvaluator, "__call__", scripted)
    lines = []
    res = tune(DataArgs(pairs=[str(pairs)], dev=3, n=1, skip=0), tmp_path / "model", model=str(tiny_model),
               args=A(steps=4, **{**ARGS, "eval_every": 2, "save_every": 2}),
               encoder_options={"pooling": "mean", "max_length": 96}, progress=False, report=lines.append)
    card = read_card(res.out)
    assert card["dev"]["selected_step"] == 2 and card["dev"]["after"]["dense+sparse"] == 0.6
    assert card["fusion"]["dev"] == 0.6
    assert any(x.startswith("warning: no evaluation beat the starting model") for x in lines)
    # the saved adapter is step 2's weights (best.safetensors), not step 4's (the last checkpoint's)
    from safetensors.torch import load_file

    saved = load_file(str(res.out / "adapter.safetensors"))
    best = load_file(str(tmp_path / "model.work" / "best.safetensors"))
    ckpt = tmp_path / "model.work" / "checkpoints"
    step2 = load_file(str(ckpt / "step-0000002" / "weights.safetensors"))
    step4 = load_file(str(ckpt / "step-0000004" / "weights.safetensors"))
    assert set(step2) == set(best) and set(saved) == {k.replace(".default.", ".") for k in best}
    assert all(torch.equal(saved[k.replace(".default.", ".")], best[k]) and torch.equal(best[k], step2[k])
               for k in best)
    assert any(not torch.equal(step2[k], step4[k]) for k in best)
