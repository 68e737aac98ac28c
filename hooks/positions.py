"""Absolute token positions, so position-dependent hooks survive the KV cache.

During cached generation each step feeds one token, so a hook that sliced the
local sequence (``hidden[:, k:]``) would patch the wrong tokens. A
`PositionTracker` sits as a pre-hook on the module that owns the decoder blocks
and records, for the forward pass under way, how many tokens the cache already
holds (the absolute offset) and how long the prompt was.

The prompt is the input of the first forward pass on an empty cache (see
`PositionTracker` for re-fed text and chat turns appended to a kept cache).
Positions are cache indices: with left padding they count the pad tokens, which
is what makes the prompt / generated split the same for every row. The cache is
read through `hooks.cache`, which refuses a calling convention it does not know.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from .cache import CACHE_KEYWORDS, cache_keyword, cache_length, forward_parameters, past_offset
from .errors import LayerError

ApplyTo = Literal["all", "prompt", "generated"]
"""Which tokens steering changes (the ``apply_to`` keyword; formerly ``positions``)."""
APPLY_TO: tuple[str, ...] = get_args(ApplyTo)


def check_positions(positions: str) -> str:
    """Return ``positions`` if valid, else raise a `LayerError` listing the choices."""
    if positions not in APPLY_TO:
        raise LayerError(f"unknown apply_to {positions!r}; choose one of {', '.join(APPLY_TO)}")
    return positions


def past_length(kwargs: dict[str, Any]) -> int:
    """Number of tokens already in the KV cache passed to a forward call (0 when none is)."""
    offset = past_offset(kwargs)
    return 0 if offset is None else int(offset)


class PositionTracker:
    """Pre-hook state: absolute offset and prompt length of the current forward.

    Register it on the decoder stack (``decoder_stack(model)``), which it reads
    the cache convention of when made: a stack whose forward takes no cache
    under a known name is refused (`LayerError`) rather than guessed at.

    Both numbers are Python ints, except under a cache that counts in a tensor
    (the static cache used with ``torch.compile``): then they are 0-d tensors
    and every decision is a tensor op, so tracing never leaves the graph.

    How a pass is read:

    - on an empty cache a new prompt starts (the next turn of a chat too,
      even when it extends the last one), unless the call runs without a cache
      (``use_cache=False``) and its ids are exactly the previous pass's plus one
      token: that is ``generate(use_cache=False)`` re-feeding the text;
    - on a non-empty cache the pass continues the sequence, so its tokens are
      generated ones (teacher-forcing a reply scores it as generation would);
      start a new prompt with a fresh cache.
    """

    def __init__(self, stack: nn.Module) -> None:
        names = forward_parameters(stack)
        self._cache_name = cache_keyword(stack)
        self._cache_index = names.index(self._cache_name)
        self.offset: int | Tensor = 0
        self.prompt_len: int | Tensor = 0
        self._last_ids: Tensor | None = None

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
        offset = self._offset(args, kwargs)
        self.offset = offset
        if isinstance(offset, Tensor):
            fresh = offset == 0
            self.prompt_len = fresh * seq_len + (~fresh) * self.prompt_len
            self._last_ids = None
            return
        no_cache = kwargs.get("use_cache") is False
        refeed = offset == 0 and no_cache and self._extends_last_pass(ids)
        self._last_ids = ids if no_cache and isinstance(ids, Tensor) else None
        if offset == 0 and not refeed:
            self.prompt_len = seq_len

    def _offset(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | Tensor:
        for name, value in kwargs.items():
            if name not in CACHE_KEYWORDS and hasattr(value, "get_seq_length"):
                raise LayerError(
                    f"a KV cache was passed as {name!r}, which position-dependent steering does not know "
                    f"(it reads {' / '.join(CACHE_KEYWORDS)}); use positions='all' or report the version"
                )
        offset = past_offset(kwargs)
        if offset is not None:
            return offset
        if len(args) > self._cache_index and args[self._cache_index] is not None:
            return cache_length(args[self._cache_index])
        return 0

    def _extends_last_pass(self, ids: Tensor | None) -> bool:
        prev = self._last_ids
        return (
            isinstance(ids, Tensor)
            and prev is not None
            and ids.shape[0] == prev.shape[0]
            and ids.shape[-1] == prev.shape[-1] + 1
            and bool(torch.equal(ids[:, : prev.shape[-1]], prev))
        )

    def mask(self, positions: str, seq_len: int, device: torch.device) -> Tensor | None:
        """Boolean ``[seq]`` mask of the tokens to patch, or ``None`` for all of them."""
        if positions == "all":
            return None
        # Tensor positions (static cache) live where the inputs went; a layer may run elsewhere.
        offset, prompt_len = (x.to(device) if isinstance(x, Tensor) else x for x in (self.offset, self.prompt_len))
        absolute = torch.arange(seq_len, device=device) + offset
        if positions == "prompt":
            return absolute < prompt_len
        return absolute >= prompt_len

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
