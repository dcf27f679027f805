"""The LLM encoder: one forward pass per text gives a dense vector and vocabulary-projected sparse weights.

``PromptRepsModule`` is a plain ``torch.nn.Module`` around a causal LM (so it can later be fine-tuned);
``Encoder`` adds what a search engine needs around it: prompting, truncation, length-sorted batching by a token
budget, left padding, sparse pruning and progress bars.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from hylex.corpus import clean_text
from hylex.engine import lexicon, prompts
from hylex.engine.cache import EncodingCache, namespace
from hylex.engine.config import EncoderConfig  # noqa: F401  (re-exported)
from hylex.engine.models import DEFAULT_MODEL, ResolvedModel, _quiet_loading, cache_dir, load_causal_lm, resolve_model
from hylex.engine.settings import DENSE_AGGS, DTYPES, LONG_DOCS, NEUTRAL_SETTINGS, POOLINGS
from hylex.errors import HylexError, ModelError
from hylex.utils import bar_disabled

logger = logging.getLogger(__name__)

# Padded tokens per forward pass by default. On this project's 2-core EPYC, SciFact documents in bfloat16 ran
# 1.42x faster in batches of 4,096 tokens (~10 documents) than of 16,384 (benchmarks/README.md, "Encoder
# throughput"): smaller activations stay in cache; GPUs want large batches.
CPU_BATCH_TOKENS = 4096
GPU_BATCH_TOKENS = 16384



def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> ``cuda`` where a CUDA GPU is visible, else ``cpu``; ``cpu`` / ``cuda`` / ``cuda:N`` as given,
    checked here (a bad name or a missing GPU is one :class:`HylexError`, not a torch traceback at the first
    tensor)."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None  # a name torch does not know
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise HylexError(f"device {device!r} is not one hylex runs on: use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise HylexError(f"device {device!r}: torch sees no CUDA GPU here (a CPU build of torch, or no GPU): "
                             f"use cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise HylexError(f"device {device!r}: torch sees {n} CUDA GPU(s), numbered 0 to {n - 1}")
    return dev


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively: CUDA, and CPUs with AMX or AVX512-BF16 (this project's AMD EPYC
    has the latter: the encoder runs 1.8x faster than in float32). Elsewhere bfloat16 is emulated and slower."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if amx is not None and amx():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):  # not Linux: only torch's AMX probe above
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """``auto`` -> ``bfloat16`` where the hardware runs it natively (:func:`bf16_is_fast`), else ``float32``.
    The resolved dtype is what an index records (``settings.dtype``)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if bf16_is_fast(device) else "float32"


class Encoded(NamedTuple):
    """Encoder output. ``dense``: float32 (n, H), L2-normalised; ``sparse``: float32 csr (n, V)."""

    dense: np.ndarray
    sparse: sp.csr_matrix


class ChunkedEncoded(NamedTuple):
    """Documents as chunks: ``dense`` float32 (m, H) one row per chunk, ``owner`` int64 (m,) the document of
    each chunk (ascending), ``sparse`` float32 csr (n, V) per document (max over its chunks)."""

    dense: np.ndarray
    owner: np.ndarray
    sparse: sp.csr_matrix


@dataclass
class _Unit:
    """One forward-pass row: a whole (possibly truncated) text or one chunk of a long document."""

    owner: int
    chunk: int
    ids: list
    start: int
    end: int
    words: str       # the text whose words form the own-word filter
    key_text: str    # what the cache key hashes


@dataclass
class EncodeStats:
    """Counters of the last ``encode_*`` call, for throughput reports."""

    texts: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    cache_hits: int = 0
    batches: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0
    batch_shapes: list = field(default_factory=list)
    truncated: int = 0  # texts cut to max_length (not chunked)
    prefix_tokens: int = 0  # prompt-prefix tokens not recomputed (read from the prefix cache)


