"""A torch-only path for the models hylex ships: a Llama/Qwen2 decoder and a tokenizer built straight on the
``tokenizers`` library, so that one-shot commands (``hylex search`` with a dense arm) do not pay for importing
``transformers`` (~3-5 s of imports on a small CPU: its lazy module tables, ``torch._dynamo``,
``torch.distributed.tensor`` and ``sympy``, none of which an encoder forward needs).

The model computes the same function as ``transformers``' ``LlamaModel`` / ``Qwen2Model`` for the inputs
:class:`hylex.engine.encoder.PromptRepsModule` gives it (explicit ``position_ids``, left padding), with the same
parameter names (``model.layers.0.self_attn.q_proj`` ...), so LoRA targets and state dicts are interchangeable.
Anything outside what is implemented here (other architectures, rope scaling, sliding windows, quantised or
non-float32 weights) returns ``None`` from the loaders and goes through ``transformers``. ``tests/test_native.py``
checks hidden states, logits, token ids, decoded strings and rendered chat prompts against ``transformers``.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# scaled_dot_product_attention(enable_gqa=) exists from torch 2.5 (~10% faster attention here than repeating k/v)
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


# -- model ---------------------------------------------------------------------------------------------------
def _supported(cfg: dict) -> str | None:
    """Why ``cfg`` (a config.json) cannot take the native path, or None when it can."""
    kind = cfg.get("model_type")
    if kind not in ARCHITECTURES:
        return f"model_type {kind!r}"
    if cfg.get("quantization_config"):
        return "quantised weights"
    if cfg.get("hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.get('hidden_act')!r}"
    rope = cfg.get("rope_parameters") or {}
    if (rope.get("rope_type") or "default") != "default" or cfg.get("rope_scaling"):
        return "rope scaling"
    if kind == "llama" and (cfg.get("mlp_bias") or cfg.get("pretraining_tp", 1) != 1):
        return "mlp_bias / pretraining_tp"
    if kind == "qwen2" and cfg.get("use_sliding_window"):
        return "sliding-window attention"
    return None


class Linear(nn.Linear):
    """``nn.Linear`` whose construction skips the random initialisation: the weights always come from a file, and
    initialising on the meta device would import ``torch._dynamo`` (~2 s).

    ``split_weight`` (bfloat16 (out, 2 * in), set by :meth:`NativeCausalLM.split_bfloat16`): the float32 weight as
    two bfloat16 terms side by side, its rounding ``hi`` and what rounding lost ``lo``. A bfloat16 input then runs
    as one matmul ``[x, x] @ [hi, lo]^T``, accumulated in float32 inside the kernel, so the weights' rounding (the
    larger part of a bfloat16 body's error here) is carried at ~1.9x the matmul's time (still ~2x under float32's).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("split_weight", None, persistent=False)

    def reset_parameters(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_weight is None:
            return F.linear(x, self.weight, self.bias)
        return F.linear(torch.cat((x, x), dim=-1), self.split_weight, self.bias)

    def split_(self) -> None:
        """Cast to bfloat16 keeping the rounding error as ``split_weight``; ``weight`` becomes a view of its
        first half (no second copy). For inference: training that changes ``weight`` afterwards leaves ``lo``
        stale."""
        w = self.weight.detach().float()
        hi = w.to(torch.bfloat16)
        both = torch.cat((hi, (w - hi.float()).to(torch.bfloat16)), dim=1)
        self.split_weight = both
        self.weight = nn.Parameter(both[:, :w.shape[1]], requires_grad=self.weight.requires_grad)
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.detach().to(torch.bfloat16), requires_grad=self.bias.requires_grad)

    def unsplit_(self) -> None:
        """Back to the rounded weight alone (the plain bfloat16 matmul; what the body costs without the split)."""
        self.split_weight = None


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, c: SimpleNamespace, qkv_bias: bool):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        h = c.hidden_size
        self.q_proj = Linear(h, self.heads * self.head_dim, bias=qkv_bias)
        self.k_proj = Linear(h, self.kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = Linear(h, self.kv_heads * self.head_dim, bias=qkv_bias)
        # Llama's attention_bias puts biases on all four projections; Qwen2 has them on q/k/v only
        o_bias = c.model_type == "llama" and bool(getattr(c, "attention_bias", False))
        self.o_proj = Linear(self.heads * self.head_dim, h, bias=o_bias)

    def forward(self, x, cos, sin, mask, past=None, keep=None):
        """``past``: keys and values (1, kv_heads, P, head_dim) of a prefix every row shares, placed before
        this call's tokens; ``keep``: a list this call's own (keys, values) are appended to."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if keep is not None:
            keep.append((k, v))
        if past is not None:
            k = torch.cat((past[0].expand(b, -1, -1, -1), k), dim=2)
            v = torch.cat((past[1].expand(b, -1, -1, -1), v), dim=2)
        gqa = {}
        if self.kv_heads != self.heads:
            if _SDPA_GQA:  # grouped-query attention inside the kernel: no copies of k and v per query head
                gqa = {"enable_gqa": True}
            else:
                rep = self.heads // self.kv_heads
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5, **gqa)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class MLP(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        qkv_bias = c.model_type == "qwen2" or bool(getattr(c, "attention_bias", False))
        self.self_attn = Attention(c, qkv_bias)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, h, cos, sin, mask, past=None, keep=None):
        # the residual stream h stays in its own dtype (float32 under a bfloat16 body: see DecoderModel.forward);
        # each block runs in the weights' dtype
        dt = self.input_layernorm.weight.dtype
        h = h + self.self_attn(self.input_layernorm(h).to(dt), cos, sin, mask, past, keep).to(h.dtype)
        return h + self.mlp(self.post_attention_layernorm(h).to(dt)).to(h.dtype)


class DecoderModel(nn.Module):
    """The transformer body. ``forward`` returns an object with ``last_hidden_state`` (B, L, H)."""

    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.config = c
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        theta = float((getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", 1e4)))
        # on the CPU explicitly: the loader builds modules on the meta device, where arithmetic would import
        # torch._dynamo (~1.5 s)
        steps = torch.arange(0, c.head_dim, 2, dtype=torch.int64, device="cpu").float() / c.head_dim
        inv = 1.0 / torch.pow(torch.tensor(theta, device="cpu"), steps)
        # a plain float32 attribute, not a buffer: Module.to(bfloat16) rounded the frequencies (up to 0.3% each:
        # the default model's angles off by up to 0.69 rad at position 500). Split bf16 bodies' minimum dense cosine
        # to float32 on 128 SciFact documents: 0.99993 -> 0.99995 (benchmarks/README.md)
        self.inv_freq = inv
        self.gradient_checkpointing = False
        self.float32_residual = True  # see forward; False runs a half-precision body entirely in its dtype

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, prefix=None,
                keep_kv=None, **_):
        """input_ids long (B, n). ``prefix``: per layer, the (keys, values) of P tokens every row continues (from
        an earlier call's ``keep_kv``); then ``position_ids`` must start at P. ``keep_kv``: a list that receives
        this call's per-layer (keys, values), (B, kv_heads, n, head_dim) each."""
        b, n = input_ids.shape
        h = self.embed_tokens(input_ids)
        body = h.dtype
        if body in (torch.bfloat16, torch.float16) and self.float32_residual:
            # A half-precision body keeps its residual stream in float32, so its two additions per layer do not
            # each round to 8 bits (SciFact documents' dense cosine to float32: benchmarks/README.md); the
            # matmuls, where the time goes, stay in half precision.
            h = h.float()
        if position_ids is None:
            position_ids = torch.arange(n, device=input_ids.device).expand(b, n)
        # rotary angles in float32, as transformers computes them, then cast to the body's dtype
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :].to(input_ids.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(body)[:, None], emb.sin().to(body)[:, None]
        causal = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
        mask = causal[None]
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, :]
        # a padding row attends to itself only, so it stays finite (its output is never read: pooling weights
        # and the logit position are on real tokens)
        mask = (mask | torch.eye(n, dtype=torch.bool, device=h.device)[None])[:, None]
        if prefix is not None:  # every token sees the whole shared prefix
            seen = torch.ones((mask.shape[0], 1, n, prefix[0][0].shape[2]), dtype=torch.bool, device=h.device)
            mask = torch.cat((seen, mask), dim=-1)
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(layer, h, cos, sin, mask, use_reentrant=False)
            else:
                h = layer(h, cos, sin, mask, None if prefix is None else prefix[i], keep_kv)
        return SimpleNamespace(last_hidden_state=self.norm(h))


class NativeCausalLM(nn.Module):
    """``model`` (the body) plus ``lm_head``; the same interface :class:`PromptRepsModule` uses from
    ``transformers``' causal LMs (``base_model``, ``get_output_embeddings``, ``config``)."""

    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.config = c
        self.model = DecoderModel(c)
        self.lm_head = Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def base_model(self) -> DecoderModel:
        return self.model

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def gradient_checkpointing_enable(self, **_) -> None:
        self.model.gradient_checkpointing = True

    def split_bfloat16(self) -> None:
        """Cast the model to bfloat16 with every body linear layer's weight kept as two bfloat16 terms
        (:class:`Linear`): the matmuls run in bfloat16 while the result stays within float32's reach (dense
        cosine to float32 >= 0.9999 on SciFact documents where rounded weights gave 0.9996: benchmarks/README.md).
        Embeddings, norms and the LM head are cast as usual (the encoder runs its head in float32 anyway)."""
        with torch.no_grad():
            for m in self.model.layers.modules():
                if isinstance(m, Linear) and m.weight.dtype == torch.float32:
                    m.split_()
        self.to(torch.bfloat16)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
        hidden = self.model(input_ids, attention_mask, position_ids).last_hidden_state
        return SimpleNamespace(logits=self.lm_head(hidden), last_hidden_state=hidden)


def _namespace(cfg: dict) -> SimpleNamespace:
    c = dict(cfg)
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    c.setdefault("tie_word_embeddings", False)  # transformers' default for both configs
    c.setdefault("rms_norm_eps", 1e-6)
    return SimpleNamespace(**c)


def load_native_lm(folder: str | os.PathLike) -> NativeCausalLM | None:
    """The causal LM in ``folder`` (config.json + one float32 model.safetensors) on the native path, or None when
    it needs ``transformers`` (see :func:`_supported`) or the file does not fill every parameter exactly."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / "model.safetensors"
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    why = _supported(cfg) if weights.is_file() else "no single model.safetensors"
    if why:
        logger.debug("%s: %s needs transformers", folder, why)
        return None
    with torch.device("meta"):
        lm = NativeCausalLM(_namespace(cfg))
    state = load_file(str(weights))
    if any(t.dtype != torch.float32 for t in state.values()):
        return None
    expected = {k for k in lm.state_dict() if not (lm.config.tie_word_embeddings and k == "lm_head.weight")}
    if set(state) != expected or any(tuple(state[k].shape) != tuple(v.shape) for k, v in lm.state_dict().items()
                                     if k in state):
        logger.debug("%s: tensors do not match the native layout: using transformers", folder)
        return None
    lm.load_state_dict(state, strict=False, assign=True)
    if lm.config.tie_word_embeddings:
        lm.lm_head.weight = lm.model.embed_tokens.weight
    return lm.eval()


# -- tokenizer -----------------------------------------------------------------------------------------------
class NativeTokenizer:
    """The subset of a ``transformers`` fast tokenizer hylex uses, on the ``tokenizers`` library directly.

    Calls: ``tok(texts, add_special_tokens=False)["input_ids"]``, ``decode``, ``convert_ids_to_tokens``,
    ``convert_tokens_to_string``, ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``,
    and the special-token ids.
    """

    def __init__(self, backend, config: dict, chat_template: str | None):
        self._tok = backend
        self.chat_template = chat_template
        self.init_kwargs = config

        def token(name):
            t = config.get(name)
            if isinstance(t, dict):  # older configs store AddedToken dicts
                t = t.get("content")
            return t

        self.special_tokens_map = {n: token(n) for n in ("bos_token", "eos_token", "unk_token", "pad_token")
                                   if token(n) is not None}
        for n in ("bos", "eos", "unk", "pad"):
            t = self.special_tokens_map.get(f"{n}_token")
            setattr(self, f"{n}_token", t)
            setattr(self, f"{n}_token_id", None if t is None else backend.token_to_id(t))
        self.add_bos_token = bool(config.get("add_bos_token", False))

    def __call__(self, text, add_special_tokens: bool = False):
        if isinstance(text, str):
            return {"input_ids": self._tok.encode(text, add_special_tokens=add_special_tokens).ids}
        return {"input_ids": [e.ids for e in self._tok.encode_batch(list(text),
                                                                    add_special_tokens=add_special_tokens)]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids):
        return [self._tok.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_string(self, tokens) -> str:
        return self._tok.decoder.decode(list(tokens))

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        """Render ``messages`` as ``transformers`` does: a sandboxed jinja2 environment with ``trim_blocks``,
        ``lstrip_blocks``, loop controls, ``raise_exception``, a non-escaping ``tojson`` and ``strftime_now``;
        the special tokens as variables."""
        if tokenize:
            raise ValueError("NativeTokenizer.apply_chat_template renders text only (tokenize=False)")
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        return _compile(self.chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                   **self.special_tokens_map)


_TEMPLATES: dict[str, object] = {}


def _compile(source: str):
    if source not in _TEMPLATES:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        _TEMPLATES[source] = env.from_string(source)
    return _TEMPLATES[source]


def load_native_tokenizer(folder: str | os.PathLike) -> NativeTokenizer | None:
    """The tokenizer in ``folder`` (tokenizer.json + tokenizer_config.json), or None when ``transformers`` is
    needed (no tokenizer.json, a slow-only tokenizer, or options this class does not reproduce)."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        return None
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except ValueError:
        return None
    # options transformers applies on top of the tokenizers backend, which this class does not
    if config.get("clean_up_tokenization_spaces") or config.get("add_prefix_space") is not None or \
            config.get("add_eos_token") or config.get("legacy") is False:
        return None
    template = config.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    if not (template is None or isinstance(template, str)):
        return None  # named templates (a list): transformers picks among them
    from tokenizers import Tokenizer

    return NativeTokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")), config, template)


def native_available(folder: str | os.PathLike) -> bool:
    """Whether both the model and the tokenizer in ``folder`` can take the native path (reads configs only)."""
    folder = Path(folder)
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return _supported(cfg) is None and (folder / "model.safetensors").is_file() and \
        (folder / "tokenizer.json").is_file()


__all__ = ["NativeCausalLM", "NativeTokenizer", "load_native_lm", "load_native_tokenizer", "native_available"]
