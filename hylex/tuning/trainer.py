"""The training loop: LoRA (or full) fine-tuning of the encoder's dense and sparse representations together, from
one forward pass per text through :meth:`hylex.engine.Encoder.features` (the module inference uses).

State on disk is safetensors + JSON only (no pickle): checkpoints hold the trainable weights, AdamW's moments,
the step and the RNG states, so ``resume`` continues to the same weights as an uninterrupted run (the batch
order and negative sampling are functions of the seed and the step, not of how the run was split).
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from hylex.engine.encoder import bf16_is_fast
from hylex.engine.lora import merge_lora  # noqa: F401  (re-exported)
from hylex.tuning.data import Group, TrainingData, TrainingDataError
from hylex.tuning.loss import ContrastiveLoss

logger = logging.getLogger(__name__)

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# settings added after checkpoints were first written, with the value that reproduces what those checkpoints did
LEGACY_ARGS = {"mask_false_negatives": False, "sparse_temperature": 1.0, "grad_cache": False, "float32_loss": False}


class TuneInterrupted(TrainingDataError):
    """A run stopped by SIGINT/SIGTERM before its last step: the checkpoint is saved, no model is written."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class TuneArgs:
    """Training settings (validated by :meth:`check`).

    ``queries_per_step`` groups per optimizer step, each ``1 + negatives`` passages; ``accumulate`` splits a step
    into that many micro-batches (memory). Plain accumulation does **not** widen the in-batch negatives: each
    micro-batch's queries see only that micro-batch's passages. With ``grad_cache`` (GradCache, Gao et al. 2021,
    arXiv 2101.06983) every query sees every passage of the step, as in one full batch, in the memory of one
    micro-batch: the representations of all micro-batches are computed without gradients, the loss and its gradient
    with respect to them over the whole step, then each micro-batch runs again with gradients and back-propagates
    its share. Same gradient as the full batch (up to float rounding); one extra forward pass per step.
    """

    steps: int = 500
    queries_per_step: int = 16
    negatives: int = 3
    lr: float = 1e-4
    warmup: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    accumulate: int = 1
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ALL_LINEAR
    full: bool = False
    query_max_length: int = 64     # text tokens (the prompt comes on top)
    passage_max_length: int = 128
    temperature: float = 0.01
    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    flops_q: float = 0.0
    flops_p: float = 0.0
    # 1 = the raw sparse dot product (PromptReps); see hylex/tuning/loss.py for why NFCorpus needs more. "auto" (the
    # default of `hylex tune` and of tune() without args): tune() picks it from SPARSE_TEMPERATURES by the starting
    # loss on the first batches (choose_sparse_temperature); the Trainer itself needs a number
    sparse_temperature: float | str = 1.0
    # recompute each layer's activations in the backward pass: peak RSS 8.4 vs 19.1 GiB for 16 queries x 4
    # passages of 128 tokens on this CPU, step time 42.1 vs 47.9 s (benchmarks/README.md, "Training memory")
    gradient_checkpointing: bool = True
    # leave a query's other known positives out of its softmax when they come into the batch (as another group's
    # positive or a padding negative): a known positive is not a negative. On NFCorpus train (~43 judged documents
    # per query) 40% of queries had one in a batch of 16 x 4 (SciFact 2.5%). It did not stop NFCorpus's sparse
    # collapse (benchmarks/README.md, "Not run yet"): runs with and without it both lost the sparse arm by step 22
    mask_false_negatives: bool = True
    # the whole step's in-batch negatives with accumulate > 1 (GradCache; see the class docstring)
    grad_cache: bool = False
    # the InfoNCE's scores (cosines, sparse dot products) from float32 representations outside the bf16 autocast;
    # off, they are matmuls under autocast, bfloat16 on the CPU (a cosine near 0.8 held to ~0.004, 0.4 of a logit at
    # temperature 0.01), as every run before 2026-12-07 computed them. GradCache's loss is float32 either way
    float32_loss: bool = False
    bf16: str = "auto"
    seed: int = 0
    save_every: int = 100
    eval_every: int = 100

    def check(self) -> "TuneArgs":
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TrainingDataError(f"{name} must be a positive integer, got {v!r}")

        for name in ("steps", "queries_per_step", "accumulate", "lora_rank", "query_max_length",
                     "passage_max_length", "save_every", "eval_every"):
            positive_int(name)
        if isinstance(self.negatives, bool) or not isinstance(self.negatives, int) or self.negatives < 0:
            raise TrainingDataError(f"negatives must be an integer >= 0, got {self.negatives!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TrainingDataError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (0 <= self.warmup < 1):
            raise TrainingDataError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup!r}")
        for name in ("weight_decay", "max_grad_norm", "lora_alpha", "lora_dropout"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise TrainingDataError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.queries_per_step % self.accumulate:
            raise TrainingDataError(f"queries_per_step {self.queries_per_step} is not a multiple of accumulate "
                                    f"{self.accumulate}")
        for name in ("grad_cache", "float32_loss"):
            if not isinstance(getattr(self, name), bool):
                raise TrainingDataError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.grad_cache and self.accumulate == 1:
            raise TrainingDataError("grad_cache splits a step into its accumulate micro-batches and there is one: "
                                    "set accumulate > 1, or leave grad_cache off")
        if self.bf16 not in ("auto", "on", "off"):
            raise TrainingDataError(f"bf16 must be auto, on or off, got {self.bf16!r}")
        st = self.sparse_temperature
        if isinstance(st, bool) or (isinstance(st, str) and st != "auto"):
            raise TrainingDataError(f"sparse_temperature must be a finite number > 0 or 'auto', got {st!r}")
        ContrastiveLoss(self.temperature, self.dense_weight, self.sparse_weight, self.flops_q, self.flops_p,
                        1.0 if st == "auto" else float(st))
        return self


@dataclass
class TrainState:
    step: int = 0
    log: list = field(default_factory=list)


SPARSE_TEMPERATURES = (1.0, 3.0, 10.0, 30.0, 100.0)


def choose_sparse_temperature(encoder, groups: Sequence[Group], args: TuneArgs, *,
                              grid: Sequence[float] = SPARSE_TEMPERATURES, batches: int = 8) -> tuple[float, dict]:
    """The sparse temperature of ``grid`` with the lowest mean sparse InfoNCE on the first ``batches``
    micro-batches training would see (whole steps under ``grad_cache``, whose softmax spans the step), before any
    step (forward only, as training runs it: autocast, masks).

    The unscaled loss can start far above ln(candidates), the loss of all-zero weights, and the sparse arm then
    collapses (NFCorpus: 18.3 unscaled, 3.9 at 10); the argmin is the scale at which the starting scores separate the
    positives best. Returns ``(temperature, {"grid": {t: mean loss}, "batches": n})``; chosen on training data only.
    """
    from hylex.tuning.loss import info_nce

    if not groups:
        raise TrainingDataError("no training groups to choose a sparse temperature on")
    grid = tuple(float(t) for t in grid)
    if not grid or any(not (math.isfinite(t) and t > 0) for t in grid):
        raise TrainingDataError(f"the sparse temperature grid must hold finite numbers > 0, got {grid!r}")
    positives, autocast = known_positives(groups), use_autocast(args, encoder.device)

    def units():  # the softmaxes training computes: one per micro-batch, or one per step under GradCache
        for step in itertools.count():
            q, p = batch_at(groups, step, args)
            if args.grad_cache:
                yield q, p, list(micro_batches(q, p, args))
            else:
                yield from ((mq, mp, [(mq, mp)]) for mq, mp in micro_batches(q, p, args))

    losses: dict[float, list[float]] = {t: [] for t in grid}
    for q, p, chunks in itertools.islice(units(), batches):
        reps = []
        for cq, cp in chunks:
            with torch.no_grad():
                _, qs, _, ps, _ = training_features(encoder, cq, cp, args, autocast)
            reps.append((qs.float(), ps.float()))
        scores = torch.cat([r[0] for r in reps]) @ torch.cat([r[1] for r in reps]).T
        mask = known_positive_mask(positives, q, p) if args.mask_false_negatives else None
        for t in grid:
            losses[t].append(float(info_nce(scores / t, 1 + args.negatives, mask)))
    means = {t: sum(v) / len(v) for t, v in losses.items()}
    best = min(grid, key=lambda t: (means[t], t))
    return best, {"grid": {str(t): round(means[t], 4) for t in grid}, "batches": batches, "chosen": best}


def use_autocast(args: TuneArgs, device: torch.device) -> bool:
    """Whether training runs under bfloat16 autocast (``args.bf16``: on, off, or auto = where it is fast)."""
    return args.bf16 == "on" or (args.bf16 == "auto" and bf16_is_fast(device))


def known_positives(groups: Sequence[Group]) -> dict[str, frozenset[str]]:
    """Each query's judged positives over all its groups."""
    out: dict[str, frozenset[str]] = {}
    for g in groups:
        out[g.query] = out.get(g.query, frozenset()) | frozenset(g.pos)
    return out


def known_positive_mask(positives: dict[str, frozenset[str]], queries: list[str],
                        passages: list[str]) -> torch.Tensor | None:
    """bool (Q, Q * group): passage c is a known positive of query i (or the same text as its target) and not
    its target column; None when there is none."""
    group = len(passages) // max(len(queries), 1)
    mask = torch.zeros((len(queries), len(passages)), dtype=torch.bool)
    for i, q in enumerate(queries):
        target = i * group
        known = positives.get(q, frozenset()) | {passages[target]}
        for c, p in enumerate(passages):
            if c != target and p in known:
                mask[i, c] = True
    return mask if mask.any() else None


def micro_batches(queries: list[str], passages: list[str], args: TuneArgs):
    """A step's ``args.accumulate`` micro-batches: ``(queries, passages)`` slices that keep each group whole."""
    micro, group = args.queries_per_step // args.accumulate, 1 + args.negatives
    for m in range(args.accumulate):
        yield queries[m * micro:(m + 1) * micro], passages[m * micro * group:(m + 1) * micro * group]


def batch_features(encoder, queries: list[str], passages: list[str], args: TuneArgs):
    """``(q_dense, q_sparse, p_dense, p_sparse, text_tokens)`` of a micro-batch through the Encoder's own
    ``features()``, texts cut to the training lengths (the caller sets grad mode and autocast)."""
    qd, qs = encoder.features(queries, "query", max_text_tokens=args.query_max_length)
    tokens = encoder.feature_tokens
    pd, ps = encoder.features(passages, "passage", max_text_tokens=args.passage_max_length)
    return qd, qs, pd, ps, tokens + encoder.feature_tokens


def training_features(encoder, queries: list[str], passages: list[str], args: TuneArgs, autocast: bool):
    """:func:`batch_features` under training's bfloat16 autocast where ``autocast`` (:func:`use_autocast`; the
    caller sets grad mode): what the trainer's passes and the sparse temperature probe encode with."""
    with torch.autocast(encoder.device.type, dtype=torch.bfloat16, enabled=autocast):
        return batch_features(encoder, queries, passages, args)


# -- batches ---------------------------------------------------------------------------------------------------
def check_batches(groups: Sequence[Group], args: TuneArgs) -> None:
    """Raise :class:`TrainingDataError` where :func:`batch_at` cannot fill a group: a group with fewer than
    ``args.negatives`` negatives is padded with another query's positive, which does not exist when every group
    has the same query (a tiny pair file after its dev split)."""
    short = sum(len(g.neg) < args.negatives for g in groups)
    if short and len({g.query for g in groups}) < 2:
        fewest = min(len(g.neg) for g in groups)
        raise TrainingDataError(f"every training group has the same query and {short} of them have fewer than "
                                f"{args.negatives} negatives, which are filled with other queries' positives: "
                                f"add pairs for other queries, or set negatives to {fewest} or less")


def batch_at(groups: Sequence[Group], step: int, args: TuneArgs) -> tuple[list[str], list[str]]:
    """The queries (Q,) and passages (Q * (1 + negatives),) of optimizer step ``step`` (0-based): a seeded
    permutation per epoch, each group's negatives drawn from its own (random in-pool passages of other groups
    fill a group that has too few). Deterministic in (seed, step): a resumed run sees the same batches."""
    q = args.queries_per_step
    per_epoch = max(1, len(groups) // q)
    epoch, within = divmod(step, per_epoch)
    order = list(range(len(groups)))
    random.Random(f"{args.seed}:epoch:{epoch}").shuffle(order)
    chosen = [groups[i] for i in order[within * q:(within + 1) * q]]
    if len(chosen) < q:  # fewer groups than a batch: repeat the epoch's order
        chosen = [groups[order[i % len(order)]] for i in range(q)]
    rng = random.Random(f"{args.seed}:step:{step}")
    queries, passages = [], []
    for j, g in enumerate(chosen):
        queries.append(g.query)
        passages.append(g.pos[rng.randrange(len(g.pos))])
        negs = list(g.neg)
        picked = rng.sample(negs, min(args.negatives, len(negs)))
        if len(picked) < args.negatives and all(o.query == g.query for o in groups):
            check_batches(groups, args)  # raises: no other query to pad with (the loop below would never end)
        while len(picked) < args.negatives:  # pad with another group's positive (a random negative)
            other = groups[rng.randrange(len(groups))]
            if other.query != g.query:
                picked.append(other.pos[0])
        passages.extend(picked)
    return queries, passages


# -- LoRA -----------------------------------------------------------------------------------------------------
def add_lora(lm: torch.nn.Module, args: TuneArgs) -> list[str]:
    """Put LoRA adapters (peft) on ``args.lora_targets`` of ``lm``; freeze everything else. Returns the trainable
    parameter names."""
    from peft import LoraConfig, inject_adapter_in_model

    present = {name.rsplit(".", 1)[-1] for name, m in lm.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in args.lora_targets if t not in present]
    if missing:
        raise TrainingDataError(f"LoRA targets {missing} are not linear layers of this model (it has "
                                f"{sorted(present)}): pick from those")
    for p in lm.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                     target_modules=list(args.lora_targets), init_lora_weights=True)
    torch.manual_seed(args.seed)  # LoRA A matrices are random: seeded so a run is reproducible
    inject_adapter_in_model(cfg, lm)
    return [n for n, p in lm.named_parameters() if p.requires_grad]


# -- optimizer state as safetensors + JSON --------------------------------------------------------------------
def _save_optimizer(opt: torch.optim.Optimizer, names: list[str], folder: Path) -> None:
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        name = names[idx]
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{name}::{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{name}::{k}"] = v
    save_file(tensors, str(folder / "optimizer.safetensors"))
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": groups, "scalars": scalars}))


def _load_optimizer(opt: torch.optim.Optimizer, names: list[str], folder: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
    sd = opt.state_dict()
    state = {}
    for idx, name in enumerate(names):
        st = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.split("::", 1)[0] == name}
        st.update({k.split("::", 1)[1]: v for k, v in meta["scalars"].items() if k.split("::", 1)[0] == name})
        if st:
            state[idx] = st
    groups = []
    for g, saved in zip(sd["param_groups"], meta["param_groups"]):
        groups.append({**saved, "params": g["params"]})
    opt.load_state_dict({"state": state, "param_groups": groups})


def _device_rng(device: torch.device) -> torch.Tensor:
    """The RNG state that dropout on ``device`` draws from."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_device_rng(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].astype(np.uint32),
            "python": random.getstate()}


# -- the loop ---------------------------------------------------------------------------------------------------
class Trainer:
    """Fine-tune ``encoder`` (an :class:`hylex.engine.Encoder` in float32) on ``train``.

    ``workdir`` holds checkpoints (``checkpoints/step-N``) and ``log.jsonl``; ``evaluate(encoder) -> dict`` (e.g.
    dev nDCG@10) runs every ``eval_every`` steps and at the end; ``progress`` draws a tqdm bar with loss and
    tokens/s.
    """

    def __init__(self, encoder, train: TrainingData, args: TuneArgs, workdir: str | os.PathLike, *,
                 evaluate: Callable | None = None, progress: bool | None = None):
        if not train.groups:
            raise TrainingDataError("no training groups: give pairs with at least one positive")
        self.encoder, self.train, self.args = encoder, train, args.check()
        check_batches(train.groups, args)
        if args.sparse_temperature == "auto":
            raise TrainingDataError("sparse_temperature 'auto' is chosen before training: call "
                                    "choose_sparse_temperature() (tune() does) and pass the number")
        self.workdir = Path(workdir)
        self.evaluate, self.progress = evaluate, progress
        self.loss = ContrastiveLoss(args.temperature, args.dense_weight, args.sparse_weight, args.flops_q,
                                    args.flops_p, args.sparse_temperature)
        self._positives = known_positives(train.groups)
        device = encoder.device
        self.autocast = use_autocast(args, device)
        lm = encoder.lm
        if args.full:
            for p in lm.parameters():
                p.requires_grad_(True)
            self.names = [n for n, p in lm.named_parameters() if p.requires_grad]
        else:
            self.names = add_lora(lm, args)
        if args.gradient_checkpointing:
            lm.gradient_checkpointing_enable()
        params = dict(lm.named_parameters())
        self.params = [params[n] for n in self.names]
        self.opt = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=args.weight_decay)
        warm = int(args.warmup * args.steps)

        def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (args.steps - step) / max(1, args.steps - warm))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.state = TrainState()
        self._stop = False
        self.interrupted: int | None = None  # the signal that stopped the run, if one did

    # -- checkpoints --
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the trained tensors on the CPU (a copy even there: ``.cpu()`` of a CPU tensor is the tensor
        itself, and a kept best evaluation must not follow the training that goes on)."""
        return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in zip(self.names, self.params)}

    def adapter_weights(self) -> dict[str, torch.Tensor]:
        """The LoRA tensors under peft's saved names (``...q_proj.lora_A.weight``), for :func:`merge_lora`."""
        if self.args.full:
            raise TrainingDataError("a full fine-tune has no adapter: save its weights instead")
        return {n.replace(".default.", "."): t for n, t in self.trainable_state().items()}

    def save_checkpoint(self) -> Path:
        from safetensors.torch import save_file

        final = self.workdir / "checkpoints" / f"step-{self.state.step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(self.trainable_state(), str(tmp / "weights.safetensors"))
        _save_optimizer(self.opt, self.names, tmp)
        rng = _rng_state()
        save_file({"torch": rng["torch"], "numpy": torch.from_numpy(rng["numpy"].astype(np.int64))},
                  str(tmp / "rng.safetensors"))
        py = rng["python"]
        (tmp / "trainer.json").write_text(json.dumps({
            "step": self.state.step, "args": asdict(self.args), "scheduler": self.sched.state_dict(),
            "python_rng": [py[0], list(py[1]), py[2]], "names": self.names, "encoder": self._encoder_id()}))
        os.replace(tmp, final)  # a checkpoint is complete or absent
        for old in sorted((self.workdir / "checkpoints").glob("step-???????"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)  # keep the last two
        return final

    def _encoder_id(self) -> dict:
        d = self.encoder.describe()
        settings = {k: v for k, v in d.get("settings", {}).items() if k != "dtype"}
        return {"model_id": d["model_id"], "fingerprint": d["fingerprint"], "settings": settings}

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.workdir / "checkpoints").glob("step-???????"))
        return found[-1] if found else None

    def load_checkpoint(self, folder: Path) -> None:
        from safetensors.torch import load_file

        meta = json.loads((folder / "trainer.json").read_text())
        mine_enc, theirs = self._encoder_id(), meta.get("encoder")
        if theirs is not None and theirs != json.loads(json.dumps(mine_enc)):
            what = [f"{k}: checkpoint {theirs.get(k)!r}, given {mine_enc.get(k)!r}" for k in ("model_id", "fingerprint")
                    if theirs.get(k) != mine_enc.get(k)] or ["encoder settings differ"]
            raise TrainingDataError(f"checkpoint {folder} was made from another model ({'; '.join(what)}): resume "
                                    f"with the same --model and settings, or start a new run")
        # settings that do not change the weights a step computes may differ on resume: gradient checkpointing
        # trades memory for time (a run killed for memory resumes with it on)
        saved = {k: v for k, v in meta["args"].items()
                 if k not in ("steps", "save_every", "eval_every", "gradient_checkpointing")}
        saved = {**LEGACY_ARGS, **saved}  # a checkpoint older than a setting ran without it
        mine = {k: v for k, v in asdict(self.args).items() if k in saved}
        diffs = [f"{k}: checkpoint {saved[k]!r}, given {mine[k]!r}" for k in saved
                 if json.loads(json.dumps(mine[k])) != saved[k]]
        if diffs or meta["names"] != self.names:
            what = "; ".join(diffs[:3]) or "other trainable parameters"
            raise TrainingDataError(f"checkpoint {folder} was made with other settings ({what}): resume with the "
                                    f"same settings, or start a new run")
        weights = load_file(str(folder / "weights.safetensors"))
        with torch.no_grad():
            for n, p in zip(self.names, self.params):
                p.copy_(weights[n])
        _load_optimizer(self.opt, self.names, folder)
        self.sched.load_state_dict(meta["scheduler"])
        rng = load_file(str(folder / "rng.safetensors"))
        torch.set_rng_state(rng["torch"])
        st = np.random.get_state()
        np.random.set_state((st[0], rng["numpy"].numpy().astype(np.uint32), *st[2:]))
        py = meta["python_rng"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        self.state.step = int(meta["step"])

    # -- one step --
    def micro_loss(self, queries: list[str], passages: list[str]) -> tuple[dict, int]:
        """One micro-batch's loss parts (``loss`` differentiable) and its text tokens: Q queries, Q * (1 +
        negatives) passages (each query's positive first), encoded through the Encoder's own features()."""
        args = self.args
        qd, qsp, pd, psp, tokens = self.features(queries, passages)
        mask = self.false_negatives(queries, passages) if args.mask_false_negatives else None
        # the scores' matmuls under the autocast too unless float32_loss (see TuneArgs.float32_loss)
        with torch.autocast(self.encoder.device.type, dtype=torch.bfloat16,
                            enabled=self.autocast and not args.float32_loss):
            return self.loss(qd.float(), qsp.float(), pd.float(), psp.float(), 1 + args.negatives, mask), tokens

    def false_negatives(self, queries: list[str], passages: list[str]) -> torch.Tensor | None:
        """bool (Q, Q * group): passage c is a known positive of query i (or the same text as its target) and not
        its target column; None when there is none."""
        return known_positive_mask(self._positives, queries, passages)

    def features(self, queries: list[str], passages: list[str]):
        """:func:`training_features` with this trainer's encoder, settings and autocast (the caller sets grad mode)."""
        return training_features(self.encoder, queries, passages, self.args, self.autocast)

    def cached_loss(self, queries: list[str], passages: list[str]) -> tuple[dict, int]:
        """GradCache: the step's loss over all its queries and passages, back-propagated micro-batch by micro-batch
        (gradients accumulate in the parameters). Returns the loss parts (floats) and the text tokens (each text
        counted once, though it runs twice)."""
        args, dev = self.args, self.encoder.device
        chunks = list(micro_batches(queries, passages, args))
        rngs, reps, tokens = [], [], 0
        with torch.no_grad():  # 1. representations, no activations kept
            for q, p in chunks:
                rngs.append(_device_rng(dev))  # the second pass must draw the same dropout masks
                *r, n = self.features(q, p)
                reps.append([x.float() for x in r])
                tokens += n
        # 2. the full-batch loss and its gradient with respect to every representation
        leaves = [torch.cat([r[i] for r in reps]).requires_grad_(True) for i in range(4)]
        mask = self.false_negatives(queries, passages) if args.mask_false_negatives else None
        parts = self.loss(*leaves, 1 + args.negatives, mask)
        parts["loss"].backward()
        grads = [x.grad for x in leaves]
        # 3. each micro-batch again with gradients: its representations' gradient flows into the parameters
        qo = po = 0
        for (q, p), rng in zip(chunks, rngs):
            _set_device_rng(dev, rng)
            qd, qs, pd, ps, _ = self.features(q, p)
            sq, sp = slice(qo, qo + len(q)), slice(po, po + len(p))
            # a representation the loss leaves out (dense or sparse weight 0) has no gradient
            surrogate = sum((x.float() * g[s]).sum() for x, g, s in zip((qd, qs, pd, ps), grads, (sq, sq, sp, sp))
                            if g is not None)
            surrogate.backward()
            qo, po = qo + len(q), po + len(p)
        return {k: float(v.detach()) for k, v in parts.items()}, tokens

    def _step(self, step: int) -> dict:
        args = self.args
        queries, passages = batch_at(self.train.groups, step, args)
        parts_sum: dict[str, float] = {}
        tokens = 0
        self.encoder.lm.train()
        if args.grad_cache:
            parts_sum, tokens = self.cached_loss(queries, passages)
        else:
            for q, p in micro_batches(queries, passages, args):
                parts, n = self.micro_loss(q, p)
                tokens += n
                (parts["loss"] / args.accumulate).backward()
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v.detach()) / args.accumulate
        if args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, args.max_grad_norm)
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.encoder.lm.eval()
        return {**parts_sum, "lr": lr, "tokens": tokens}

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        logger.warning("signal %d: saving a checkpoint after this step", signum)
        self.interrupted = signum  # unlike an early stop (patience), the run is unfinished: tune() must not save it
        self._stop = True

    def run(self, *, resume: bool = False, until: int | None = None) -> TrainState:
        """Train to ``args.steps`` (or stop after step ``until``, for tests and budgets); with ``resume``, continue
        from the latest checkpoint. A SIGINT/SIGTERM finishes the current step, saves and returns."""
        from tqdm.auto import tqdm

        from hylex.utils import bar_disabled

        args = self.args
        self.workdir.mkdir(parents=True, exist_ok=True)
        if resume:
            ck = self.latest_checkpoint()
            if ck is None:
                raise TrainingDataError(f"nothing to resume in {self.workdir}: no checkpoint yet (start without "
                                        f"--resume)")
            self.load_checkpoint(ck)
        else:
            random.seed(args.seed)
            np.random.seed(args.seed)
            torch.manual_seed(args.seed)
        end = args.steps if until is None else min(args.steps, until)
        log = (self.workdir / "log.jsonl").open("a")
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in old:
                signal.signal(s, self._on_signal)
        except ValueError:  # not the main thread: no handlers
            old = {}
        bar = tqdm(total=end, initial=self.state.step, desc="tune", unit="step", disable=bar_disabled(self.progress))
        t0 = time.perf_counter()
        try:
            while self.state.step < end and not self._stop:
                ts = time.perf_counter()
                rec = self._step(self.state.step)
                self.state.step += 1
                dt = time.perf_counter() - ts
                rec.update(step=self.state.step, seconds=round(dt, 3), tokens_per_s=round(rec["tokens"] / dt, 1))
                if self.encoder.device.type == "cuda":  # the GPU's own peak (RSS says nothing of it)
                    rec["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated(self.encoder.device) / 2**30, 3)
                if self.evaluate and (self.state.step % args.eval_every == 0 or self.state.step == args.steps):
                    rec["dev"] = self.evaluate(self.encoder)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                self.state.log.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                bar.update(1)
                if self.state.step % args.save_every == 0:
                    self.save_checkpoint()
            if self.state.step % args.save_every:
                self.save_checkpoint()  # the last step (or an interrupted run) is always saved
        finally:
            bar.close()
            log.close()
            for s, h in old.items():
                signal.signal(s, h)
        logger.info("trained %d steps in %.1fs", self.state.step, time.perf_counter() - t0)
        return self.state
