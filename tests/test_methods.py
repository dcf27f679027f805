"""Each prompt, pooling and sparse option checked for its defining property on the real default model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hylex.engine import Encoder
from hylex.engine.lexicon import words

TEXT = "A volcano erupts when molten magma rises through the crust and escapes as lava and ash."


def make(**kw) -> Encoder:
    return Encoder(progress=False, encoding_cache=False, dtype="float32", **kw)


_HF: dict = {}


def raw_lm(enc: Encoder):
    """The model through transformers (the reference; the encoder itself runs hylex's native forward)."""
    from hylex.engine.models import load_causal_lm

    key = enc.resolved.fingerprint
    if key not in _HF:
        lm = load_causal_lm(enc.resolved.path)
        enc._merge_adapters(lm)  # the default is a tuned model: its LoRA deltas go into transformers' weights too
        _HF[key] = lm
    return _HF[key]


def last_hidden(enc: Encoder, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        out = raw_lm(enc)(input_ids=torch.tensor([ids]), output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1][0].float(), out.logits[0, -1].float()


def unit(v: torch.Tensor) -> np.ndarray:
    return (v / v.norm()).numpy()


@pytest.fixture(scope="module")
def base():
    return make()


def text_ids(enc: Encoder, text: str = TEXT) -> list[int]:
    return enc.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_promptreps_query_and_passage_prompts(base):
    ids_q = base._token_ids([TEXT], "query")[0][0]
    ids_p = base._token_ids([TEXT], "passage")[0][0]
    q, p = base.tokenizer.decode(ids_q), base.tokenizer.decode(ids_p)
    assert q.endswith('The word is: "') and p.endswith('The word is: "')
    assert 'Query: "' + TEXT in q and 'Passage: "' + TEXT in p
    assert "<|im_start|>assistant" in q  # through the chat template


def test_prompteol_template():
    enc = make(prompt="prompteol")
    ids = enc._token_ids([TEXT], "passage")[0][0]
    assert enc.tokenizer.decode(ids) == f'This sentence : "{TEXT}" means in one word:"'


def test_no_prompt_is_the_bare_text():
    enc = make(prompt="none")
    ids, start, end = enc._token_ids([TEXT], "passage")[0]
    assert ids == text_ids(enc) and (start, end) == (0, len(ids))


def test_echo_pools_only_over_second_copy():
    enc = make(prompt="echo", pooling="mean")
    ids, start, end = enc._token_ids([TEXT], "passage")[0]
    t = text_ids(enc)
    assert ids.count(t[0]) >= 2 and ids[start:end] == t  # the text twice; the span is the second copy
    first = ids.index(t[0])
    assert first < start and ids[first:first + len(t)] == t
    w = enc._pool_weights([(len(ids), start, end)], len(ids))[0]
    assert w[:start].sum() == 0 and w[end:].sum() == 0 and torch.isclose(w.sum(), torch.tensor(1.0))
    hidden, _ = last_hidden(enc, ids)
    want = unit(hidden[start:end].mean(0))
    got = enc.encode_documents([TEXT]).dense[0]
    np.testing.assert_allclose(got, want, atol=3e-5)
    # and it differs from mean pooling over both copies
    assert not np.allclose(got, unit(hidden.mean(0)), atol=1e-3)


def test_last_pooling_is_last_token(base):
    ids = base._token_ids([TEXT], "passage")[0][0]
    hidden, _ = last_hidden(base, ids)
    np.testing.assert_allclose(base.encode_documents([TEXT]).dense[0], unit(hidden[-1]), atol=2e-5)


def test_mean_pooling_over_text_tokens():
    enc = make(pooling="mean")
    ids, start, end = enc._token_ids([TEXT], "passage")[0]
    assert ids[start:end] == text_ids(enc)
    hidden, _ = last_hidden(enc, ids)
    np.testing.assert_allclose(enc.encode_documents([TEXT]).dense[0], unit(hidden[start:end].mean(0)), atol=3e-5)


def test_weighted_mean_pooling_weights_grow_with_position():
    enc = make(pooling="weighted_mean")
    ids, start, end = enc._token_ids([TEXT], "passage")[0]
    w = enc._pool_weights([(len(ids), start, end)], len(ids))[0][start:end]
    n = end - start
    np.testing.assert_allclose(w.numpy(), np.arange(1, n + 1) / (n * (n + 1) / 2), rtol=1e-6)
    hidden, _ = last_hidden(enc, ids)
    want = unit((hidden[start:end] * w[:, None]).sum(0))
    np.testing.assert_allclose(enc.encode_documents([TEXT]).dense[0], want, atol=3e-5)


def test_eos_pooling_appends_eos_and_keeps_sparse_from_prompt_token(base):
    enc = make(pooling="eos")
    ids = enc._token_ids([TEXT], "passage")[0][0]
    assert ids[-1] == enc.tokenizer.eos_token_id and ids[:-1] == base._token_ids([TEXT], "passage")[0][0]
    hidden, _ = last_hidden(enc, ids)
    out = enc.encode_documents([TEXT])
    np.testing.assert_allclose(out.dense[0], unit(hidden[-1]), atol=2e-5)
    # sparse weights come from the prompt's last token (before EOS): same as the default encoder's
    ref = base.encode_documents([TEXT]).sparse
    assert (out.sparse != ref).nnz == 0 or np.allclose(out.sparse.toarray(), ref.toarray(), atol=1e-4)


def own_ids(enc: Encoder, text: str) -> set[int]:
    ids: set[int] = set()
    for w in words(text, enc._stop):
        ids.update(enc.tokenizer(w, add_special_tokens=False)["input_ids"])
    return ids


def test_expansion_terms_are_not_in_the_text(base):
    enc = make(expansion=10)
    out = enc.encode_documents([TEXT]).sparse[0]
    own = own_ids(enc, TEXT)
    extra = set(out.indices.tolist()) - own
    assert len(extra) == 10
    for t in extra:
        s = enc.tokenizer.decode([t]).strip()
        assert s.isalnum(), s
        assert s.lower() not in TEXT.lower().split()
    # the own-word part is unchanged by expansion
    ref = base.encode_documents([TEXT]).sparse[0]
    assert set(ref.indices.tolist()) == set(out.indices.tolist()) & own


def test_own_word_filter_off_reaches_other_terms():
    enc = make(own_words=False)
    out = enc.encode_documents([TEXT]).sparse[0]
    assert out.nnz == enc.config.sparse_topk  # the whole top-k budget, beyond the text's few own words
    assert set(out.indices.tolist()) - own_ids(enc, TEXT)


def test_custom_stopwords_are_removed():
    enc = make(stopwords=["volcano", "magma"])
    out = enc.encode_documents([TEXT]).sparse[0]
    got = set(out.indices.tolist())
    assert got <= own_ids(enc, TEXT)
    assert not {w for w in enc.decode_terms(sorted(got))} & {"volcano", "magma"}
    assert "volcano" not in words(TEXT, enc._stop)


@pytest.mark.parametrize("text, word", [
    ("Le volcan entre en éruption quand le magma monte à travers la croûte terrestre.", "éruption"),
    ("Der Vulkan bricht aus, wenn Magma durch die Erdkruste aufsteigt und Lava ausstößt.", "ausstößt"),
    ("火山喷发时，岩浆穿过地壳上升并以熔岩的形式喷出。", "岩浆"),
])
def test_word_filter_works_for_any_script(base, text, word):
    out = base.encode_documents([text]).sparse[0]
    own = own_ids(base, text)
    assert out.nnz > 0 and set(out.indices.tolist()) <= own
    # a word of that script contributes its own tokens to the allowed set
    assert set(base.tokenizer(word, add_special_tokens=False)["input_ids"]) & own or word not in text


def test_word_forms_both_adds_space_prefixed_tokens(base):
    enc = make(word_forms="both")
    bare = own_ids(base, TEXT)
    both = set()
    for w in words(TEXT, enc._stop):
        both.update(enc.tokenizer(w, add_special_tokens=False)["input_ids"])
        both.update(enc.tokenizer(" " + w, add_special_tokens=False)["input_ids"])
    assert both > bare
    got = set(enc.encode_documents([TEXT]).sparse[0].indices.tolist())
    assert got <= both and got - bare  # some weight lands on the space-prefixed spellings
