"""Absolute token positions, so position-dependent hooks survive the KV cache.

During cached generation each step feeds one token, so a hook that sliced the
local sequence (``hidden[:, k:]``) would patch the wrong tokens. A
`PositionTracker` sits as a pre-hook on the module that owns the decoder blocks
and records, for the forward pass under way, how many tokens the cache already
holds (the absolute offset) and how long the prompt was.

The prompt is the input of the first forward pass on an empty cache. A pass on
an empty cache whose ids extend the previous prompt (``generate`` with
``use_cache=False`` re-feeds the whole text) keeps the old prompt length.
Positions are cache indices: with left padding they count the pad tokens, which
is what makes the prompt / generated split the same for every row.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from .errors import LayerError

Positions = Literal["all", "prompt", "generated"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated")


def check_positions(positions: str) -> str:
    """Return ``positions`` if valid, else raise a `LayerError` listing the choices."""
    if positions not in POSITIONS:
        raise LayerError(f"unknown positions {positions!r}; choose one of {', '.join(POSITIONS)}")
    return positions


def past_length(kwargs: dict[str, Any]) -> int:
    """Number of tokens already in the KV cache passed to a forward call."""
    return int(_past_offset(kwargs))


def _past_offset(kwargs: dict[str, Any]) -> int | Tensor:
    """`past_length`, left as a 0-d tensor where the cache keeps it as one.

    transformers' static cache counts its tokens in a tensor so that compiled
    graphs need not be specialised per step; reading it with ``int()`` would
    break a ``torch.compile`` graph at every forward.
    """
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, Tensor) and cache_position.numel():
        return cache_position[0]
    past = kwargs.get("past_key_values")
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        length = past.get_seq_length()
        return length if isinstance(length, Tensor) else int(length)
    try:  # legacy tuple-of-tuples cache: [layer][key/value] -> [batch, heads, seq, dim]
        return int(past[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


class PositionTracker:
    """Pre-hook state: absolute offset and prompt length of the current forward.

    Both are Python ints, except under a cache that counts in a tensor (the
    static cache used with ``torch.compile``): then they are 0-d tensors and
    every decision is a tensor op, so tracing never leaves the graph. A static
    cache is only used for cached generation, where a pass on an empty cache
    always starts a new prompt.
    """

    def __init__(self) -> None:
        self.offset: int | Tensor = 0
        self.prompt_len: int | Tensor = 0
        self._prompt_ids: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], Tensor):
            ids = args[0]
        embeds = kwargs.get("inputs_embeds")
        if isinstance(ids, Tensor):
            seq_len = ids.shape[-1]
        elif isinstance(embeds, Tensor):
            seq_len = embeds.shape[1]
        else:
            raise LayerError("position-dependent steering needs input_ids or inputs_embeds")
        offset = _past_offset(kwargs)
        self.offset = offset
        if isinstance(offset, Tensor):
            fresh = offset == 0
            self.prompt_len = fresh * seq_len + (~fresh) * self.prompt_len
            self._prompt_ids = None
        elif offset == 0 and not self._extends_prompt(ids):
            self.prompt_len = seq_len
            self._prompt_ids = ids if isinstance(ids, Tensor) else None

    def _extends_prompt(self, ids: Tensor | None) -> bool:
        prev = self._prompt_ids
        return (
            isinstance(ids, Tensor)
            and prev is not None
            and ids.shape[0] == prev.shape[0]
            and ids.shape[-1] > prev.shape[-1]
            and bool(torch.equal(ids[:, : prev.shape[-1]], prev))
        )

    def mask(self, positions: str, seq_len: int, device: torch.device) -> Tensor | None:
        """Boolean ``[seq]`` mask of the tokens to patch, or ``None`` for all of them."""
        if positions == "all":
            return None
        absolute = torch.arange(seq_len, device=device) + self.offset
        if positions == "prompt":
            return absolute < self.prompt_len
        return absolute >= self.prompt_len

    def select(self, positions: str, seq_len: int, device: torch.device) -> Tensor | bool:
        """Like `mask`, but ``True`` when every token is patched and ``False`` when none is.

        During cached generation every step after the prompt is all-generated,
        so a hook can skip the mask (``True``) or the whole op (``False``)
        instead of building and applying a mask per layer per token. With
        tensor positions (static cache) it always returns the mask.
        """
        if positions == "all":
            return True
        start, prompt_len = self.offset, self.prompt_len
        if not isinstance(start, Tensor) and not isinstance(prompt_len, Tensor):
            end = start + seq_len
            if start >= prompt_len:
                return positions == "generated"
            if end <= prompt_len:
                return positions == "prompt"
        mask = self.mask(positions, seq_len, device)
        assert mask is not None
        return mask
