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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

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


def plan_shared(positive: Sequence[Sequence[int]], negative: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> SharedBatch | None:
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
    width = max(shared)
    prefix_ids = [[pad_id] * (width - s) + list(p[:s]) for p, s in zip(positive, shared)]
    prefix_mask = [[0] * (width - s) + [1] * s for s in shared]
    suffixes = [list(text[s:]) for p, n, s in zip(positive, negative, shared) for text in (p, n)]
    length = max(len(x) for x in suffixes)
    suffix_ids = [x + [pad_id] * (length - len(x)) for x in suffixes]
    suffix_mask = [[1] * len(x) + [0] * (length - len(x)) for x in suffixes]
    starts = torch.tensor(shared).repeat_interleave(2)
    pm = torch.tensor(prefix_mask)
    return SharedBatch(
        prefix={
            "input_ids": torch.tensor(prefix_ids, device=device),
            "attention_mask": pm.to(device),
            "position_ids": (pm.cumsum(1) - 1).clamp_min(0).to(device),
        },
        suffix={
            "input_ids": torch.tensor(suffix_ids, device=device),
            "attention_mask": torch.cat([pm.repeat_interleave(2, 0), torch.tensor(suffix_mask)], 1).to(device),
            "position_ids": (starts[:, None] + torch.arange(length)[None, :]).to(device),
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
            pos = tokenizer(pos_text, add_special_tokens=special)["input_ids"]
            neg = tokenizer(neg_text, add_special_tokens=special)["input_ids"]
            longest = max(len(pos), len(neg))
            keys.append((longest - common_prefix_len(pos, neg), longest))
    return keys


def new_cache(model: nn.Module) -> Any:
    """An empty transformers ``DynamicCache`` laid out for ``model`` (sliding layers included)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()
