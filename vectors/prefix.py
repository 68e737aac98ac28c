"""Run the shared start of a contrastive pair once: prefix pass, then both suffixes.

A pair's positive and negative texts usually begin alike (the prompt, often
the first words of the completion too). Reading the last token needs every
token's keys and values, but the common prefix has the same ones for both
texts, so one batched pass over the prefixes fills a KV cache, the cache is
repeated for the two rows of each pair, and a second pass runs only the
differing suffixes. The token ids and absolute positions are exactly those
of the unshared texts, so the activations agree to float rounding; the
compute drops by the shared fraction of the tokens.

Row layout of the suffix pass: interleaved, ``[pos_0, neg_0, pos_1, neg_1, ...]``
(what ``Cache.batch_repeat_interleave(2)`` gives the cache rows).

Memory: the cache is a `PairCache`. The suffix pass repeats each layer's
prefix rows for the pair's two texts only when it reaches that layer, and
drops them once attention has read them, never storing the suffix's own keys
and values; so the cache costs at most the prefix pass's one row per pair,
shrinking layer by layer, not every layer's prefix and suffix for both texts
at once (which, on SmolLM2 at full depth, was more than the forward pass itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from steering.hooks import pad_ids, position_ids

from .text import tokenize

# A plan must save this fraction of a plain pass's padded tokens: two passes and a
# KV cache cost something of their own.
MIN_SHARED_FRACTION = 0.15


@dataclass
class SharedBatch:
    """Inputs of the two passes for one batch of pairs."""

    prefix: dict[str, Tensor]  # [pairs, prefix_len], left-padded
    suffix: dict[str, Tensor]  # [2 * pairs, prefix_len + suffix_len] mask, [2 * pairs, suffix_len] ids
    read: Tensor  # [2 * pairs] index of each row's last token in the suffix pass


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plan_shared(
    positive: Sequence[Sequence[int]], negative: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> SharedBatch | None:
    """Split pairs of token ids into a prefix pass and a suffix pass, or ``None`` if not worth it.

    Each pair keeps at least one token of its own per text (the one read).
    Padding decides the cost: the prefix pass is ``pairs x longest prefix``
    and the suffix pass ``2 x pairs x longest suffix``. So the prefix is cut at
    the common length ``c`` that minimises that sum (a pair sharing more than
    ``c`` tokens runs the rest in its suffixes), and the plan is dropped
    unless it saves at least `MIN_SHARED_FRACTION` of the padded tokens of
    one plain pass. ``None`` too when a pair shares nothing (its prefix row
    would be all padding).
    """
    shared = [min(common_prefix_len(p, n), len(p) - 1, len(n) - 1) for p, n in zip(positive, negative)]
    if not shared or min(shared) < 1:
        return None
    longest = [max(len(p), len(n)) for p, n in zip(positive, negative)]
    rows = len(shared)
    plain_cost = 2 * rows * max(longest)
    best_cost, cut = None, 0
    for c in range(1, max(shared) + 1):
        cost = rows * c + 2 * rows * max(t - min(s, c) for t, s in zip(longest, shared))
        if best_cost is None or cost < best_cost:
            best_cost, cut = cost, c
    if best_cost is None or best_cost > (1 - MIN_SHARED_FRACTION) * plain_cost:
        return None
    shared = [min(s, cut) for s in shared]
    prefix_ids, pm = pad_ids([p[:s] for p, s in zip(positive, shared)], pad_id, "left")
    suffixes = [list(text[s:]) for p, n, s in zip(positive, negative, shared) for text in (p, n)]
    suffix_ids, suffix_mask = pad_ids(suffixes, pad_id, "right")
    starts = torch.tensor(shared).repeat_interleave(2)
    return SharedBatch(
        prefix={"input_ids": prefix_ids.to(device), "attention_mask": pm.to(device), "position_ids": position_ids(pm).to(device)},
        suffix={
            "input_ids": suffix_ids.to(device),
            "attention_mask": torch.cat([pm.repeat_interleave(2, 0), suffix_mask], 1).to(device),
            # The suffix continues each row's prefix: its positions start where the prefix ended.
            "position_ids": (starts[:, None] + torch.arange(suffix_ids.shape[1])[None, :]).to(device),
        },
        read=torch.tensor([len(x) - 1 for x in suffixes], device=device),
    )


def length_keys(tokenizer: Any, texts: Sequence[tuple[str, str, str, bool]], chunk: int = 256) -> list[tuple[int, int]]:
    """Sort key per pair: (tokens after the shared prefix, tokens of the longer text).

    Batches of pairs with similar keys pad both passes least. Token ids are
    dropped chunk by chunk, so memory stays flat in the number of pairs.
    """
    keys: list[tuple[int, int]] = []
    for start in range(0, len(texts), chunk):
        for pos_text, neg_text, _, special in texts[start : start + chunk]:
            pos = tokenize(tokenizer, pos_text, special)
            neg = tokenize(tokenizer, neg_text, special)
            longest = max(len(pos), len(neg))
            keys.append((longest - common_prefix_len(pos, neg), longest))
    return keys


class PairCache(DynamicCache):
    """A prefix pass's KV cache that the suffix pass of the pairs reads once, layer by layer.

    Before `pair_up` it is a plain ``DynamicCache`` (the prefix pass fills it, one
    row per pair). After it, ``update`` at a layer repeats that layer's rows for the
    two texts of each pair, returns prefix + suffix keys/values to attention as a
    ``DynamicCache`` would, and then resets the layer: the suffix pass runs each layer
    once and nothing reads a layer's cache after it (the masks are sized before the
    first layer), so holding it, or the suffix's keys and values, only costs memory.
    A model whose layers read other layers' caches (``num_kv_shared_layers``) keeps them.
    """

    _repeats: int | None = None
    _drop = True

    def pair_up(self, repeats: int = 2) -> None:
        """From now on, serve each layer repeated ``repeats`` times per row, then drop it.

        A cache with state other than keys/values (a linear-attention layer's) is
        repeated whole, up front, by transformers' own ``batch_repeat_interleave``.
        """
        if all(isinstance(layer, DynamicLayer) for layer in self.layers):
            self._repeats = repeats
        else:
            self.batch_repeat_interleave(repeats)

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if self._repeats is None:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = cast(DynamicLayer, self.layers[layer_idx])
        layer.batch_repeat_interleave(self._repeats)
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if self._drop:
            layer.reset()  # attention holds keys/values until it is done with them
        return keys, values


def new_cache(model: nn.Module) -> PairCache:
    """An empty `PairCache` laid out for ``model`` (sliding layers included)."""
    config = cast(Any, model.config)
    try:
        cache = PairCache(config=config)
    except TypeError:  # older transformers: no config argument
        cache = PairCache()
    cache._drop = not getattr(config, "num_kv_shared_layers", 0)
    return cache
