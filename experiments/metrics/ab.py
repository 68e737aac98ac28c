"""``ab_pmatch``: CAA-style A/B questions scored at the answer position.

Each item is a question and two answers, e.g. ``"(A"`` (matches the
behaviour) and ``"(B"``. The reply is the answers' shared start (``"("``, so
the prompt ends with "(" as in CAA) and the next token is the answer letter.
Per item, with P the model's next-token probabilities there:

- ``p_match`` = P(matching) / (P(matching) + P(other)), averaged over items;
- ``ab_mass`` = P(matching) + P(other): how well the model keeps to the format;
- ``share_<X>``: mean P(X) / (P(matching) + P(other)) over the items offering
  answer X; at coef 0 this is the model's letter bias (``share_A`` vs ``share_B``);
- ``p_match_<X>``: ``p_match`` over the items whose matching answer is X. A
  vector that only moves the letter raises one of these and lowers the other,
  so an effect on the behaviour is one that moves them the same way.

Over one row of the sweep (one layer window, every coefficient, baseline
included) the ``row`` step fits, per item, the least-squares slope of the
logit difference log P(matching) - log P(other) against the coefficient (the
steerability of Tan et al.), and reports its mean (``slope``) and the
fraction of items whose slope has the wrong sign (``wrong_sign``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import steering as st
from steering.vectors.text import format_prompt, separator, tokenize

from .base import Cell, Context, Values
from .replies import ReplyBatch, encode_replies, iter_reply_logprobs


@dataclass(frozen=True)
class ABItem:
    """One question with the token ids of its two answers at the answer position."""

    prompt: str
    reply: str
    match: int
    other: int
    match_label: str
    other_label: str


def _common_prefix(a: str, b: str) -> str:
    return os.path.commonprefix([a, b])


def _answer_token(tokenizer: Any, reply: str, answer: str, where: str) -> int:
    # Tokenised as `encode_replies` tokenises the reply it scores.
    base = tokenize(tokenizer, reply, special=False) if reply else []
    full = tokenize(tokenizer, answer, special=False)
    if full[: len(base)] != base or len(full) != len(base) + 1:
        raise st.DatasetError(
            f"{where}: answer {answer!r} is not the reply {reply!r} plus one token for this tokenizer; "
            "A/B scoring reads a single answer token"
        )
    return int(full[-1])


def build_items(tokenizer: Any, pairs: list[st.ContrastPair], chat: bool | None) -> list[ABItem]:
    """Turn question/answer pairs into `ABItem`s (see module docs).

    Raises:
        DatasetError: an item whose answers are equal or are not one token past their shared start.
    """
    items = []
    for i, pair in enumerate(pairs):
        where = f"A/B item {i}"
        if pair.positive == pair.negative:
            raise st.DatasetError(f"{where}: both answers are {pair.positive!r}")
        assert pair.prompt is not None
        text, special = format_prompt(tokenizer, pair.prompt, chat)
        shared = _common_prefix(pair.positive, pair.negative)
        reply = separator(text, not special, shared) + shared
        # Each answer as it would be tokenised after the prompt: the reply, then the rest.
        answers = [reply + a[len(shared) :] if shared else separator(text, not special, a) + a for a in (pair.positive, pair.negative)]
        match, other = (_answer_token(tokenizer, reply, answer, where) for answer in answers)
        if match == other:
            raise st.DatasetError(f"{where}: answers {pair.positive!r} and {pair.negative!r} share their answer token")
        labels = [answer[len(shared) :].strip() or answer for answer in (pair.positive, pair.negative)]
        items.append(ABItem(pair.prompt, shared, match, other, labels[0], labels[1]))
    return items


def _items(ctx: Context) -> list[ABItem]:
    if "ab_items" not in ctx.cache:
        ctx.cache["ab_items"] = build_items(ctx.tokenizer, ctx.data.items, ctx.cfg.eval.chat)
        ctx.cache["ab_batches"] = encode_items(ctx, ctx.cache["ab_items"], Cell(0))
    return ctx.cache["ab_items"]


@torch.no_grad()
def answer_logprobs(model: Any, items: list[ABItem], batches: list[ReplyBatch]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log P(matching), log P(other))`` per item at the answer position (float64, item order)."""
    match = torch.empty(len(items), dtype=torch.float64)
    other = torch.empty(len(items), dtype=torch.float64)
    for batch, logprobs in iter_reply_logprobs(model, batches):
        last = batch.reply_mask.sum(1).to(logprobs.device)  # column after the whole reply
        answer = logprobs[torch.arange(len(batch.rows), device=logprobs.device), last].double().cpu()
        for row, index in enumerate(batch.rows):
            match[index] = answer[row, items[index].match]
            other[index] = answer[row, items[index].other]
    return match, other


def encode_items(ctx: Context, items: list[ABItem], cell: Cell) -> list[ReplyBatch]:
    """The items' prompts (as ``cell`` asks them) and replies, tokenised for `answer_logprobs`."""
    return encode_replies(
        ctx.tokenizer,
        [cell.prompt(item.prompt) for item in items],
        [item.reply for item in items],
        chat=ctx.cfg.eval.chat,
        batch_size=int(ctx.cfg.eval.batch_size),
    )


def ab_pmatch(ctx: Context, cell: Cell) -> Values:
    """P(matching answer) and the letter shares at this cell (see module docs)."""
    items = _items(ctx)
    batches = ctx.cache["ab_batches"] if cell.instruction is None else encode_items(ctx, items, cell)
    with cell.steering(ctx.model):
        match, other = answer_logprobs(ctx.model, items, batches)
    p_match, p_other = match.exp(), other.exp()
    share = p_match / (p_match + p_other)
    cell.cache["ab_diff"] = (match - other).numpy()
    values: Values = {"p_match": float(share.mean()), "ab_mass": float((p_match + p_other).mean())}
    totals: dict[str, list[float]] = {}
    matching: dict[str, list[float]] = {}
    for item, s in zip(items, share.tolist()):
        totals.setdefault(item.match_label, []).append(s)
        totals.setdefault(item.other_label, []).append(1.0 - s)
        matching.setdefault(item.match_label, []).append(s)
    for label in sorted(totals):
        values[f"share_{label}"] = sum(totals[label]) / len(totals[label])
    for label in sorted(matching):
        values[f"p_match_{label}"] = sum(matching[label]) / len(matching[label])
    return values


def steerability(ctx: Context, cells: list[Cell]) -> Values:
    """Mean per-item slope of the logit difference against coef, and the wrong-sign fraction."""
    coefs = np.array([c.coef for c in cells], dtype=np.float64)
    if len(set(coefs.tolist())) < 2:
        return {"slope": math.nan, "wrong_sign": math.nan}
    diffs = np.stack([c.cache["ab_diff"] for c in cells])  # [coefs, items]
    centred = coefs - coefs.mean()
    slopes = centred @ (diffs - diffs.mean(0)) / float(centred @ centred)
    return {"slope": float(slopes.mean()), "wrong_sign": float((slopes < 0).mean())}
