"""Side effects on neutral text: ``neutral_ppl`` and ``kl``.

With a chat template (``eval.chat``, default: when the tokenizer has one) the
neutral sentences are scored as the model's replies to one neutral user turn
(``eval.neutral_prompt``): that is how an instruct model meets text. A base
model without one reads them as plain documents from their start (after the
BOS token, `vectors.text.document_start`), as it read text in training; a
fixed user turn glued before them would be a strange prefix that inflates
their perplexity and its changes. Steering is applied as generation applies it
(same layers, coefficient and positions). A prompting cell scores the same
reply tokens after its instruction (chat: in the user turn; plain: on the
line before). The unsteered perplexity is computed once.
For KL each cell runs, batch by batch, the unsteered and the steered pass and
keeps only running sums: memory holds one batch's ``[rows, tokens, vocab]``
log-probabilities, never the whole set's (1.3 GB at a 256k vocabulary), at the
cost of one unsteered pass per batch per cell.

- ``neutral_ppl``: steered perplexity of the sentences divided by unsteered
  perplexity (token-weighted), so 1.0 means no change.
- ``kl``: mean over reply tokens of KL(unsteered || steered) of the
  next-token distributions, in nats. A token's KL below ``-KL_TOLERANCE``
  cannot come from rounding and raises; smaller negatives are rounding and
  count as 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from steering.vectors.text import has_chat_template

from .base import Cell, Context, Values
from .replies import ReplyBatch, encode_replies, iter_reply_logprobs, reply_logprobs, token_logprobs

# float32 log-softmax over a large vocabulary is off by ~1e-6 per entry; a
# token's KL that is more negative than this is a bug, not rounding.
KL_TOLERANCE = 1e-4


@dataclass
class _Baseline:
    batches: list[ReplyBatch]
    nll: float
    tokens: int


def kl_sum(reference: Tensor, steered: Tensor) -> float:
    """Sum over tokens of KL(reference || steered), both ``[tokens, vocab]`` log-probabilities.

    Raises:
        ArithmeticError: a token's KL is below ``-KL_TOLERANCE`` (KL is never negative).
    """
    per_token = (reference.exp() * (reference - steered)).sum(-1).double()
    if per_token.numel() and float(per_token.min()) < -KL_TOLERANCE:
        worst = int(per_token.argmin())
        raise ArithmeticError(
            f"KL of reply token {worst} is {float(per_token[worst]):.3g} nats, below -{KL_TOLERANCE}: "
            "the log-probabilities are not normalised distributions (a bug, not rounding)"
        )
    return float(per_token.clamp_min(0.0).sum())  # what is left below 0 is float32 rounding


def uses_chat(ctx: Context) -> bool:
    """Whether the run formats prompts with the chat template (``eval.chat``, default: when there is one)."""
    chat = ctx.cfg.eval.chat
    return has_chat_template(ctx.tokenizer) if chat is None else bool(chat)


def neutral_prompt(ctx: Context, instruction: str | None = None) -> str | None:
    """The prompt the neutral sentences follow: a user turn with a chat template, else none (or the instruction's line)."""
    if uses_chat(ctx):
        prompt = str(ctx.cfg.eval.neutral_prompt)
        return prompt if instruction is None else f"{instruction}\n\n{prompt}"
    # A trailing newline: the sentences keep the tokens they have at a document's start.
    return None if instruction is None else f"{instruction}\n"


def _encode(ctx: Context, instruction: str | None) -> list[ReplyBatch]:
    sentences = ctx.data.neutral
    return encode_replies(
        ctx.tokenizer,
        [neutral_prompt(ctx, instruction)] * len(sentences),
        sentences,
        chat=uses_chat(ctx),
        batch_size=int(ctx.cfg.eval.batch_size),
    )


def _baseline(ctx: Context) -> _Baseline:
    cached = ctx.cache.get("neutral")
    if cached is not None:
        return cached
    batches = _encode(ctx, None)
    nll, tokens = 0.0, 0
    for batch, logprobs in iter_reply_logprobs(ctx.model, batches):
        picked, mask = token_logprobs(batch, logprobs)
        nll -= float(picked[mask].double().sum())
        tokens += int(mask.sum())
    if tokens == 0:
        raise ValueError("the neutral sentences have no tokens to score")
    ctx.cache["neutral"] = base = _Baseline(batches, nll, tokens)
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
        asked = base.batches if cell.instruction is None else _encode(ctx, cell.instruction)
        for batch, cell_batch in zip(base.batches, asked, strict=True):
            if batch.rows != cell_batch.rows or not batch.reply_ids.equal(cell_batch.reply_ids):
                raise ValueError("the instruction changed how the neutral sentences tokenise; they must stay the same tokens")
            plain = reply_logprobs(ctx.model, batch)
            with cell.steering(ctx.model):
                logprobs = reply_logprobs(ctx.model, cell_batch)
            picked, mask = token_logprobs(batch, logprobs)
            nll -= float(picked[mask].double().sum())
            kl += kl_sum(plain[:, :-1][mask], logprobs[:, :-1][mask])
            del plain, logprobs  # one batch at a time
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
    return {"kl": total / base.tokens}
