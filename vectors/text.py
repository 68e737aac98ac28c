"""How a text becomes tokens: the one path for extraction, generation, serving and metrics.

A prompt is formatted once, here (`format_prompt`): with a chat template it is
a templated user turn ending in the generation prompt, tokenised *without*
special tokens (the template already holds any BOS); without one it is the
plain text, tokenised *with* the tokenizer's usual special tokens. A
completion follows the formatted prompt directly, except that plain text gets
a joining space where neither side has whitespace at the junction
(`separator`). So a pair read by extraction, the same prompt generated from or
served, and a reply scored by the metrics all meet the model as the same ids.

Tokenizers are only called, never configured: padding is done by
`hooks.tokens.pad_ids` on the side the caller names, because a tokenizer may
be shared between threads (the server) and its ``padding_side`` is mutable
state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from steering.hooks.tokens import Side, completion_mask, pad_ids, position_ids, read_indices

from .pairs import ContrastPair


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """``messages`` rendered by the chat template, ready for the assistant turn (tokenise without special tokens)."""
    return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))


def format_prompt(tokenizer: Any, prompt: str, chat: bool | None = None) -> tuple[str, bool]:
    """Return ``(text, add_special_tokens)`` for a plain prompt.

    With ``chat`` (default: when the tokenizer has a chat template) the prompt
    becomes a templated user turn with the generation prompt; the template
    already holds any BOS, so no special tokens are added again.

    Example:
        >>> format_prompt(plain_tok, "Hi")  # doctest: +SKIP
        ('Hi', True)
    """
    if has_chat_template(tokenizer) if chat is None else chat:
        return format_chat(tokenizer, [{"role": "user", "content": prompt}]), False
    return prompt, True


def separator(prompt_text: str, templated: bool, completion: str) -> str:
    """What joins a formatted prompt and its completion: ``" "`` for plain text with no whitespace at the junction, else ``""``.

    Nothing joins an empty prompt: the completion starts the text.
    """
    if templated or not completion or not prompt_text or prompt_text[-1:].isspace() or completion[:1].isspace():
        return ""
    return " "


def pair_texts(tokenizer: Any, pair: ContrastPair) -> tuple[str, str, str, bool]:
    """Return ``(positive_text, negative_text, prefix, add_special_tokens)`` for a pair.

    ``prefix`` is the formatted prompt and its separator (chosen by the
    positive, so both texts share it); ``""`` for a pair without a prompt.
    """
    if pair.prompt is None:
        return pair.positive, pair.negative, "", True
    text, special = format_prompt(tokenizer, pair.prompt)
    prefix = text + separator(text, not special, pair.positive)
    return prefix + pair.positive, prefix + pair.negative, prefix, special


def tokenize(tokenizer: Any, text: str, special: bool = True) -> list[int]:
    """Token ids of ``text``, with the tokenizer's special tokens when ``special``."""
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def tokenize_with_offsets(tokenizer: Any, text: str, special: bool) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of ``text`` and each token's character span (``None`` for a slow tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        return tokenize(tokenizer, text, special), None
    encoded = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]


def prefix_tokens(tokenizer: Any, text: str, prefix: str, special: bool, offsets: Sequence[tuple[int, int]] | None) -> int:
    """How many tokens of ``text`` belong to ``prefix`` (a start of ``text``).

    With character offsets (fast tokenizers) a token belongs to the prefix when
    it ends inside it, which is exact even where the tokenizer merges the
    separating space into the first completion token ("Ġhappy"). Otherwise the
    prefix is tokenised alone, without trailing whitespace for that reason.
    """
    if not prefix:
        return 0
    if offsets is not None:
        return sum(1 for _, end in offsets if end <= len(prefix))
    return len(tokenize(tokenizer, prefix if not special else prefix.rstrip(), special))


def document_start(tokenizer: Any) -> list[int]:
    """Token ids a plain text starts with: what the tokenizer adds itself (e.g. Gemma's BOS), else its BOS (or EOS) token.

    A text scored "from its start" is scored after these ids, as a base model
    read it in training; GPT-2-style tokenizers add nothing, and their
    documents are separated by the end-of-text token.

    Raises:
        ValueError: the tokenizer adds no tokens and has neither a BOS nor an EOS token.
    """
    ids = tokenize(tokenizer, "", special=True)
    if ids:
        return ids
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("the tokenizer has no BOS or EOS token to start a plain text with")
    return [int(start)]


def encode_prompt(tokenizer: Any, prompt: str, chat: bool | None = None) -> list[int]:
    """Token ids of ``prompt`` as `format_prompt` formats it."""
    return tokenize(tokenizer, *format_prompt(tokenizer, prompt, chat))


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` rendered by the chat template, ready for the assistant turn."""
    return tokenize(tokenizer, format_chat(tokenizer, messages), special=False)


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad with: the pad token, else EOS (padding is masked, so only its presence matters)."""
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def pad_batch(tokenizer: Any, rows: Sequence[Sequence[int]], side: Side = "left") -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` (``[batch, seq]``) of token-id rows padded on ``side``.

    The tokenizer gives only its pad id; its ``padding_side`` is neither read nor changed.
    """
    ids, mask = pad_ids(rows, pad_token_id(tokenizer), side)
    return {"input_ids": ids, "attention_mask": mask}


def encode_texts(
    tokenizer: Any, texts: Sequence[str], prefixes: Sequence[str], special: Sequence[bool], position: str, device: torch.device
) -> dict[str, Tensor]:
    """Model inputs of ``texts`` (on ``device``) and ``_reduce``, what `hooks.tokens.read_rows` reads of each row.

    ``position`` is a read (``last``: the index of each row's last token;
    ``mean``: a mask of the tokens after each row's ``prefixes`` entry, the completion).
    """
    if position == "mean":
        ids, offsets = zip(*(tokenize_with_offsets(tokenizer, t, s) for t, s in zip(texts, special)))
    else:
        ids = tuple(tokenize(tokenizer, t, s) for t, s in zip(texts, special))
    # Either side gives the same vectors (tested); the tokenizer's side is only read, never set.
    batch = pad_batch(tokenizer, ids, side=getattr(tokenizer, "padding_side", "right"))
    mask = batch["attention_mask"]
    out = {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": mask.to(device),
        "position_ids": position_ids(mask).to(device),
    }
    if position == "mean":
        lens = [prefix_tokens(tokenizer, *row) for row in zip(texts, prefixes, special, offsets)]
        out["_reduce"] = completion_mask(mask, torch.tensor(lens)).to(device)
    else:
        out["_reduce"] = read_indices(mask).to(device)
    return out