class PromptRepsModule(torch.nn.Module):
    """Causal LM -> (pooled hidden state (B, H), next-token logits at the last position (B, V)).

    Runs the base model once and the LM head on one position per row only, never on B x L x V. Rows must be
    left-padded so that position -1 is each row's last real token.
    """

    def __init__(self, lm, dtype: str = "float32"):
        super().__init__()
        head = lm.get_output_embeddings()
        # The head runs in float32 on one position per row (cheap), so bf16 bodies keep precise sparse weights.
        # A float32 body shares its (frozen) head tensor: no 113 MB copy on every load.
        w = head.weight.detach()
        keep = dtype == "float32" and w.dtype == torch.float32
        self.head_weight = torch.nn.Parameter(w if keep else w.float().clone(), requires_grad=False)
        bias = getattr(head, "bias", None)
        self.head_bias = None if bias is None else torch.nn.Parameter(bias.detach().float().clone(),
                                                                      requires_grad=False)
        target = torch.bfloat16 if dtype.startswith("bfloat16") else getattr(torch, dtype)
        if dtype == "bfloat16" and hasattr(lm, "split_bfloat16") and \
                any(p.dtype == torch.float32 for p in lm.parameters()):
            # hylex's native models: bfloat16 matmuls that keep the float32 weights (hylex.engine.native.Linear);
            # transformers' models and "bfloat16-rounded" round them
            lm.split_bfloat16()
        # Module.to visits every tensor even when nothing changes (~0.2 s here): only when a cast is needed
        self.lm = lm if all(p.dtype == target for p in lm.parameters()) else lm.to(target)
        # Gemma-style models squash their logits; applying the same keeps the sparse weights faithful.
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)

    def forward(self, input_ids, attention_mask, position_ids, pool_weights, logit_index: int = -1, prefix=None):
        """input_ids/attention_mask/position_ids long (B, L), left-padded; pool_weights float32 (B, L) summing
        to 1 per row. Returns dense float32 (B, H) = sum_l w_l h_l of the last layer, and float32 logits (B, V)
        at position ``logit_index``. ``prefix``: the per-layer keys and values of a prompt prefix every row
        continues (hylex's native models only; :meth:`prefix_kv`), the rows then holding what follows it."""
        extra = {} if prefix is None else {"prefix": prefix}
        out = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids, use_cache=False, **extra)
        hidden = out.last_hidden_state  # (B, L, H)
        dense = torch.einsum("bl,blh->bh", pool_weights.to(hidden.dtype), hidden).float()
        # float32 even under a caller's bfloat16 autocast (training, dev evaluation): one position per row
        with torch.autocast(hidden.device.type, enabled=False):
            logits = torch.nn.functional.linear(hidden[:, logit_index].float(), self.head_weight, self.head_bias)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return dense, logits

    def prefix_kv(self, ids: Sequence[int], device: torch.device) -> list:
        """Per layer, the (keys, values) (1, kv_heads, P, head_dim) of the P tokens ``ids`` at positions 0..P-1:
        what :meth:`forward`'s ``prefix`` takes."""
        x = torch.tensor([list(ids)], dtype=torch.long, device=device)
        kept: list = []
        self.lm.base_model(input_ids=x, attention_mask=torch.ones_like(x),
                           position_ids=torch.arange(x.shape[1], device=device)[None], keep_kv=kept)
        return kept


@dataclass(frozen=True)
class EncoderFactory:
    """A picklable recipe for an :class:`Encoder`: ``EncoderFactory(config_dict, kwargs)()`` builds it. What the
    actors of a distributed indexing job call to load their own model (:mod:`hylex.indexing.distributed`)."""

    config: dict
    kwargs: dict = field(default_factory=dict)

    def __call__(self) -> "Encoder":
        return Encoder(config=EncoderConfig.from_dict(self.config), **self.kwargs)


