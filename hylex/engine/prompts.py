"""Prompt templates that make a decoder LLM put a text's meaning into its last hidden state and next token.

The methods of the survey (arXiv 2412.12591), selectable by name:

- ``promptreps`` (Zhuang et al., 2024): through the chat template, "use one word to represent the query /
  passage", answered after ``The word is: "``. Queries and passages get their own wording.
- ``prompteol`` (Jiang et al., 2023): ``This sentence : "<text>" means in one word:"`` as plain text.
- ``echo`` (Springer et al., 2024): the text twice, ``Rewrite the sentence: <text>, rewritten sentence: <text>``,
  so the second copy's tokens have seen the whole text; poolings then cover the second copy only.
- ``none``: the bare text.

A prompt is rendered once into literal token-id pieces with text slots between them. Texts are tokenized alone
and truncated by tokens to fit, so the instruction that makes the last token meaningful is never cut off.
"""
from __future__ import annotations

from dataclasses import dataclass

from hylex.engine.settings import PROMPTS

_SLOT = "\x00HYLEX_TEXT\x00"

SYSTEM = "You are an AI assistant that can understand human language."
PROMPTREPS_USER = ('{kind}: "{text}". Use one word to represent the {kind_lower} in a retrieval task. '
                   'Make sure your word is in lowercase.')
PROMPTREPS_ASSISTANT = 'The word is: "'
PROMPTEOL = 'This sentence : "{text}" means in one word:"'
ECHO = 'Rewrite the sentence: {text}, rewritten sentence: {text}'



@dataclass(frozen=True)
class PromptLayout:
    """Literal token ids around text slots: ``pieces[0] + text + pieces[1] (+ text + pieces[2])``."""

    pieces: tuple[tuple[int, ...], ...]

    @property
    def copies(self) -> int:
        return len(self.pieces) - 1

    @property
    def overhead(self) -> int:
        return sum(len(p) for p in self.pieces)

    def assemble(self, text_ids: list[int], max_length: int) -> tuple[list[int], int, int]:
        """Token ids of one text in the prompt, truncated to ``max_length``.

        Returns ``(ids, start, end)``: ``ids[start:end]`` is the last copy of the text (the pooling span).
        """
        budget = max(0, (max_length - self.overhead) // self.copies)
        text = list(text_ids[:budget])
        ids: list[int] = list(self.pieces[0])
        start = end = len(ids)
        for piece in self.pieces[1:]:
            start = len(ids)
            ids.extend(text)
            end = len(ids)
            ids.extend(piece)
        return ids, start, end


def _chat(tokenizer, user: str) -> str:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # some templates reject a system role: fold it into the user turn
        messages = [{"role": "user", "content": SYSTEM + "\n" + user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render(tokenizer, prompt: str, kind: str) -> PromptLayout:
    """Render ``prompt`` for ``kind`` (``query`` or ``passage``) into a :class:`PromptLayout`."""
    if prompt not in PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}: choose one of {', '.join(PROMPTS)}")
    if kind not in ("query", "passage"):
        raise ValueError(f"kind must be 'query' or 'passage', not {kind!r}")
    if prompt == "promptreps":
        user = PROMPTREPS_USER.format(kind=kind.capitalize(), text=_SLOT, kind_lower=kind)
        if getattr(tokenizer, "chat_template", None):
            rendered = _chat(tokenizer, user) + PROMPTREPS_ASSISTANT
        else:  # base models: the same words as plain text
            rendered = f"{SYSTEM}\n{user}\n{PROMPTREPS_ASSISTANT}"
    elif prompt == "prompteol":
        rendered = PROMPTEOL.format(text=_SLOT)
    elif prompt == "echo":
        rendered = ECHO.format(text=_SLOT)
    else:
        rendered = _SLOT
    pieces = [tuple(tokenizer(p, add_special_tokens=False)["input_ids"]) if p else () for p in rendered.split(_SLOT)]
    bos = getattr(tokenizer, "bos_token_id", None)
    # Models that expect a BOS token get it unless the template already wrote it.
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and pieces[0][:1] != (bos,):
        pieces[0] = (bos,) + pieces[0]
    return PromptLayout(tuple(pieces))
