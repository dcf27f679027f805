"""`hylex tune` on the real default model: 2 steps on 8 pairs; the saved folder loads, encodes and differs from the
base; `--model DIR` works for index and search; bad input is one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hylex import cli
from hylex.engine import Encoder
from hylex.engine.models import read_card

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "data" / "train" / "selqa.jsonl"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    if TRAIN.is_file():
        lines = TRAIN.read_text().splitlines()[:10]
    else:  # outside this project's machine: a small stand-in of the same format
        lines = [json.dumps({"query": f"what does the {w} do", "pos": [f"The {w} is a part that works hard."],
                             "neg": [f"Nothing here about a {w}."]}) for w in
                 ("heart", "liver", "engine", "piston", "kidney", "brain", "valve", "rotor", "lung", "gear")]
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture(scope="module")
def tuned(pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tuned") / "model"
    rc = cli.main(["tune", str(pairs), "--out", str(out), "--steps", "2", "--batch", "4", "--negatives", "1",
                   "--dev", "2", "--eval-every", "2", "--save-every", "1", "--lr", "1e-3", "--no-progress",
                   "--no-encoding-cache"])
    assert rc == 0
    return out


def test_tuned_folder_loads_encodes_and_differs(tuned):
    card = read_card(tuned)
    assert card["base"]["model"] == "smollm2-135m" and card["steps"] == 2 and card["training"]["groups"] == 8
    assert (tuned / "adapter.safetensors").stat().st_size < 20 * 2**20  # an adapter, not a model copy
    # no --sparse-temperature: the default is auto, so the probe ran and its choice is a grid value
    probe, t = card["training"]["sparse_temperature_probe"], card["hyperparameters"]["sparse_temperature"]
    assert set(probe["grid"]) == {"1.0", "3.0", "10.0", "30.0", "100.0"} and probe["chosen"] == t
    assert probe["grid"][str(t)] == min(probe["grid"].values())
    # labelled pairs (not built from a corpus): --fusion-from auto keeps the dev's own choice
    assert card["fusion"]["chosen_on"] == "dev (2 queries)" and "dev_choice" not in card["fusion"]
    base = Encoder(progress=False, encoding_cache=False, dtype="float32")
    mine = Encoder(str(tuned), progress=False, encoding_cache=False, dtype="float32")
    assert mine.describe()["fingerprint"] != base.describe()["fingerprint"]
    texts = ["Where are Rockefeller Museum and LA Mayer Institute?"]
    a, b = mine.encode_queries(texts), base.encode_queries(texts)
    cos = float((a.dense * b.dense).sum())
    assert 0.5 < cos < 0.99999  # changed, not destroyed
    assert a.sparse.nnz > 0
    log = [json.loads(x) for x in (tuned.parent / "model.work" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and "dev" in log[1]


def test_index_built_with_the_tuned_model_refuses_the_base(tuned, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in
                              enumerate(["The museum holds Islamic art.", "Bond yields rose sharply."])))
    assert cli.main(["index", str(corpus), "--index", str(tmp_path / "ix"), "--model", str(tuned),
                     "--no-progress", "--no-encoding-cache"]) == 0
    assert cli.main(["search", str(tmp_path / "ix"), "islamic art museum", "--json", "--no-encoding-cache"]) == 0
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])[0]["hits"]
    assert hits[0]["id"] == "d0"
    rc = cli.main(["index", str(corpus), "--index", str(tmp_path / "ix"), "--upsert", "--model", "smollm2-135m",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "model_id: index" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "0"], "must be a positive integer"),
    (["--lr", "-1"], "lr must be a finite number > 0"),
    (["--batch", "3", "--accumulate", "2"], "multiple of accumulate"),
    (["--sparse-temperature", "0"], "sparse_temperature must be a finite number > 0"),
    (["--sparse-temperature", "hot"], "expected a number or auto"),
    (["--mine-index", "no-such-index"], "mining index no-such-index is not a folder"),
    (["--mine-index", ".", "--no-mine"], "mining turned off"),
    (["--fusion-from", "train"], "invalid choice: 'train'"),
    (["--pairs-from", "summary"], "unknown pair construction 'summary'"),
    (["--pairs-from", "lead+summary"], "unknown pair construction 'summary'"),
    (["--pairs-from", "lead+lead"], "names each at most once"),
    (["--generate", "0"], "must be a positive integer"),
    (["--generate", "10"], "applies to generated pairs only"),
    (["--grad-cache"], "set accumulate > 1"),
])
def test_bad_tune_options(pairs, tmp_path, capsys, argv, needle):
    parse_error = any(s in needle for s in ("positive integer", "or auto", "invalid choice"))
    with pytest.raises(SystemExit) if parse_error else _nullcontext():
        rc = cli.main(["tune", str(pairs), "--out", str(tmp_path / "m"), *argv])
        assert rc == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_tune_refuses_an_existing_out_and_empty_data(pairs, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert cli.main(["tune", str(pairs), "--out", str(tmp_path / "m")]) == 2
    assert "already exists" in capsys.readouterr().err
    empty = tmp_path / "e.jsonl"
    empty.write_text(json.dumps({"query": "q", "pos": []}) + "\n")
    assert cli.main(["tune", str(empty), "--out", str(tmp_path / "m2")]) == 2
    assert "no record with a positive" in capsys.readouterr().err
    assert cli.main(["tune", str(pairs), "--out", str(tmp_path / "m3"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_a_single_training_query_short_of_negatives_is_one_line_before_the_model_loads(tmp_path, capsys):
    one = tmp_path / "one.jsonl"  # two queries: the dev takes one, the other is left alone with no negative
    one.write_text("".join(json.dumps({"query": q, "pos": [f"About {q}."]}) + "\n" for q in ("kidneys", "livers")))
    rc = cli.main(["tune", str(one), "--out", str(tmp_path / "m"), "--dev", "1", "--negatives", "2", "--no-mine",
                   "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "every training group has the same query" in err and "set negatives to 0 or less" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.work").exists()


def test_a_device_torch_does_not_know_is_one_line(pairs, tmp_path, capsys):
    assert cli.main(["tune", str(pairs), "--out", str(tmp_path / "m"), "--device", "tpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "device 'tpu' is not one hylex runs on" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_tune_refuses_a_test_split_unless_allowed(tmp_path, capsys, monkeypatch):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"text about topic {i}"}) + "\n"
                                               for i in range(12)))
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"topic {i}"}) + "\n"
                                                for i in range(12)))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                             "".join(f"q{i}\td{i}\t1\n" for i in range(12)))
    argv = ["tune", str(beir), "--split", "test", "--out", str(tmp_path / "m"), "--dev", "2", "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--split test: a model trained on test qrels" in err and "--allow-test" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m").exists()

    class Loaded(Exception):
        pass

    def stop(*a, **k):
        raise Loaded

    monkeypatch.setattr("hylex.engine.encoder.Encoder.__init__", stop)  # knowingly allowed: it goes on to the model
    with pytest.raises(Loaded):
        cli.main([*argv, "--allow-test"])


def test_a_signalled_tune_writes_no_model_and_resumes(pairs, tmp_path, capsys, monkeypatch):
    # SIGTERM during step 1 of 2: the step finishes and is checkpointed, but the run is unfinished, so no output
    # folder (a script must not take it for the result) and a non-zero exit; --resume then finishes it
    import os
    import signal

    from hylex.tuning.trainer import Trainer

    step = Trainer._step

    def killed_once(self, i):
        rec = step(self, i)
        if i == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the trainer's handler, not to pytest
        return rec

    monkeypatch.setattr(Trainer, "_step", killed_once)
    out = tmp_path / "m"
    argv = ["tune", str(pairs), "--out", str(out), "--steps", "2", "--batch", "4", "--negatives", "1", "--dev", "2",
            "--eval-every", "2", "--save-every", "5", "--lr", "1e-3", "--no-progress", "--no-encoding-cache"]
    assert cli.main(argv) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM at step 1 of 2" in err and "--resume" in err
    assert not out.exists()
    assert (tmp_path / "m.work" / "checkpoints" / "step-0000001").is_dir()
    monkeypatch.setattr(Trainer, "_step", step)
    assert cli.main([*argv, "--resume"]) == 0
    assert read_card(out)["steps"] == 2


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_an_index_built_with_a_relative_model_path_searches_from_anywhere(tuned, tmp_path, capsys, monkeypatch):
    """`--model runs/x` is recorded by its absolute path: searching from another working directory loads it."""
    import os

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in
                              enumerate(["Volcanoes erupt lava.", "Bond yields rose sharply."])))
    monkeypatch.chdir(tuned.parent)
    assert cli.main(["--no-progress", "index", str(corpus), "--index", str(tmp_path / "ix"), "--model",
                     tuned.name]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["search", str(tmp_path / "ix"), "volcano lava", "-k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["hits"]
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["encoder"]["settings"]["model"] == str(tuned.resolve()) and os.path.isabs(
        manifest["encoder"]["settings"]["model"])