class Encoder:
    """Encode queries and documents with one decoder-LLM forward pass per text.

    Args:
        model: a packaged model name, ``.gguf`` file, model folder or hub id (see :func:`resolve_model`).
        config: an :class:`EncoderConfig`; keyword arguments override its fields.
        device: ``cpu``, ``cuda`` or ``auto`` (a GPU when one is visible).
        threads: torch intra-op threads on CPU (None keeps torch's default).
        batch_tokens: padded tokens per forward pass; batches are formed over length-sorted texts. Default:
            ``CPU_BATCH_TOKENS`` on a CPU (small batches run faster there: benchmarks/README.md), 16,384 on a GPU;
            never under ``max_length``.
        max_batch: at most this many texts per forward pass.
        progress: progress bars for document encoding that takes more than a second: True, False, or None
            (default: only when stderr is a terminal). Query batches under 64 texts never draw one.
        cache: cache directory for converted models (default ``$HYLEX_CACHE_DIR`` or ``~/.cache/hylex``).
        encoding_cache: an LMDB folder caching encodings (``True``: ``<cache>/encodings``; ``False``: off).
        backend: ``auto`` runs Llama/Qwen2 models on hylex's torch-only forward and tokenizer
            (:mod:`hylex.engine.native`, the same outputs without importing ``transformers``: seconds off every
            one-shot command) and anything else on ``transformers``; ``transformers`` always uses the latter.
        prefix_cache: run the prompt's shared prefix (system message and the words before the text: 22-23
            tokens of the default prompt) once and let every text continue from its keys and values instead of
            recomputing it per text (native backend; the same outputs up to float rounding). Recomputed when
            the weights change (training).
    """

    def __init__(self, model: str | None = None, config: EncoderConfig | None = None, *, device: str = "auto",
                 threads: int | None = None, batch_tokens: int | None = None, max_batch: int = 64,
                 progress: bool | None = None, cache: str | None = None,
                 encoding_cache: str | bool = True, backend: str = "auto", prefix_cache: bool = True,
                 **overrides):
        if backend not in ("auto", "transformers"):
            raise HylexError(f"backend must be 'auto' or 'transformers', not {backend!r}")
        self.backend = backend
        self.prefix_cache = bool(prefix_cache)
        self._prefixes: dict = {}
        cfg = EncoderConfig.from_dict({**(config.to_dict() if config else {}), **overrides})
        if model is not None:
            cfg.model = str(model)
        cfg.validate()
        self.config = cfg
        self.device = resolve_device(device)
        if batch_tokens is None:
            batch_tokens = max(GPU_BATCH_TOKENS if self.device.type == "cuda" else CPU_BATCH_TOKENS, cfg.max_length)
        if batch_tokens < cfg.max_length:
            raise HylexError(f"batch_tokens ({batch_tokens}) must be >= max_length ({cfg.max_length})")
        self.batch_tokens = int(batch_tokens)
        self.max_batch = int(max_batch)
        self.progress = progress
        if threads:
            torch.set_num_threads(int(threads))
        self.resolved: ResolvedModel = resolve_model(cfg.model, cache)
        local = Path(cfg.model).expanduser()
        if cfg.model not in (self.resolved.model_id,) and local.exists():
            # a local folder or file is recorded by its absolute path, so an index built with `--model runs/x`
            # loads the same model for searches from any working directory
            cfg.model = str(local.resolve())
        card_settings = (self.resolved.card or {}).get("settings")
        if card_settings:
            # a tuned model encodes with the settings it was trained with: a setting left at its default (or
            # not given) takes the card's; one given explicitly wins
            default_cfg = EncoderConfig()
            default_cfg.validate()  # derived defaults (chunk_overlap) filled in, as in cfg
            default = default_cfg.to_dict()
            mine = cfg.to_dict()
            merged = {k: (card_settings[k] if k in card_settings and k not in overrides and mine[k] == default[k]
                          and k not in ("model", "dtype") else v) for k, v in mine.items()}
            cfg = EncoderConfig.from_dict(merged)
            cfg.validate()
            self.config = cfg
        self._load()
        self.stats = EncodeStats()
        if encoding_cache is True:
            encoding_cache = str(cache_dir(cache) / "encodings")
        self.encoding_cache = EncodingCache(encoding_cache) if encoding_cache else None

    # -- loading ---------------------------------------------------------------------------------------------
    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            lm = tok = None
            if self.backend == "auto":
                from hylex.engine.native import load_native_lm, load_native_tokenizer

                tok = load_native_tokenizer(self.resolved.path)
                lm = load_native_lm(self.resolved.path) if tok is not None else None
            if lm is None:
                from transformers import AutoTokenizer

                with _quiet_loading():
                    tok = AutoTokenizer.from_pretrained(self.resolved.path)
                    lm = load_causal_lm(self.resolved.path)
            self.tokenizer = tok
            if self.resolved.adapters:
                self._merge_adapters(lm)
        except OSError as e:
            raise ModelError(f"cannot load model {self.config.model!r} from {self.resolved.path}: {e}. Use a "
                             f"packaged model name, a local model folder or a .gguf file") from e
        self.config.dtype = resolve_dtype(self.config.dtype, self.device)
        self.module = PromptRepsModule(lm, self.config.dtype)
        if any(p.device != self.device for p in self.module.parameters()):
            self.module = self.module.to(self.device)
        self.module.eval()
        self.lm = self.module.lm
        self.vocab_size = int(self.module.head_weight.shape[0])
        self.dim = int(self.lm.config.hidden_size)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self._layouts = {kind: prompts.render(self.tokenizer, self.config.prompt, kind)
                         for kind in ("query", "passage")}
        overhead = max(p.overhead for p in self._layouts.values()) + 1
        if overhead + 8 * self._layouts["passage"].copies > self.config.max_length:
            raise HylexError(f"max_length {self.config.max_length} leaves no room for text after the "
                             f"{overhead}-token prompt: raise it")
        sw = self.config.stopwords
        self._stop = frozenset(sw) if isinstance(sw, list) else lexicon.STOPWORD_LISTS[sw]
        eos = self.tokenizer.eos_token_id
        if self.config.pooling == "eos" and eos is None:
            raise HylexError(f"pooling 'eos' needs a tokenizer with an EOS token; {self.config.model} has none")
        self._eos = eos
        self._words = lexicon.WordTokenCache(self.tokenizer, self.config.word_forms)
        self._fallback_mask = self._stop_mask = self._strings = None
        self.backend_used = "native" if type(lm).__module__ == "hylex.engine.native" else "transformers"
        logger.info("loaded %s (%s, %s) in %.1fs: dim %d, vocab %d", self.config.model, self.resolved.path,
                    self.backend_used, time.perf_counter() - t0, self.dim, self.vocab_size)

    def _merge_adapters(self, lm) -> None:
        """Add a tuned model's LoRA deltas into the base weights (no peft needed at inference)."""
        from safetensors.torch import load_file

        from hylex.engine.lora import merge_lora

        for file, info in self.resolved.adapters:
            n = merge_lora(lm, load_file(file), int(info["rank"]), float(info["alpha"]))
            logger.info("merged adapter %s into %d layers", file, n)

    def describe(self) -> dict:
        """What an index manifest records about this encoder."""
        settings = {k: v for k, v in self.config.to_dict().items()
                    if not (k in NEUTRAL_SETTINGS and NEUTRAL_SETTINGS[k] == v)}
        return {"model_id": self.resolved.model_id, "fingerprint": self.resolved.fingerprint,
                "dim": self.dim, "vocab_size": self.vocab_size, "settings": settings}

    # -- public API ------------------------------------------------------------------------------------------
    def encode_queries(self, texts: Sequence[str]) -> Encoded:
        """Encode search queries: dense float32 (n, H) L2-normalised and sparse float32 csr (n, V)."""
        return self.encode(texts, kind="query")

    def encode_documents(self, texts: Sequence[str]) -> Encoded:
        """Encode documents (passages) with the passage prompt; same shapes as :meth:`encode_queries`."""
        return self.encode(texts, kind="passage")

    def row_tokens(self, kind: str = "query") -> tuple[int, int]:
        """``(prompt tokens each row of a forward pass computes, the most tokens one text adds)`` for ``kind``:
        the prompt's tokens minus its cached prefix (reused, not recomputed), and what ``max_length`` leaves a
        text. A service uses it to cost query texts before encoding them."""
        layout = self._layouts[kind]
        prefix = len(layout.pieces[0]) if self.prefix_cache and self.backend_used == "native" and \
            len(layout.pieces[0]) >= 2 else 0
        eos = 1 if self.config.pooling == "eos" else 0
        budget = max(1, (self.config.max_length - eos - layout.overhead) // layout.copies)
        return layout.overhead - prefix + eos, budget * layout.copies

    @staticmethod
    def _check_texts(texts) -> list[str]:
        if isinstance(texts, str):
            raise HylexError("encode_* takes a list of texts, not one string: wrap it as [text]")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise HylexError(f"text {i} is {type(t).__name__}, not str: pass strings only")
        return [clean_text(t) for t in texts]  # lone surrogates -> U+FFFD (the tokenizer refuses them)

    def encode(self, texts: Sequence[str], kind: str = "passage") -> Encoded:
        texts = self._check_texts(texts)
        n = len(texts)
        if n == 0:
            return Encoded(np.zeros((0, self.dim), np.float32), sp.csr_matrix((0, self.vocab_size), dtype=np.float32))
        return self._encode(texts, kind)

    # -- internals -------------------------------------------------------------------------------------------
    def _token_ids(self, texts: list[str], kind: str) -> list[tuple[list[int], int, int]]:
        """Per text, truncated: (prompted token ids, start, end of the pooled text span)."""
        return [(u.ids, u.start, u.end) for u in self._units(texts, kind, chunk=False)]

    def _units(self, texts: list[str], kind: str, chunk: bool | None = None) -> list[_Unit]:
        """Forward-pass rows of ``texts``: one per text, or one per window of a long document when chunking."""
        layout = self._layouts[kind]
        eos = self.config.pooling == "eos"
        max_len = self.config.max_length - (1 if eos else 0)
        budget = max(1, (max_len - layout.overhead) // layout.copies)
        if chunk is None:
            chunk = kind == "passage" and self.config.long_docs == "chunk"
        # Without chunking, characters beyond ~12 per token can never fit: cut before tokenizing so a 1 MB text
        # costs no more than one that fills the window.
        clipped = texts if chunk else [t[: budget * 12] for t in texts]
        stride = max(1, budget - self.config.chunk_overlap)
        units = []
        self._truncated = []
        for owner, (text, x) in enumerate(zip(texts, self.tokenizer(clipped, add_special_tokens=False)["input_ids"])):
            if not chunk and (len(x) > budget or len(clipped[owner]) < len(text)):
                self._truncated.append(owner)
            if len(x) <= budget or not chunk:
                windows = [(0, x[:budget], text, text)]
            else:
                starts = list(range(0, max(len(x) - self.config.chunk_overlap, 1), stride))
                windows = [(c, x[s0:s0 + budget], self.tokenizer.decode(x[s0:s0 + budget]),
                            f"{text}\x00chunk:{c}:{stride}") for c, s0 in enumerate(starts)]
            for c, window, words_text, key_text in windows:
                ids, start, end = layout.assemble(window, max_len)
                if eos:
                    ids.append(self._eos)
                units.append(_Unit(owner, c, ids, start, end, words_text, key_text))
        return units

    def _pool_weights(self, spans: list[tuple[int, int, int]], width: int) -> torch.Tensor:
        """float32 (B, width) pooling weights for left-padded rows; spans are (length, start, end)."""
        w = torch.zeros((len(spans), width), dtype=torch.float32)
        pooling = self.config.pooling
        for r, (length, start, end) in enumerate(spans):
            pad = width - length
            if pooling in ("last", "eos") or end <= start:
                w[r, -1] = 1.0
            elif pooling == "mean":
                w[r, pad + start:pad + end] = 1.0 / (end - start)
            else:  # weighted_mean: weight i for the i-th token of the span (1-based)
                pos = torch.arange(1, end - start + 1, dtype=torch.float32)
                w[r, pad + start:pad + end] = pos / pos.sum()
        return w

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        order = np.argsort(-lengths, kind="stable")  # longest first: the first batch shows the memory peak
        batches, start = [], 0
        while start < len(order):
            longest = int(lengths[order[start]])
            size = max(1, min(self.max_batch, self.batch_tokens // max(longest, 1)))
            batches.append(order[start:start + size])
            start += size
        return batches

    def _own_word_mask(self, texts: list[str], stop: frozenset[str] | None = None) -> torch.Tensor:
        """bool (B, V): the token ids of each text's own words; texts of symbols only get alphanumeric tokens,
        empty texts none."""
        ids = self._words.ids_for(texts, self._stop if stop is None else stop)
        mask = torch.zeros((len(texts), self.vocab_size), dtype=torch.bool)
        for row, t in enumerate(ids):
            t = t[t < self.vocab_size]
            if len(t):
                mask[row, torch.from_numpy(t)] = True
            elif texts[row].strip():  # a text with no words (symbols only): fall back to alphanumeric tokens
                mask[row] = self._alnum_mask()
        return mask

    def _sparse(self, logits: torch.Tensor, texts: list[str]) -> tuple[list, list]:
        """log1p(relu(logits)) float32 (B, V) -> per row sorted (term ids int32, weights float32), pruned."""
        weights = torch.log1p(torch.relu(logits)).cpu()
        cfg = self.config
        k = min(cfg.sparse_topk, self.vocab_size) if cfg.sparse_topk else self.vocab_size
        alnum = self._alnum_mask() if (not cfg.own_words or cfg.expansion) else None
        if cfg.own_words:
            own = self._own_word_mask(texts)
            vals, idx = torch.topk(weights * own, k, dim=1, sorted=False)
            if cfg.expansion:
                # expansion terms: the strongest alphanumeric entries absent from the text (stopwords included)
                # and not stopwords themselves
                allowed = alnum & ~self._stopword_tokens() & ~self._own_word_mask(texts, frozenset())
                ev, ei = torch.topk(weights * allowed, min(cfg.expansion, self.vocab_size), dim=1, sorted=False)
                vals, idx = torch.cat([vals, ev], 1), torch.cat([idx, ei], 1)
        else:
            vals, idx = torch.topk(weights * alnum, k, dim=1, sorted=False)
        vals, idx = vals.numpy(), idx.numpy()
        rows_idx, rows_val = [], []
        for r in range(len(texts)):
            keep = vals[r] > 0
            if not texts[r].strip():  # an empty document has no terms (not even expansion ones: they would come
                keep[:] = False       # from the prompt alone)
            order = np.argsort(idx[r][keep])
            rows_idx.append(idx[r][keep][order].astype(np.int32))
            rows_val.append(vals[r][keep][order].astype(np.float32))
        return rows_idx, rows_val

    def _token_strings(self) -> list[str]:
        """Each vocabulary id as stripped text ("" for ids the tokenizer does not know)."""
        if self._strings is None:
            toks = self.tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
            self._strings = [self.tokenizer.convert_tokens_to_string([t]).strip() if t else "" for t in toks]
        return self._strings

    def _alnum_mask(self) -> torch.Tensor:
        """bool (V,): tokens that read as a word or number (candidates for expansion and fallback)."""
        if self._fallback_mask is None:
            keep = np.array([bool(s) and s.isalnum() for s in self._token_strings()], dtype=bool)
            self._fallback_mask = torch.from_numpy(keep)
        return self._fallback_mask

    def _stopword_tokens(self) -> torch.Tensor:
        """bool (V,): tokens that are stopwords by themselves."""
        if self._stop_mask is None:
            stop = self._stop
            self._stop_mask = torch.from_numpy(np.array([s.lower() in stop for s in self._token_strings()]))
        return self._stop_mask

    def _batch_tensors(self, prompted: list[tuple[list[int], int, int]], offset: int = 0):
        """Left-padded model inputs for prompted rows ``(ids, start, end)``: input_ids, attention_mask and
        position_ids long (B, L), pooling weights float32 (B, L). Positions count real tokens only (from
        ``offset``: the length of a cached prefix the rows continue), so a text's encoding does not depend on
        its batch's padding."""
        width = max(len(x[0]) for x in prompted)
        input_ids = torch.full((len(prompted), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(prompted), width), dtype=torch.long)
        for r, (x, _, _) in enumerate(prompted):
            input_ids[r, width - len(x):] = torch.tensor(x, dtype=torch.long)
            attn[r, width - len(x):] = 1
        pos = (attn.cumsum(1) - 1).clamp(min=0) + offset
        pool = self._pool_weights([(len(x), start, end) for x, start, end in prompted], width)
        return input_ids, attn, pos, pool

    def features(self, texts: Sequence[str], kind: str = "passage", max_text_tokens: int | None = None):
        """The representations as differentiable tensors, for training: the same prompt, truncation, pooling and
        own-word mask as :meth:`encode` (one row per text, never chunked), without the cache, normalisation
        of sparse weights to top-k, or conversion to NumPy.

        Args:
            texts: B texts; kind: ``query`` or ``passage``.
            max_text_tokens: cut each text to this many tokens (the prompt around it comes on top; at most what
                ``max_length`` allows), for training on shorter passages; default: as :meth:`encode`.

        Returns:
            ``(dense, sparse)``: dense float32 (B, H) L2-normalised; sparse float32 (B, V) =
            ``log1p(relu(logits))`` kept on the text's own words (or every token when ``own_words`` is off),
            before top-k pruning (``encode`` keeps the ``sparse_topk`` largest of these).
        """
        texts = self._check_texts(texts)
        if not texts:
            raise HylexError("features() needs at least one text")
        saved = self.config.max_length
        if max_text_tokens is not None:
            if isinstance(max_text_tokens, bool) or not isinstance(max_text_tokens, int) or max_text_tokens < 1:
                raise HylexError(f"max_text_tokens must be a positive integer, got {max_text_tokens!r}")
            layout = self._layouts[kind]
            need = layout.overhead + layout.copies * max_text_tokens + (1 if self.config.pooling == "eos" else 0)
            self.config.max_length = min(saved, need)
        try:
            units = self._units(texts, kind, chunk=False)
        finally:
            self.config.max_length = saved
        input_ids, attn, pos, pool = self._batch_tensors([(u.ids, u.start, u.end) for u in units])
        self.feature_tokens = int(attn.sum())  # real (unpadded) tokens of this call, for tokens/s in training
        dev = self.device
        dense, logits = self.module(input_ids.to(dev), attn.to(dev), pos.to(dev), pool.to(dev),
                                    -2 if self.config.pooling == "eos" else -1)
        weights = torch.log1p(torch.relu(logits))
        cfg = self.config
        if cfg.own_words:
            words = [u.words for u in units]
            mask = self._own_word_mask(words).to(dev)
            if cfg.expansion:  # the same expansion terms as encode(): the strongest allowed ones not in the text
                allowed = (self._alnum_mask() & ~self._stopword_tokens()).to(dev) & \
                    ~self._own_word_mask(words, frozenset()).to(dev)
                top = torch.topk((weights * allowed).detach(), min(cfg.expansion, self.vocab_size), dim=1).indices
                mask = mask | torch.zeros_like(mask).scatter_(1, top, True) & allowed
        else:
            mask = self._alnum_mask().to(dev)
        return torch.nn.functional.normalize(dense, dim=-1), weights * mask

    def _prefix(self, kind: str, units: list[_Unit]) -> tuple[int, list | None]:
        """``(P, per-layer keys/values)`` of ``kind``'s prompt prefix (the tokens before the text, the same in
        every row), or ``(0, None)`` where it is not used. Kept until the weights change: the key is every
        parameter's storage and in-place version counter (an optimizer step bumps it). Call in inference mode."""
        ids = self._layouts[kind].pieces[0]
        if not self.prefix_cache or self.backend_used != "native" or len(ids) < 2 or \
                any(len(u.ids) <= len(ids) for u in units):
            return 0, None
        version = tuple((p.data_ptr(), p._version) for p in self.module.parameters())
        hit = self._prefixes.get(kind)
        if hit is None or hit[0] != version:
            hit = (version, self.module.prefix_kv(ids, self.device))
            self._prefixes[kind] = hit
        return len(ids), hit[1]

    def _forward_units(self, units: list[_Unit], kind: str, stats: EncodeStats):
        """Encode without the cache: dense float32 (n, H) and per-unit sorted (term ids, weights)."""
        from tqdm.auto import tqdm

        prompted = [(u.ids, u.start, u.end) for u in units]
        texts = [u.words for u in units]
        lengths = np.fromiter((len(x[0]) for x in prompted), dtype=np.int64, count=len(prompted))
        batches = self._batches(lengths)
        n = len(texts)
        dense_out = np.zeros((n, self.dim), dtype=np.float32)
        rows_idx, rows_val = [None] * n, [None] * n
        stats.tokens += int(lengths.sum())
        logit_index = -2 if self.config.pooling == "eos" else -1
        # one bar for a long step only: none for a few queries, and it appears after a second of work
        bar = tqdm(total=n, desc="encode queries" if kind == "query" else "encode documents", unit="text",
                   disable=True if kind == "query" and n < 64 else bar_disabled(self.progress), leave=False,
                   delay=1.0)
        with torch.inference_mode():
            skip, prefix = self._prefix(kind, units)
            if skip:  # rows continue the cached prefix: only what follows it runs through the model
                prompted = [(x[skip:], start - skip, end - skip) for x, start, end in prompted]
                stats.prefix_tokens += skip * n
            for batch in batches:
                input_ids, attn, pos, pool = self._batch_tensors([prompted[i] for i in batch], skip)
                width = input_ids.shape[1]
                tf = time.perf_counter()
                dense, logits = self.module(input_ids.to(self.device), attn.to(self.device), pos.to(self.device),
                                            pool.to(self.device), logit_index, prefix)
                stats.forward_seconds += time.perf_counter() - tf
                dense_out[batch] = torch.nn.functional.normalize(dense, dim=-1).cpu().numpy()
                b_idx, b_val = self._sparse(logits, [texts[i] for i in batch])
                for r, i in enumerate(batch):
                    rows_idx[i], rows_val[i] = b_idx[r], b_val[r]
                stats.batches += 1
                stats.padded_tokens += len(batch) * width
                stats.batch_shapes.append((len(batch), width))
                bar.update(len(batch))
        bar.close()
        return dense_out, rows_idx, rows_val

    def _encode_units(self, texts: list[str], kind: str, stats: EncodeStats):
        """Units of ``texts`` with their encodings, through the cache; identical units are encoded once."""
        units = self._units(texts, kind)
        m = len(units)
        dense = np.zeros((m, self.dim), dtype=np.float32)
        rows_idx: list = [None] * m
        rows_val: list = [None] * m
        todo = list(range(m))
        if self.encoding_cache is not None:
            ns = namespace(self.describe(), kind)
            keys = [EncodingCache.key(ns, u.key_text) for u in units]
            todo = []
            for i, hit in enumerate(self.encoding_cache.get_many(keys)):
                if hit is None:
                    todo.append(i)
                else:
                    dense[i], rows_idx[i], rows_val[i] = hit
            stats.cache_hits = m - len(todo)
        uniq: dict[str, int] = {}
        for i in todo:
            uniq.setdefault(units[i].key_text, i)
        if uniq:
            first = list(uniq.values())
            d, ti, tv = self._forward_units([units[i] for i in first], kind, stats)
            pos = {units[i].key_text: j for j, i in enumerate(first)}
            for i in todo:
                j = pos[units[i].key_text]
                dense[i], rows_idx[i], rows_val[i] = d[j], ti[j], tv[j]
            if self.encoding_cache is not None:
                self.encoding_cache.put_many([keys[i] for i in first], d, ti, tv)
        return units, dense, rows_idx, rows_val

    def _csr(self, rows_idx: list, rows_val: list) -> sp.csr_matrix:
        indptr = np.zeros(len(rows_idx) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(x) for x in rows_idx])
        data = np.concatenate(rows_val).astype(np.float32, copy=False) if rows_val else np.zeros(0, np.float32)
        idx = np.concatenate(rows_idx).astype(np.int32, copy=False) if rows_idx else np.zeros(0, np.int32)
        return sp.csr_matrix((data, idx, indptr), shape=(len(rows_idx), self.vocab_size), dtype=np.float32)

    def _aggregate(self, n: int, units: list[_Unit], dense: np.ndarray, rows_idx: list, rows_val: list):
        """Per-unit encodings -> (owner int64 (m,), per-document sparse csr (n, V) = max over its units)."""
        owner = np.fromiter((u.owner for u in units), dtype=np.int64, count=len(units))
        if len(units) == n:  # one unit per text: nothing to aggregate
            return owner, self._csr(rows_idx, rows_val)
        counts = np.array([len(x) for x in rows_idx], dtype=np.int64)
        own = np.repeat(owner, counts)
        terms = np.concatenate(rows_idx).astype(np.int64)
        vals = np.concatenate(rows_val)
        key = own * self.vocab_size + terms
        order = np.argsort(key, kind="stable")
        key, vals = key[order], vals[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        mx = np.maximum.reduceat(vals, starts) if len(vals) else vals
        ukey = key[starts]
        doc, term = ukey // self.vocab_size, (ukey % self.vocab_size).astype(np.int32)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.add.at(indptr, doc + 1, 1)
        sparse = sp.csr_matrix((mx.astype(np.float32), term, np.cumsum(indptr)), shape=(n, self.vocab_size))
        return owner, sparse

    def _encode(self, texts: list[str], kind: str) -> Encoded:
        t0 = time.perf_counter()
        n = len(texts)
        stats = EncodeStats(texts=n)
        units, dense_u, rows_idx, rows_val = self._encode_units(texts, kind, stats)
        stats.truncated = len(self._truncated)
        if self._truncated and kind == "query":  # a query is what the user typed: say what was not read
            first = self._truncated[0]
            logger.warning("%d query text(s) exceed max_length %d tokens (with the prompt) and were truncated "
                           "(first: query %d, %d characters): only their beginning is searched",
                           len(self._truncated), self.config.max_length, first, len(texts[first]))
        elif self._truncated:
            logger.info("%d document(s) exceed max_length %d tokens and were truncated (long_docs='chunk' "
                        "encodes them whole)", len(self._truncated), self.config.max_length)
        owner, sparse = self._aggregate(n, units, dense_u, rows_idx, rows_val)
        if len(units) == n:
            dense = dense_u
        elif self.config.dense_agg == "first":
            firsts = np.flatnonzero(np.fromiter((u.chunk == 0 for u in units), dtype=bool, count=len(units)))
            dense = dense_u[firsts]
        else:  # mean (and maxsim's single-vector summary): normalised mean of the chunk vectors
            dense = np.zeros((n, self.dim), dtype=np.float32)
            np.add.at(dense, owner, dense_u)
            dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)
        stats.seconds = time.perf_counter() - t0
        self.stats = stats
        return Encoded(dense, sparse)

    def encode_documents_chunked(self, texts: Sequence[str]) -> ChunkedEncoded:
        """Documents as chunk vectors for ``dense_agg="maxsim"``: every chunk's dense vector with its owner, and
        the per-document sparse weights (max over chunks). Short documents have one chunk."""
        texts = self._check_texts(texts)
        t0 = time.perf_counter()
        stats = EncodeStats(texts=len(texts))
        units, dense_u, rows_idx, rows_val = self._encode_units(texts, "passage", stats)
        owner, sparse = self._aggregate(len(texts), units, dense_u, rows_idx, rows_val)
        stats.seconds = time.perf_counter() - t0
        self.stats = stats
        return ChunkedEncoded(dense_u, owner, sparse)

    def own_terms(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per text, the vocabulary ids of its own words (any form the own-word filter accepts, stopwords
        included): a sparse term outside them is an expansion term."""
        return [np.asarray(t[t < self.vocab_size], dtype=np.int64)
                for t in self._words.ids_for(list(texts), frozenset())]

    def decode_terms(self, term_ids: Sequence[int]) -> list[str]:
        """Vocabulary ids -> readable token strings (for explanations and debugging)."""
        return [self.tokenizer.decode([int(t)]) for t in term_ids]
