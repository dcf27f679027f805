"""Prompt templates that make a decoder LLM put a text's meaning into its next token (PromptReps).

A prompt is rendered through the model's chat template once, with a placeholder where the text goes, and split
there into a prefix and a suffix. Texts are tokenized alone and truncated by tokens between the two, so the
instruction that makes the last token meaningful is never cut off.
"""
from __future__ import annotations

from dataclasses import dataclass

_PLACEHOLDER = "\x00HYLEX_TEXT\x00"

SYSTEM = "You are an AI assistant that can understand human language."
# PromptReps (Zhuang et al., 2024, arXiv 2404.18424): one word in lowercase, answered after `The word is: "`.
PROMPTREPS_USER = ('{kind}: "{text}". Use one word to represent the {kind_lower} in a retrieval task. '
                   'Make sure your word is in lowercase.')
PROMPTREPS_ASSISTANT = 'The word is: "'

PROMPTS = ("promptreps",)


@dataclass(frozen=True)
class PromptParts:
    """Token ids around the text: ``prefix + text + suffix``; the last suffix token is the one pooled."""

    prefix: list[int]
    suffix: list[int]


def render(tokenizer, prompt: str, kind: str) -> PromptParts:
    """Render ``prompt`` for ``kind`` ("query" or "passage") and return the token ids around the text.

    Models without a chat template get the same words as plain text.
    """
    if prompt not in PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}: choose one of {', '.join(PROMPTS)}")
    if kind not in ("query", "passage"):
        raise ValueError(f"kind must be 'query' or 'passage', not {kind!r}")
    user = PROMPTREPS_USER.format(kind=kind.capitalize(), text=_PLACEHOLDER, kind_lower=kind)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        try:
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # some templates reject a system role: fold it into the user turn
            messages = [{"role": "user", "content": SYSTEM + "\n" + user}]
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        rendered = f"{SYSTEM}\n{user}\n"
    rendered += PROMPTREPS_ASSISTANT
    before, after = rendered.split(_PLACEHOLDER)
    prefix = tokenizer(before, add_special_tokens=False)["input_ids"]
    suffix = tokenizer(after, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    # Templates that do not write the BOS token themselves rely on add_special_tokens; keep the model's habit.
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not prefix or prefix[0] != bos):
        prefix = [bos] + prefix
    return PromptParts(prefix=list(prefix), suffix=list(suffix))
