"""hylex.engine.native (the torch-only forward and tokenizer) against transformers: same hidden states, logits,
token ids, strings, rendered prompts and encoder outputs; unsupported models fall back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hylex.engine import prompts
from hylex.engine.encoder import Encoder
from hylex.engine.models import load_causal_lm, resolve_model
from hylex.engine.native import NativeCausalLM, load_native_lm, load_native_tokenizer, native_available

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["Hello world, this is a test.", "  spaces  and\ttabs\n", "Ünïcödé ✓ 日本語 \ufffd emoji 🙂", "x", "",
         "def parse(s: str) -> dict:\n    return json.loads(s)", "<|im_start|> special-looking text"]


@pytest.fixture(scope="module")
def folder() -> str:
    return resolve_model("smollm2-135m").path


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 4000, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as the encoder feeds it
    mask[2, :1] = 0
    ids[mask == 0] = 2
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, pos


def _compare(native, hf, atol: float):
    ids, mask, pos = _batch()
    with torch.no_grad():
        a = native.base_model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        b = hf.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    real = mask.bool()
    assert torch.isfinite(a).all()  # padding rows stay finite (they attend to themselves)
    torch.testing.assert_close(a[real], b[real], atol=atol, rtol=1e-5)
    la = native.get_output_embeddings()(a[:, -1])
    lb = hf.get_output_embeddings()(b[:, -1])
    torch.testing.assert_close(la, lb, atol=atol * 10, rtol=1e-5)


def test_packaged_model_matches_transformers(folder):
    native = load_native_lm(folder)
    assert isinstance(native, NativeCausalLM)
    _compare(native, load_causal_lm(folder), atol=1e-5)
    # the same parameter names as transformers (LoRA targets and state dicts carry over)
    assert set(native.state_dict()) <= set(load_causal_lm(folder).state_dict()) | {"lm_head.weight"}


@pytest.mark.parametrize("kind", ["llama-bias-untied", "qwen2"])
def test_tiny_random_models_match_transformers(tmp_path, kind):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    common = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if kind == "qwen2":
        cfg = Qwen2Config(**common, tie_word_embeddings=True, rope_theta=10000.0)
    else:
        cfg = LlamaConfig(**common, attention_bias=True, tie_word_embeddings=False, rope_theta=500000.0)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # biases are zero-initialised: make them count
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    hf.save_pretrained(tmp_path)
    native = load_native_lm(tmp_path)
    assert native is not None
    _compare(native, hf, atol=1e-5)


def test_unsupported_models_fall_back(tmp_path, folder):
    cfg = json.loads((Path(folder) / "config.json").read_text())
    for change in ({"model_type": "gpt2"}, {"rope_parameters": {"rope_type": "linear", "factor": 2.0}},
                   {"hidden_act": "gelu"}, {"quantization_config": {"bits": 4}}):
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        (d / "model.safetensors").symlink_to(Path(folder) / "model.safetensors")
        assert load_native_lm(d) is None and not native_available(d)
    # a file that does not fill the layout (a missing tensor) falls back too
    from safetensors.torch import load_file, save_file

    d = tmp_path / "partial"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(Path(folder) / "model.safetensors"))
    state.pop("model.norm.weight")
    save_file(state, str(d / "model.safetensors"))
    assert load_native_lm(d) is None


def test_tokenizer_matches_transformers(folder):
    from transformers import AutoTokenizer

    ours, theirs = load_native_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert ours(TEXTS)["input_ids"] == theirs(TEXTS, add_special_tokens=False)["input_ids"]
    assert ours(TEXTS[0])["input_ids"] == theirs(TEXTS[0], add_special_tokens=False)["input_ids"]
    for ids in ours(TEXTS)["input_ids"]:
        assert ours.decode(ids) == theirs.decode(ids)
    every = list(range(len(theirs)))
    toks = ours.convert_ids_to_tokens(every)
    assert toks == theirs.convert_ids_to_tokens(every)
    assert [ours.convert_tokens_to_string([t]) for t in toks[::7]] == \
        [theirs.convert_tokens_to_string([t]) for t in toks[::7]]
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "add_bos_token"):
        assert getattr(ours, name) == getattr(theirs, name), name
    for prompt in prompts.PROMPTS:
        for kind in ("query", "passage"):
            assert prompts.render(ours, prompt, kind) == prompts.render(theirs, prompt, kind), (prompt, kind)


def test_encoder_outputs_equal_on_both_backends(folder):
    a = Encoder(progress=False, encoding_cache=False, dtype="float32")
    b = Encoder(progress=False, encoding_cache=False, dtype="float32", backend="transformers")
    assert (a.backend_used, b.backend_used) == ("native", "transformers")
    assert a.describe() == b.describe()  # same fingerprint: indexes built with either are interchangeable
    texts = [t for t in TEXTS if t.strip()]
    for fa, fb in [(a.encode_queries, b.encode_queries), (a.encode_documents, b.encode_documents)]:
        ea, eb = fa(texts), fb(texts)
        cos = np.sum(ea.dense * eb.dense, axis=1)
        assert cos.min() > 0.99999
        np.testing.assert_array_equal(ea.sparse.indices, eb.sparse.indices)
        np.testing.assert_allclose(ea.sparse.data, eb.sparse.data, rtol=1e-4, atol=1e-5)


def test_backend_is_validated():
    from hylex.errors import HylexError

    with pytest.raises(HylexError, match="backend must be"):
        Encoder(progress=False, encoding_cache=False, backend="onnx")


def test_encoding_does_not_import_transformers(tmp_path):
    code = ("import sys; from hylex.engine.encoder import Encoder; "
            "e = Encoder(progress=False, encoding_cache=False); e.encode_queries(['a query']); "
            "print(e.backend_used, 'transformers' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["native", "False"], out.stderr
