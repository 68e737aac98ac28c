"""The running batch's KV cache: rows join after their own prefill and leave when done.

Layout. Every row's tokens are right-aligned in one ``DynamicCache`` of
length ``T``; columns to the left of a row's first token are padding, with
zero keys and values and ``mask == 0``. Keys already carry their rotary (or
learned) position, computed from per-row ``position_ids`` that count only the
row's own tokens, so the storage column a token sits in does not matter: the
attention mask hides padding and every row sees exactly the keys it would see
alone. Because padding is only ever on the left, the distance between two
storage columns equals the distance between the tokens' positions, which keeps
sliding-window masks right too.

* `join` left-pads the shorter of (batch, new row) and concatenates on the batch axis.
* `keep` drops finished rows, then the leading columns no row uses any more.
* `forward_step` runs one decode pass: each row feeds its last token.

``B`` = rows, ``T`` = cache columns, ``H``/``D`` = heads and head width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from steering.hooks import SteeringError, cache_kwargs
from steering.hooks import forward_parameters as hooks_forward_parameters


class UnsupportedCacheError(SteeringError):
    """The model keeps a cache the server cannot batch row by row."""


def _check_layers(cache: DynamicCache, model: nn.Module) -> None:
    for index, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer or getattr(layer, "is_sliding", False):
            raise UnsupportedCacheError(
                f"{type(model).__name__} keeps a {type(layer).__name__} cache at layer {index}; "
                "the server batches only models whose cache is a plain DynamicCache of key/value tensors"
            )


def _pad_left(x: Tensor, columns: int) -> Tensor:
    """Zero-pad ``[B, H, T, D]`` (or ``[B, T]`` masks) with ``columns`` on the left of T."""
    if columns == 0:
        return x
    return F.pad(x, (columns, 0)) if x.dim() == 2 else F.pad(x, (0, 0, columns, 0))


class KVBatch:
    """Rows decoding together: their shared cache and attention mask ``[B, T]``."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask: Tensor | None = None

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def columns(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def join(self, cache: DynamicCache, mask: Tensor, model: nn.Module) -> None:
        """Append a prefilled row (its cache ``[1, H, P, D]`` and mask ``[1, P]``) as the last row."""
        _check_layers(cache, model)
        if self.cache is None or self.mask is None:
            self.cache, self.mask = cache, mask
            return
        if len(cache.layers) != len(self.cache.layers):
            raise UnsupportedCacheError(f"a new row has {len(cache.layers)} cache layers, the batch {len(self.cache.layers)}")
        width = max(self.columns, mask.shape[1])
        grow, fit = width - self.columns, width - mask.shape[1]
        for ours, theirs in zip(_kv_layers(self.cache), _kv_layers(cache), strict=True):
            ours.keys = torch.cat([_pad_left(ours.keys, grow), _pad_left(theirs.keys, fit)])
            ours.values = torch.cat([_pad_left(ours.values, grow), _pad_left(theirs.values, fit)])
        self.mask = torch.cat([_pad_left(self.mask, grow), _pad_left(mask, fit)])

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order); trim columns that only padding uses."""
        if self.cache is None or self.mask is None:
            return
        if not rows:
            self.cache = self.mask = None
            return
        if list(rows) != list(range(self.rows)):
            index = torch.tensor(list(rows), device=self.mask.device)
            self.mask = self.mask[index]
            for layer in _kv_layers(self.cache):
                layer.keys, layer.values = layer.keys[index], layer.values[index]
        used = self.mask.any(dim=0).nonzero()
        lead = int(used[0]) if used.numel() else self.columns
        if lead:
            self.mask = self.mask[:, lead:]
            for layer in _kv_layers(self.cache):
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]

    def forward_step(self, model: nn.Module, tokens: Tensor, positions: Tensor, *, pass_cache_position: bool = False) -> Tensor:
        """One decode pass: ``tokens`` and their ``positions`` are ``[B]``; returns logits ``[B, vocab]``.

        ``pass_cache_position``: give ``cache_position`` (the new column)
        explicitly, for models whose ``forward`` names it; others derive it
        from the cache length, which is the same number.
        """
        if self.cache is None or self.mask is None:
            raise SteeringError("no rows to decode")
        columns = self.columns
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)
        extra = {"cache_position": torch.tensor([columns], device=tokens.device)} if pass_cache_position else {}
        out = model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=positions[:, None],
            use_cache=True,
            **cache_kwargs(model, self.cache),
            **extra,
        )
        return out.logits[:, -1, :]


def prefill(
    model: nn.Module, ids: Sequence[int], device: torch.device, *, last_logits_only: bool = False
) -> tuple[Tensor, DynamicCache, Tensor]:
    """Run a prompt alone: return logits of its last token ``[vocab]``, its cache and mask ``[1, P]``.

    ``last_logits_only`` passes ``logits_to_keep=1`` (see `accepts_logits_to_keep`).
    """
    input_ids = torch.tensor([list(ids)], device=device)
    mask = torch.ones_like(input_ids)
    cache = DynamicCache()
    kwargs = {"logits_to_keep": 1} if last_logits_only else {}
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=torch.arange(input_ids.shape[1], device=device)[None],
        use_cache=True,
        **cache_kwargs(model, cache),
        **kwargs,
    )
    return out.logits[0, -1, :], cache, mask


def forward_parameters(model: nn.Module) -> set[str]:
    """Names ``model.forward`` declares (``logits_to_keep``, ``cache_position``...).

    Raises:
        UnsupportedCacheError: the forward takes no ``position_ids`` (per-row
            positions are how left-padded rows stay exact).
    """
    names = set(hooks_forward_parameters(model))
    if "position_ids" not in names:
        raise UnsupportedCacheError(f"{type(model).__name__}.forward takes no position_ids; the server needs per-row positions")
    return names


def _kv_layers(cache: DynamicCache) -> list[Any]:
    """The cache's per-layer holders; each has ``keys`` and ``values`` (`UnsupportedCacheError` refuses other caches)."""
    return list(cache.layers)
