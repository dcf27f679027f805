"""``tune()``: training data in, a tuned model folder out (what ``hylex tune`` runs).

Data (:class:`DataArgs`) -> groups (BEIR qrels, pair files, or a bare corpus) -> BM25-mined hard negatives -> a
dev split of the training queries -> :class:`Trainer` with dev nDCG@10 at each evaluation (the best evaluation's
weights are kept: model selection; ``patience`` evaluations without gain stop the run: early stopping) -> the
fusion that scores best on dev (or the base's: ``fusion_from``) -> :func:`save_tuned`. Checkpoints and the JSONL
log live in ``workdir`` (default ``<out>.work``); ``resume`` continues there.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from hylex.corpus import is_test_split
from hylex.engine.models import ZERO_SHOT_MODEL
from hylex.tuning.data import (
    CORPUS_METHODS, MiningWindow, TrainingData, TrainingDataError, beir_groups, check_mining, corpus_groups,
    dev_split, mine_negatives, mine_negatives_index, mix, read_pairs,
)
from hylex.tuning.generate import DEFAULT_GENERATOR

# --from-corpus constructions: the rule-built ones of corpus_groups, and queries an instruct LLM writes
PAIR_METHODS = (*CORPUS_METHODS, "generate")

logger = logging.getLogger(__name__)


@dataclass
class DataArgs:
    """Where training groups come from (exactly one of ``beir``, ``pairs``, ``from_corpus``).

    ``caps`` / ``weights`` + ``total`` mix several pair files; ``mine`` adds BM25 negatives from ranks
    ``skip + 1 .. depth`` (``n`` per query; from the corpus for BEIR and ``from_corpus``, else from the pair
    files' own passages) to the training groups, or, with ``mine_index``, negatives from that hylex index's
    ``mine_mode`` search (``hybrid``: its stored fusion; encoded with the model that built it); ``dev`` (fraction
    or count of training queries, at most ``max_dev``) is held out for model selection and the fusion choice.

    The dev pool is each dev query's positives and at most ``dev_negatives`` of its labelled negatives, plus
    ``dev_distractors`` random passages (from the corpus, or from the training groups' positives for pair files).
    It holds no BM25-mined passage: a pool gathered from BM25's own top ranks lets BM25 separate positives from
    them almost perfectly (dev nDCG@10 0.86 on SciFact against 0.68 on its full test corpus) and would bias the
    fusion chosen on it towards BM25.
    """

    beir: str | None = None
    split: str = "train"
    pairs: Sequence[str] = ()
    caps: Sequence[int | None] | None = None
    weights: Sequence[float] | None = None
    total: int | None = None
    from_corpus: str | None = None
    pair_method: str = "auto"
    generator: str = DEFAULT_GENERATOR
    generate: int | None = None
    mine: bool = True
    skip: int = 3
    depth: int = 50
    n: int = 7
    mine_index: str | None = None
    mine_mode: str = "hybrid"
    dev: float | int = 0.1
    max_dev: int = 200
    dev_distractors: int = 300
    dev_negatives: int = 3
    seed: int = 0

    @property
    def methods(self) -> tuple[str, ...]:
        """The ``--from-corpus`` constructions: ``pair_method`` split on ``+`` (``"lead+generate"``: a mix)."""
        return tuple(m.strip() for m in str(self.pair_method).split("+"))

    @property
    def generated(self) -> bool:
        """Whether some queries are written by an instruct LLM (``--from-corpus C --pairs-from generate``, alone or
        in a ``+`` mix)."""
        return bool(self.from_corpus) and "generate" in self.methods

    def check(self) -> "DataArgs":
        given = [x for x in (self.beir, list(self.pairs) or None, self.from_corpus) if x]
        if len(given) != 1:
            raise TrainingDataError("give exactly one source of training data: a BEIR folder (with --split), pair "
                                    "files, or --from-corpus CORPUS.jsonl")
        MiningWindow(self.skip, self.depth, self.n)
        for m in self.methods:
            if m not in PAIR_METHODS:
                raise TrainingDataError(f"unknown pair construction {m!r}: choose one of {', '.join(PAIR_METHODS)}, "
                                        f"or several joined by + (e.g. lead+generate)")
        if len(self.methods) > 1 and (len(set(self.methods)) < len(self.methods) or "auto" in self.methods):
            raise TrainingDataError(f"a mix of pair constructions names each at most once and not auto, got "
                                    f"{self.pair_method!r}: e.g. lead+generate")
        if self.generate is not None and (isinstance(self.generate, bool) or not isinstance(self.generate, int)
                                          or self.generate < 1):
            raise TrainingDataError(f"generate (documents to write queries for) must be an integer >= 1, got "
                                    f"{self.generate!r}")
        if self.generate is not None and not self.generated:
            raise TrainingDataError("generate (documents to write queries for) applies to generated pairs only: add "
                                    "--from-corpus CORPUS --pairs-from generate, or drop --generate")
        if self.mine_index is not None and not self.mine:
            raise TrainingDataError("a mining index was given with mining turned off: drop --no-mine or --mine-index")
        check_mining(self.mine_index, self.mine_mode)  # before a model loads, not after
        for name in ("dev_distractors", "dev_negatives"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise TrainingDataError(f"{name} must be an integer >= 0, got {v!r}")
        return self


def run_groups(d: DataArgs, queries: int) -> int:
    """Groups a run draws: one per training query (``queries``: steps x queries per step) plus the dev queries
    carved from them."""
    if isinstance(d.dev, int) and not isinstance(d.dev, bool) and d.dev >= 1:
        return queries + d.dev
    return queries + min(d.max_dev, math.ceil(queries * d.dev / max(1e-9, 1 - d.dev)))


def share(d: DataArgs, queries: int) -> int:
    """Groups each construction of a ``+`` mix gives: an equal share of :func:`run_groups`."""
    return math.ceil(run_groups(d, queries) / len(d.methods))


def generate_count(d: DataArgs, queries: int) -> int:
    """Documents ``--pairs-from generate`` writes queries for when ``d.generate`` is unset: one per group the run
    draws (:func:`run_groups`), or per group of its share in a ``+`` mix (:func:`share`; documents whose query is
    dropped as generic are made up by further documents, see :func:`_generated_share`)."""
    if d.generate is not None:
        return d.generate
    return share(d, queries)


def _generated_share(d: DataArgs, docs, generator, want: int, *, exact: bool, cache, progress) -> TrainingData:
    """Generated groups for ``want`` documents; with ``exact`` (a mix's share, ``d.generate`` unset), further
    documents until ``want`` groups remain after the generic-query filter (at most 3 rounds, at most 2x
    ``want`` documents), so a mix keeps its proportions."""
    from hylex.tuning.generate import generated_groups

    limit = want
    data = generated_groups(docs, generator, limit=limit, seed=d.seed, cache=cache, progress=progress)
    for _ in range(3):
        if not exact or len(data) >= want or limit >= 2 * want:
            break
        # the dropped fraction so far, applied to the missing groups (a superset: the same seeded order)
        limit = min(2 * want, limit + math.ceil((want - len(data)) * limit / max(1, len(data))))
        data = generated_groups(docs, generator, limit=limit, seed=d.seed, cache=cache, progress=progress)
    if exact and len(data) > want:
        data = TrainingData(data.groups[:want], {"corpus:generate": want}, dict(data.skipped))
    return data


def load_data(d: DataArgs, *, queries: int | None = None, cache: str | os.PathLike | None = None,
              device: str = "auto", threads: int | None = None, progress: bool | None = None
              ) -> tuple[TrainingData, TrainingData, list[str]]:
    """``(train, dev, distractors)`` for ``d``. ``queries`` (the run's steps x queries per step), ``cache`` (the
    written queries' file), ``device``, ``threads`` and ``progress`` serve ``pair_method="generate"`` only;
    ``queries`` also sizes a ``+`` mix (each construction an equal share of the run's groups)."""
    d.check()
    docs = None
    if d.beir:
        data, docs = beir_groups(d.beir, d.split)
    elif d.from_corpus:
        from hylex.corpus import read_corpus

        docs = list(read_corpus(d.from_corpus))
        methods = d.methods
        if queries is None and ((d.generated and d.generate is None) or len(methods) > 1):
            raise TrainingDataError("generated pairs and a mix of constructions need a count: set generate "
                                    "(documents to write queries for) or pass the run's queries")
        mixed = len(methods) > 1
        parts: dict[str, TrainingData] = {}
        if d.generated:
            from hylex.tuning.generate import QueryGenerator

            if threads:
                import torch

                torch.set_num_threads(int(threads))
            parts["generate"] = _generated_share(d, docs, QueryGenerator(d.generator, device=device),
                                                 generate_count(d, queries or 0),
                                                 exact=mixed and d.generate is None, cache=cache, progress=progress)
        # in a mix, the rule-built constructions draw from the documents no other construction used: more of the
        # corpus seen, and no document twice in a batch as two queries' positive
        used = {g.qid for part in parts.values() for g in part.groups}
        for m in methods:
            if m == "generate":
                continue
            pool = [doc for doc in docs if doc.id not in used] if mixed else docs
            parts[m] = corpus_groups(pool, m, seed=d.seed, limit=share(d, queries or 0) if mixed else None)
            used |= {g.qid for g in parts[m].groups}
        data = parts[methods[0]] if not mixed else mix([parts[m] for m in methods], seed=d.seed)
    else:
        parts = [read_pairs(p) for p in d.pairs]
        data = parts[0] if len(parts) == 1 and d.caps is None and d.weights is None else \
            mix(parts, caps=d.caps, weights=d.weights, total=d.total, seed=d.seed)
    train, dev = dev_split(data, d.dev, seed=d.seed, max_dev=d.max_dev)
    if d.mine:
        window = MiningWindow(d.skip, d.depth, d.n)
        if d.mine_index:
            train = mine_negatives_index(train, d.mine_index, window=window, seed=d.seed, mode=d.mine_mode)
        else:
            train = mine_negatives(train, docs, window=window, seed=d.seed)
    # the dev pool: labelled negatives only (capped), no mined ones (see the class docstring)
    dev = TrainingData([replace(g, neg=g.neg[:d.dev_negatives]) for g in dev.groups], dict(dev.sources),
                       dict(dev.skipped))
    distractors: list[str] = []
    rng = random.Random(d.seed)
    if docs and d.dev_distractors:
        sample = rng.sample(range(len(docs)), min(d.dev_distractors, len(docs)))
        distractors = [f"{docs[i].title}\n{docs[i].text}".strip() if docs[i].title else docs[i].text for i in sample]
    elif d.dev_distractors:  # pair files: other training queries' positives
        dev_texts = {t for g in dev.groups for t in (*g.pos, *g.neg)}
        texts = sorted({g.pos[0] for g in train.groups} - dev_texts)
        distractors = rng.sample(texts, min(d.dev_distractors, len(texts)))
    return train, dev, distractors


def _rss_gib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform != "darwin" else kb / 2**30


def estimate(trainer, evaluator=None) -> dict:
    """Time one training step (forward + backward, weights untouched; run twice, the second timed) and report the
    run's estimated time and the peak memory so far (the model and one step's activations)."""
    import torch

    from hylex.tuning.trainer import batch_at

    args = trainer.args
    queries, passages = batch_at(trainer.train.groups, 0, args)
    micro, group = args.queries_per_step // args.accumulate, 1 + args.negatives
    # in training mode, as a step runs: gradient checkpointing only acts there (in eval mode the estimate kept every
    # layer's activations and its peak memory, ~20 GiB here, was the run's peak whatever the setting)
    trainer.encoder.lm.train()
    try:
        # twice, the second timed: the first pays one-time costs (not looked into which). Timing the first,
        # the default 16 x 4 step here was estimated at 43.0 s against a median 27.5 s; timing the second, 25.5-27.8 s
        # against 25.9-27.4 s (three runs; benchmarks/README.md, "GradCache")
        for _ in range(2):
            t0 = time.perf_counter()
            if args.grad_cache:  # its first pass: the micro-batch's representations without gradients
                with torch.no_grad():
                    trainer.features(queries[:micro], passages[:micro * group])
            trainer.micro_loss(queries[:micro], passages[:micro * group])[0]["loss"].backward()
            trainer.opt.zero_grad(set_to_none=True)
    finally:
        trainer.opt.zero_grad(set_to_none=True)
        trainer.encoder.lm.eval()
    step_s = (time.perf_counter() - t0) * args.accumulate
    n_evals = args.steps // args.eval_every + 1 if evaluator else 0
    eval_s = 0.0
    if evaluator:
        te = time.perf_counter()
        n = min(16, len(evaluator.pool))
        trainer.encoder.encode_documents(evaluator.pool[:n])
        eval_s = (time.perf_counter() - te) / n * (len(evaluator.pool) + len(evaluator.queries))
    return {"seconds_per_step": round(step_s, 2), "steps": args.steps,
            "estimated_minutes": round((step_s * args.steps + eval_s * n_evals) / 60, 1),
            "eval_minutes_each": round(eval_s / 60, 1), "peak_rss_gib": round(_rss_gib(), 2)}


def _save_best(workdir: Path, best: dict) -> None:
    """The best evaluation's weights, kept across a resumed run (safetensors + JSON, written atomically)."""
    from safetensors.torch import save_file

    save_file(best["weights"], str(workdir / "best.tmp.safetensors"))
    os.replace(workdir / "best.tmp.safetensors", workdir / "best.safetensors")
    (workdir / "best.json").write_text(json.dumps({k: best.get(k) for k in ("score", "step", "scores", "fusion")}))


def _load_best(workdir: Path, best: dict) -> None:
    from safetensors.torch import load_file

    if (workdir / "best.json").is_file() and (workdir / "best.safetensors").is_file():
        best.update(json.loads((workdir / "best.json").read_text()))
        best["weights"] = load_file(str(workdir / "best.safetensors"))


def _log_steps(log: Path) -> dict[int, dict]:
    """A JSONL training log's records by step (a resumed run's repeated step: the last record wins)."""
    steps: dict[int, dict] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            if isinstance(rec, dict) and "step" in rec:
                steps[int(rec["step"])] = rec
    return steps


def _dev_history(log: Path, checkpoint: Path | None) -> list[dict]:
    """The dev evaluations a log recorded up to the step a resumed run continues from (``{"step", **scores}``)."""
    if checkpoint is None:
        return []
    upto = int(checkpoint.name.split("-")[-1])
    return [{"step": step, **rec["dev"]} for step, rec in sorted(_log_steps(log).items())
            if step <= upto and isinstance(rec.get("dev"), dict)]


def run_cost(log: Path) -> dict:
    """What the training steps in a JSONL log cost (a resumed run's steps counted once each, the last record of a
    step winning): steps, real tokens, seconds in steps, tokens/s, this process's peak RSS, and on CUDA the peak
    allocated GPU memory."""
    steps = _log_steps(log)
    tokens = sum(int(r.get("tokens", 0)) for r in steps.values())
    seconds = sum(float(r.get("seconds", 0)) for r in steps.values())
    cost = {"steps": len(steps), "tokens": tokens, "step_seconds": round(seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None, "peak_rss_gib": round(_rss_gib(), 2)}
    cuda = [float(r["cuda_peak_gib"]) for r in steps.values() if "cuda_peak_gib" in r]
    if cuda:  # CUDA training: torch's peak allocated GPU memory over the logged steps
        cost["cuda_peak_gib"] = max(cuda)
    return cost


@dataclass
class TuneResult:
    out: Path
    steps: int
    dev: dict = field(default_factory=dict)
    fusion: dict | None = None
    estimate: dict = field(default_factory=dict)


def _resolve_sparse_temperature(encoder, train, args, before: dict | None, say):
    """``args`` with ``sparse_temperature="auto"`` replaced by a number: on resume (``before``: the run's run.json,
    written with the resolved settings before the first step) the one the run chose, otherwise
    :func:`~hylex.tuning.trainer.choose_sparse_temperature` on the training groups. Returns ``(args, probe)`` (the
    probe's losses, or the resumed run's record of them). The Trainer still checks it against the checkpoint."""
    from hylex.tuning.trainer import choose_sparse_temperature

    saved = (before or {}).get("args", {}).get("sparse_temperature")
    if isinstance(saved, (int, float)) and not isinstance(saved, bool):
        say(f"sparse temperature: {saved} (the resumed run's)")
        return replace(args, sparse_temperature=float(saved)), before.get("sparse_temperature_probe")
    t0 = time.perf_counter()
    value, probe = choose_sparse_temperature(encoder, train.groups, args)
    say(f"sparse temperature: {value} (lowest starting sparse loss on {probe['batches']} training batches: "
        + ", ".join(f"{t} -> {v:.2f}" for t, v in probe["grid"].items()) + f"; {time.perf_counter() - t0:.0f} s)")
    return replace(args, sparse_temperature=value), probe


FUSION_FROM = ("auto", "dev", "base")
FUSION_FROM_DEFAULT = "auto"


def _corpus_built(sources: dict) -> bool:
    """Whether every training source (``TrainingData.sources`` keys) was built from a corpus (``corpus:<method>``):
    then the dev carved from them holds pseudo-queries, not real ones."""
    return bool(sources) and all(str(k).startswith("corpus:") for k in sources)


def _pseudo_chosen(card: dict | None) -> bool:
    """Whether a tuned card's fusion is the one its own corpus-built dev chose (no base fusion kept, as
    ``--fusion-from dev`` stores)."""
    if not card or not card.get("fusion") or "dev_choice" in card["fusion"]:
        return False
    return _corpus_built((card.get("training") or {}).get("sources") or {})


def kept_fusion(model: str) -> tuple[str, dict]:
    """``(model it comes from, fusion)``: the fusion a ``--fusion-from base`` tune over ``model`` keeps, the one a
    plain search of ``model``'s index fuses (its card or registry entry; the built-in one when it carries none),
    except that a fusion ``model``'s own pseudo-query dev chose is passed over for its base's, down the chain of
    bases, so that a fusion picked on pseudo-queries is never inherited as if real queries had chosen it."""
    from hylex.engine.models import base_spec, read_card, shipped_folder
    from hylex.retrieval.fusion import stored_fusion

    seen = set()
    while model not in seen:
        seen.add(model)
        folder = shipped_folder(model.lower()) or (Path(model) if Path(model).is_dir() else None)
        card = read_card(folder) if folder is not None else None
        if not _pseudo_chosen(card) or not (card.get("base") or {}).get("model"):
            break
        model = base_spec(folder, card)
    return model, stored_fusion({"encoder": {"model_id": model}})  # what a plain search of its index would fuse


def _base_fusion(model: str, dev_choice: dict) -> dict:
    """The fusion record a tuned card stores when it keeps its base's (:func:`kept_fusion`): its arms and weights,
    where they were chosen, and the dev's own choice."""
    origin, f = kept_fusion(model)
    via = "" if origin == model else f", its base {origin}'s (its own was chosen on pseudo-queries)"
    return {"method": "convex", "arms": list(f["arms"]), "weights": list(f["weights"]), "dev": None,
            "metric": dev_choice.get("metric"),
            "chosen_on": f"the base model {model}'s fusion{via}, kept ({f.get('chosen_on') or f.get('source')})",
            "dev_choice": {k: dev_choice.get(k) for k in ("arms", "weights", "dev", "chosen_on")}}


def tune(data: DataArgs, out: str | os.PathLike, *, model: str = ZERO_SHOT_MODEL, args=None,
         encoder_options: dict | None = None, workdir: str | os.PathLike | None = None, resume: bool = False,
         select_on: str = "dense+sparse", patience: int | None = None, device: str = "auto",
         threads: int | None = None, progress: bool | None = None, report=print,
         adapter_dtype: str = "float32", fusion_from: str = FUSION_FROM_DEFAULT,
         allow_test: bool = False) -> TuneResult:
    """Fine-tune ``model`` on ``data`` and write the tuned model to ``out`` (see the module docstring).

    Args:
        args: a :class:`TuneArgs` (when None, its defaults with ``sparse_temperature="auto"``, as ``hylex tune``).
        encoder_options: encoder settings (prompt, pooling, ...) to train with; a tuned model keeps them.
        select_on: the dev score that picks the best evaluation (an arm or a fusion of :data:`FUSIONS`).
        patience: stop after this many evaluations without a better ``select_on`` (None: never).
        report: where the estimate and progress lines go (``print``; None for silence).
        adapter_dtype: ``float32`` or ``bfloat16`` (half the file) for the saved LoRA adapter.
        fusion_from: the fusion the card stores: ``dev`` (the best on the dev queries' weight grid), ``base`` (the
            one ``model`` carries, chosen on some collection's real queries), or ``auto``: ``base`` when every
            training source is built from a corpus (its dev holds pseudo-queries, whose choice did not transfer:
            benchmarks/README.md, "Does a fusion chosen on pseudo-queries transfer?"), ``dev`` otherwise.
        allow_test: train on a BEIR split whose name starts with ``test`` (refused otherwise, as ``hylex fuse``
            refuses to choose a fusion there).
    """
    import torch

    from hylex.engine.encoder import Encoder
    from hylex.tuning.evaluate import FUSIONS, DevEvaluator, best_fusion
    from hylex.tuning.output import check_output, save_tuned
    from hylex.tuning.trainer import Trainer, TuneArgs, TuneInterrupted, check_batches

    from hylex.tuning.output import ADAPTER_DTYPES

    args = (args or TuneArgs(sparse_temperature="auto")).check()  # as `hylex tune`: 1 lost NFCorpus's sparse arm
    if data.beir and is_test_split(data.split) and not allow_test:
        raise TrainingDataError(f"--split {data.split}: a model trained on test qrels makes every later test score "
                                f"of it meaningless; train on a train split (the dev is carved from it), or pass "
                                f"--allow-test (allow_test=True) knowingly")
    out = check_output(out)
    if adapter_dtype not in ADAPTER_DTYPES:
        raise TrainingDataError(f"adapter dtype must be one of {', '.join(ADAPTER_DTYPES)}, got {adapter_dtype!r}")
    if select_on not in ("dense", "sparse", "bm25", "best", *FUSIONS):
        raise TrainingDataError(f"select_on must be an arm, one of {', '.join(FUSIONS)}, or best (the best fusion on "
                                f"the weight grid), got {select_on!r}")
    if fusion_from not in FUSION_FROM:
        raise TrainingDataError(f"fusion_from must be one of {', '.join(FUSION_FROM)}, got {fusion_from!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise TrainingDataError(f"patience must be a positive integer, got {patience!r}")
    say = report or (lambda *a, **k: None)
    workdir = Path(workdir) if workdir else out.with_name(out.name + ".work")
    queries = args.steps * args.queries_per_step
    if data.generated:
        say(f"queries for {generate_count(data, queries)} documents: written by "
            f"{data.generator} (about 0.5 s per document on 2 CPU cores in bfloat16), or read from "
            f"{workdir / 'generated-queries.jsonl'} where an earlier run wrote them")
    train, dev, distractors = load_data(data, queries=queries,
                                        cache=workdir / "generated-queries.jsonl", device=device,
                                        threads=threads, progress=progress)
    say(f"training data: {len(train)} groups ({', '.join(f'{k} {v}' for k, v in train.sources.items())}), "
        f"dev {len(dev)} queries + {len(distractors)} distractors")
    check_batches(train.groups, args)  # before the model loads
    encoder = Encoder(model, progress=False, encoding_cache=False, device=device, threads=threads,
                      **{**(encoder_options or {}), "dtype": "float32"})
    evaluator = DevEvaluator(dev, extra=distractors)
    # a resumed run's record: its dev starting point and sparse temperature probe
    before = None
    if resume:
        before = json.loads((workdir / "run.json").read_text()) if (workdir / "run.json").is_file() else {}
    probe = None
    if args.sparse_temperature == "auto":
        args, probe = _resolve_sparse_temperature(encoder, train, args, before, say)
    history: list[dict] = []
    best = {"score": None, "weights": None, "step": 0, "scores": None, "fusion": None}
    waited = [0]

    def evaluate(enc) -> dict:
        scores = evaluator(enc)
        history.append({"step": trainer.state.step, **scores})
        s = scores[select_on]
        if best["score"] is None or s > best["score"]:
            best.update(score=s, weights=trainer.trainable_state(), step=trainer.state.step, scores=scores,
                        fusion=evaluator.last_fusion)
            waited[0] = 0
            _save_best(workdir, best)
        else:
            waited[0] += 1
            if patience is not None and waited[0] >= patience:
                say(f"no better {select_on} for {patience} evaluations: stopping")
                trainer._stop = True
        say(f"dev after step {trainer.state.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        return scores

    trainer = Trainer(encoder, train, args, workdir, evaluate=evaluate, progress=progress)
    (workdir).mkdir(parents=True, exist_ok=True)
    zero = zero_fusion = None
    if resume:  # a resumed run keeps its dev history and starting point (the dev pool is fixed by the data's seed)
        history.extend(_dev_history(workdir / "log.jsonl", trainer.latest_checkpoint()))
        if before.get("dev_before") and before.get("data") == json.loads(json.dumps(asdict(data), default=str)):
            zero, zero_fusion = before["dev_before"], before.get("dev_before_fusion")
    if zero is None:
        zero = evaluator(encoder)  # the starting point, for the card and the log
        zero_fusion = evaluator.last_fusion
    say("dev before training: " + ", ".join(f"{k} {v:.4f}" for k, v in zero.items()))
    est = estimate(trainer, evaluator)
    say(f"estimate: {est['seconds_per_step']} s/step x {est['steps']} steps + evaluations ~ "
        f"{est['estimated_minutes']} min; peak memory so far {est['peak_rss_gib']} GiB")
    (workdir / "run.json").write_text(json.dumps({"data": asdict(data), "args": asdict(args), "model": model,
                                                  "sparse_temperature_probe": probe,
                                                  "encoder_options": encoder_options or {}, "estimate": est,
                                                  "dev_before": zero, "dev_before_fusion": zero_fusion},
                                                 default=str))
    if resume:
        _load_best(workdir, best)
    trainer.run(resume=resume)
    if trainer.interrupted is not None and trainer.state.step < args.steps:
        # an unfinished run must not leave a folder that loads (and that a script would take for the result)
        import signal

        raise TuneInterrupted(f"interrupted by {signal.Signals(trainer.interrupted).name} at step "
                              f"{trainer.state.step} of {args.steps}: the checkpoint is in {workdir} and nothing was "
                              f"written to {out}; run the same command with --resume to finish",
                              trainer.interrupted)
    if best["weights"] is not None and best["score"] is not None:  # the best evaluation, even under the start
        if best["score"] < zero[select_on]:
            say(f"warning: no evaluation beat the starting model on dev {select_on} ({best['score']:.4f} at step "
                f"{best['step']} < {zero[select_on]:.4f}): keeping the best evaluation; try fewer steps or a lower "
                f"--lr")
        with torch.no_grad():
            for n, p in zip(trainer.names, trainer.params):
                p.copy_(best["weights"][n])
        final, chosen = best["scores"], best.get("fusion")
    else:
        final = {k: v for k, v in history[-1].items() if k != "step"} if history else zero
        chosen = evaluator.last_fusion if history else zero_fusion
    # a corpus-built dev holds pseudo-queries, not a user's: the card says so where the fusion's origin is read
    summary = train.summary()
    src = [k.split(":", 1)[1] for k in summary.get("sources", {}) if k.startswith("corpus:")]
    dev_desc = (f"dev ({len(dev)} {'/'.join(src)} pairs built from the corpus, not real queries)" if src
                else f"dev ({len(dev)} queries)")
    if chosen:  # the grid's best convex fusion on dev
        fusion = {"method": "convex", "arms": list(chosen["arms"]), "weights": list(chosen["weights"]),
                  "dev": chosen["score"], "metric": evaluator.metric, "chosen_on": dev_desc}
        name = "+".join(fusion["arms"])
    else:  # a best evaluation saved before the grid existed
        name, arms, weights = best_fusion(final)
        fusion = {"method": "convex", "arms": list(arms), "weights": list(weights), "dev": final[name],
                  "metric": evaluator.metric, "chosen_on": dev_desc}
    if fusion_from == "base" or (fusion_from == "auto" and _corpus_built(summary.get("sources", {}))):
        fusion = _base_fusion(model, fusion)
        say(f"fusion: the base model's {'+'.join(fusion['arms'])} {fusion['weights']} kept (--fusion-from "
            f"{fusion_from}; the dev's choice, {name}, is recorded beside it)")
        name = "+".join(fusion["arms"])
    dev_card = {"before": zero, "after": final, "selected_step": best["step"], "history": history,
                "metric": evaluator.metric, "queries": len(dev), "pool": len(evaluator.pool)}
    training = {**summary, "data": {k: v for k, v in asdict(data).items() if v not in (None, (), [])
                                    and (data.generated or k != "generator")},
                "cost": run_cost(workdir / "log.jsonl")}
    if probe:
        training["sparse_temperature_probe"] = probe
    saved = save_tuned(trainer, out, training=training, dev=dev_card, fusion=fusion, adapter_dtype=adapter_dtype)
    say(f"saved {saved} (step {best['step'] or trainer.state.step}; dev {select_on} {zero[select_on]:.4f} -> "
        f"{final[select_on]:.4f}; fusion stored: {name}, {fusion['chosen_on']})")
    return TuneResult(saved, trainer.state.step, dev_card, fusion, est)
