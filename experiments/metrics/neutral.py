"""Side effects on neutral text: ``neutral_ppl`` and ``kl``.

The neutral sentences are scored as the model's replies to one neutral user
prompt (``eval.neutral_prompt``), steered as generation is steered (same
layers, coefficient and positions). The unsteered pass runs once and its
next-token distributions at every reply token are kept; each cell then costs
one steered pass.

- ``neutral_ppl``: steered perplexity of the sentences divided by unsteered
  perplexity (token-weighted), so 1.0 means no change.
- ``kl``: mean over reply tokens of KL(unsteered || steered) of the
  next-token distributions, in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Cell, Context, Values
from .replies import ReplyBatch, encode_replies, iter_reply_logprobs, token_logprobs


@dataclass
class _Baseline:
    batches: list[ReplyBatch]
    logprobs: list[Tensor]  # per batch: [tokens, vocab] at the reply tokens, unsteered
    nll: float
    tokens: int


def _baseline(ctx: Context) -> _Baseline:
    cached = ctx.cache.get("neutral")
    if cached is not None:
        return cached
    sentences = ctx.data.neutral
    batches = encode_replies(
        ctx.tokenizer,
        [str(ctx.cfg.eval.neutral_prompt)] * len(sentences),
        sentences,
        chat=ctx.cfg.eval.chat,
        batch_size=int(ctx.cfg.eval.batch_size),
    )
    kept, nll, tokens = [], 0.0, 0
    for batch, logprobs in iter_reply_logprobs(ctx.model, batches):
        picked, mask = token_logprobs(batch, logprobs)
        kept.append(logprobs[:, :-1][mask].cpu())
        nll -= float(picked[mask].double().sum())
        tokens += int(mask.sum())
    if tokens == 0:
        raise ValueError("the neutral sentences have no tokens to score")
    ctx.cache["neutral"] = base = _Baseline(batches, kept, nll, tokens)
    return base


def _steered(ctx: Context, cell: Cell) -> tuple[float, float]:
    """``(nll_sum, kl_sum)`` of the steered pass (cached per cell)."""
    if "neutral" in cell.cache:
        return cell.cache["neutral"]
    base = _baseline(ctx)
    if cell.is_baseline:
        result = (base.nll, 0.0)
    else:
        nll = kl = 0.0
        with cell.steering(ctx.model):
            for (batch, logprobs), reference in zip(iter_reply_logprobs(ctx.model, base.batches), base.logprobs):
                picked, mask = token_logprobs(batch, logprobs)
                nll -= float(picked[mask].double().sum())
                steered = logprobs[:, :-1][mask]
                reference = reference.to(steered.device)
                kl += float((reference.exp() * (reference - steered)).sum(-1).double().sum())
        result = (nll, kl)
    cell.cache["neutral"] = result
    return result


def neutral_ppl(ctx: Context, cell: Cell) -> Values:
    """Steered / unsteered perplexity of the neutral sentences."""
    base = _baseline(ctx)
    nll, _ = _steered(ctx, cell)
    return {"neutral_ppl": math.exp((nll - base.nll) / base.tokens)}


def kl(ctx: Context, cell: Cell) -> Values:
    """Mean per-token KL(unsteered || steered) on the neutral sentences, in nats."""
    base = _baseline(ctx)
    _, total = _steered(ctx, cell)
    return {"kl": max(total / base.tokens, 0.0)}


@torch.no_grad()
def warm(ctx: Context) -> None:
    """Run the unsteered pass now (so it is not charged to the first cell)."""
    _baseline(ctx)
