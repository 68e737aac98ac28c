"""Contrast pairs the model writes itself, under an instruction for the behaviour and one for its opposite.

For each prompt, the model's reply to the prompt asked with the positive
instruction and its reply asked with the negative one become a pair whose
prompt is the plain prompt. A direction extracted or trained from such pairs
distils the instruction into the activations of the un-instructed prompt
(context distillation; the persona-vector recipe of Chen et al. 2025 reads
the same kind of replies).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from steering.vectors import ContrastPair, DatasetError

from .generate import generate

log = logging.getLogger(__name__)


def instructed(instruction: str, prompt: str) -> str:
    """``prompt`` asked with ``instruction`` before it (also how a prompting baseline asks)."""
    return f"{instruction}\n\n{prompt}"


def self_written_pairs(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    positive: str,
    negative: str,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> list[ContrastPair]:
    """The model's greedy replies to each prompt under ``positive`` and under ``negative``, as pairs with the plain prompt.

    A prompt for which either reply is empty (after stripping whitespace) gives
    no pair; how many were dropped is logged.

    Raises:
        DatasetError: no prompts, an empty instruction, or no prompt with two non-empty replies.

    Example:
        >>> pairs = self_written_pairs(model, tok, ["Describe your day."], "Reply happily.", "Reply sadly.")  # doctest: +SKIP
    """
    if not prompts:
        raise DatasetError("self-written pairs need at least one prompt")
    for name, text in (("positive", positive), ("negative", negative)):
        if not text.strip():
            raise DatasetError(f"self-written pairs: the {name} instruction is empty")
    replies = [
        generate(model, tokenizer, [instructed(text, p) for p in prompts], None, max_new_tokens=max_new_tokens, batch_size=batch_size)
        for text in (positive, negative)
    ]
    pairs = [ContrastPair(a.strip(), b.strip(), p) for p, a, b in zip(prompts, *replies) if a.strip() and b.strip()]
    if not pairs:
        raise DatasetError(f"self-written pairs: every one of the {len(prompts)} prompts got an empty reply")
    if len(pairs) < len(prompts):
        log.warning("self-written pairs: %d of %d prompts got an empty reply and give no pair", len(prompts) - len(pairs), len(prompts))
    return pairs
