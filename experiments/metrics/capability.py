"""``capability``: two-choice MMLU accuracy under steering, a capability side effect.

The items (``eval.capability``: CAA's two-choice MMLU, ``caa/test/mmlu/mmlu.json``
in the shared data, 570 questions over 57 subjects) are JSON objects with a
``prompt`` ending in the choices "(A) ..." and "(B) ...", the ``correct`` and
the ``incorrect`` letter. They are scored as A/B items are (`ab`): the reply
is "(" and the next token the letter; an item counts as right when the
correct letter is the likelier of the two.

- ``capability``: the accuracy at this cell;
- ``capability_drop``: the unsteered accuracy minus it (positive = worse).

It costs a forward pass per item, so it is measured on the cells a choice
is made from, not on the whole grid: kind ``choice`` metrics run on the
baseline, the prompting cells and each cell the choice would pick, until
the picked cell also keeps the choice metrics' budget (`sweep.check_choice`).
"""

from __future__ import annotations

import math

import torch

from .ab import ABItem, answer_logprobs, build_items, encode_items
from .base import Cell, Context, Values


def _items(ctx: Context) -> list[ABItem]:
    if "capability_items" not in ctx.cache:
        ctx.cache["capability_items"] = build_items(ctx.tokenizer, ctx.data.capability, ctx.cfg.eval.chat)
    return ctx.cache["capability_items"]


def accuracy(ctx: Context, cell: Cell) -> float:
    """Share of items where the correct letter is likelier than the other, at ``cell``."""
    items = _items(ctx)
    with cell.steering(ctx.model):
        right, wrong = answer_logprobs(ctx.model, items, encode_items(ctx, items, cell))
    return float((right > wrong).double().mean())


@torch.no_grad()
def capability(ctx: Context, cell: Cell) -> Values:
    """``capability`` and ``capability_drop`` (see module docs); the unsteered accuracy is measured once."""
    if "capability_base" not in ctx.cache:
        ctx.cache["capability_base"] = accuracy(ctx, Cell(0))
    base = ctx.cache["capability_base"]
    value = base if cell.is_baseline else accuracy(ctx, cell)
    drop = base - value
    return {"capability": value, "capability_drop": 0.0 if math.isclose(drop, 0.0, abs_tol=1e-12) else drop}
