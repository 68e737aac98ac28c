"""Token batches as tensors: padding, positions under padding, and reading one vector per row.

The single home of these mechanics, so that extraction, generation, scoring
and comparison lay out a batch the same way. Pure tensor code: no tokenizer
(formatting and tokenising live in `vectors.text`).

Axis names: ``batch`` rows, ``seq`` tokens (padding included), ``d`` hidden width.
A mask is ``[batch, seq]`` with 1 on real tokens and 0 on padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from .devices import wide_dtype

Side = Literal["left", "right"]


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int, side: Side = "left") -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)``, both ``[batch, seq]`` long, rows padded on ``side``.

    Done here rather than by ``tokenizer.pad`` so that no tokenizer's
    ``padding_side`` is ever read or changed: a tokenizer shared between
    threads (a server, say) must not change under another caller.

    Example:
        >>> pad_ids([[5, 6], [7]], pad_id=0)[0].tolist()
        [[5, 6], [0, 7]]
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max((len(row) for row in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        if not row:
            continue
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[r, span] = torch.as_tensor(list(row), dtype=torch.long)
        mask[r, span] = 1
    return ids, mask


def position_ids(attention_mask: Tensor) -> Tensor:
    """Each token's position in its own row, not counting padding (pads get 0).

    Absolute-position models (GPT-2, OPT) need these under left padding; with
    them a padded row runs exactly as its unpadded text would.
    """
    return (attention_mask.long().cumsum(1) - 1).clamp_min(0)


def read_indices(attention_mask: Tensor) -> Tensor:
    """``[batch]`` index of the last non-pad token of each row, for left or right padding."""
    seq = attention_mask.shape[1]
    return seq - 1 - attention_mask.flip(1).int().argmax(1)


def completion_mask(attention_mask: Tensor, prefix_lens: Tensor) -> Tensor:
    """Boolean ``[batch, seq]``: the non-pad tokens after each row's first ``prefix_lens`` tokens.

    A row whose completion got no token of its own falls back to its last token.
    """
    mask = attention_mask.bool()
    first = mask.int().argmax(1)  # index of the first real token (left padding: after pads)
    position = torch.arange(mask.shape[1], device=mask.device)[None, :] - first[:, None]
    out = mask & (position >= prefix_lens[:, None])
    empty = ~out.any(1)
    if empty.any():
        last = read_indices(attention_mask)
        out[empty, last[empty]] = True
    return out


def read_rows(hidden: Tensor, how: Tensor) -> Tensor:
    """``[batch, seq, d]`` -> ``[batch, d]``: the token at index ``how`` (``[batch]``),
    or the mean over the tokens of mask ``how`` (``[batch, seq]``).

    ``how`` comes from `read_indices` (read ``last``) or `completion_mask` (read ``mean``).
    A mean is summed in float32 at least (`hooks.devices.wide_dtype`) from the first
    op, and returned in that dtype: a bf16 sum over a long completion would round
    every partial sum to 8 bits of mantissa.
    """
    how = how.to(hidden.device)  # no-op unless the model is spread over devices
    if how.dim() == 1:
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), how]
    wide = wide_dtype(hidden.dtype)
    weights = how.to(device=hidden.device, dtype=wide)
    return (hidden.to(wide) * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
