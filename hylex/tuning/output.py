"""A tuned model's folder: the LoRA adapter (or full weights) beside ``hylex-model.json``, its card.

The card names the base model and its fingerprint, the training data (sources and counts), the settings, steps,
dev metrics, hylex's version and the stored fusion (chosen on dev, or the base's); its own fingerprint (base
fingerprint + adapter bytes + settings) differs from the base's, so an index built with one refuses queries encoded
by the other. The folder is written under a temporary name beside the destination and renamed at the end: a failed
run never leaves a folder that loads.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import hylex
from hylex.engine.models import CARD_FORMAT, MODEL_CARD
from hylex.tuning.data import TrainingDataError
from hylex.utils import sha256_file

ADAPTER_FILE = "adapter.safetensors"


def check_output(out: str | os.PathLike) -> Path:
    """Refuse an output folder that exists (nothing is overwritten) or whose parent is missing."""
    out = Path(out)
    if out.exists():
        raise TrainingDataError(f"{out} already exists: pass a new --out folder (a tuned model is never written "
                                f"over another)")
    if not out.parent.is_dir():
        raise TrainingDataError(f"the parent folder of {out} does not exist: create it or pick another --out")
    return out


ADAPTER_DTYPES = ("float32", "bfloat16")


def save_tuned(trainer, out: str | os.PathLike, *, training: dict, dev: dict | None = None,
               fusion: dict | None = None, adapter_dtype: str = "float32") -> Path:
    """Write ``trainer``'s model to ``out`` (adapter + card, or full weights + card); returns the folder.

    ``adapter_dtype`` ``bfloat16`` halves the adapter file (what hylex ships); the deltas are merged in float32
    on load either way, so the model differs from the trained one only by that rounding of the LoRA matrices."""
    import torch
    from safetensors.torch import save_file

    if adapter_dtype not in ADAPTER_DTYPES:
        raise TrainingDataError(f"adapter_dtype must be one of {', '.join(ADAPTER_DTYPES)}, got {adapter_dtype!r}")
    out = check_output(out)
    enc, args = trainer.encoder, trainer.args
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if args.full:
            base = Path(enc.resolved.path)
            for f in base.iterdir():
                if f.is_file() and f.suffix in (".json", ".jinja", ".model", ".txt") and f.name != MODEL_CARD:
                    shutil.copy(f, tmp / f.name)
            state = {k: v.detach().cpu().contiguous() for k, v in enc.lm.state_dict().items()
                     if not (k == "lm_head.weight" and getattr(enc.lm.config, "tie_word_embeddings", False))}
            save_file(state, str(tmp / "model.safetensors"))
            weights_sha = sha256_file(tmp / "model.safetensors")
            adapter = None
        else:
            cast = getattr(torch, adapter_dtype)
            save_file({k: v.to(cast).contiguous() for k, v in trainer.adapter_weights().items()},
                      str(tmp / ADAPTER_FILE))
            weights_sha = sha256_file(tmp / ADAPTER_FILE)
            adapter = {"file": ADAPTER_FILE, "rank": args.lora_rank, "alpha": args.lora_alpha,
                       "targets": list(args.lora_targets), "sha256": weights_sha, "dtype": adapter_dtype}
        # the encoding settings trained with (not the model, not the runtime dtype)
        settings = {k: v for k, v in enc.describe().get("settings", {}).items() if k not in ("model", "dtype")}
        # the model training started from (a tuned model too: its adapters load first, then this one)
        base = {"model": enc.resolved.model_id if enc.resolved.card else enc.config.model,
                "fingerprint": enc.resolved.fingerprint}
        if enc.resolved.card and Path(base["model"]).is_absolute():
            # a tuned folder as base (stacked adapters): also where it lies from this folder, so the pair still
            # loads after both are moved or copied together (the fingerprint still decides)
            base["relative"] = os.path.relpath(base["model"], out)
        fp = hashlib.sha256(json.dumps([base["fingerprint"], weights_sha, settings], sort_keys=True).encode())
        card = {"format": CARD_FORMAT, "version": 1, "fingerprint": fp.hexdigest()[:16],
                "hylex_version": hylex.__version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "base": base, "adapter": adapter, "settings": settings, "training": training,
                "hyperparameters": asdict(args), "steps": trainer.state.step, "dev": dev or {},
                "fusion": fusion}
        (tmp / MODEL_CARD).write_text(json.dumps(card, indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
