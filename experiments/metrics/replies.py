"""Next-token log-probabilities of replies that follow prompts, in batches.

A reply is scored the way it would be generated: the (templated) prompt runs
first and fills the KV cache, then the reply runs on that cache. Steering with
``apply_to`` therefore means the same here as in ``steering.generate``: with
``apply_to="generated"`` the prompt pass is left alone and only the reply is
steered. When every row has the same prompt (the neutral texts) the prompt
runs once and its cache is repeated over the rows.

Prompts are left-padded and replies right-padded; explicit ``position_ids``
make every row's positions those of its unpadded text, so a batched score
equals scoring each text alone.

Axis names: ``batch`` texts, ``prompt``/``reply`` tokens, ``vocab``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from steering.hooks import cache_kwargs, input_device, output_cache, pad_ids, position_ids
from steering.vectors.text import document_start, format_prompt, pad_token_id, separator, tokenize


@dataclass(frozen=True)
class ReplyBatch:
    """Token ids of some (prompt, reply) rows.

    Attributes:
        rows: indices of these rows in the caller's lists.
        prompt_ids, prompt_mask: ``[batch, prompt]`` left-padded (one row when ``shared``).
        reply_ids, reply_mask: ``[batch, reply]`` right-padded (``reply`` may be 0).
        shared: every row has the same prompt.
    """

    rows: list[int]
    prompt_ids: Tensor
    prompt_mask: Tensor
    reply_ids: Tensor
    reply_mask: Tensor
    shared: bool


def encode_replies(
    tokenizer: Any,
    prompts: Sequence[str | None],
    replies: Sequence[str],
    *,
    chat: bool | None = None,
    batch_size: int = 16,
) -> list[ReplyBatch]:
    """Tokenise ``(prompt, reply)`` rows into batches of similar length.

    Prompts and replies are formatted by `vectors.text`, as generation and
    extraction format them (chat template when there is one; without one a
    space joins prompt and reply). A ``None`` prompt scores the reply as a
    plain text from its start (`vectors.text.document_start`), no template.

    Raises:
        ValueError: lengths differ, or a prompt has no tokens.
    """
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    pad_id = pad_token_id(tokenizer)
    encoded_prompts: dict[str, list[int]] = {}
    rows: list[tuple[list[int], list[int], str]] = []
    for prompt, reply in zip(prompts, replies):
        if prompt is None:
            text, special = "", True
            encoded_prompts.setdefault(text, document_start(tokenizer))
        else:
            text, special = format_prompt(tokenizer, prompt, chat)
        if text not in encoded_prompts:
            encoded_prompts[text] = tokenize(tokenizer, text, special)
            if not encoded_prompts[text]:
                raise ValueError(f"prompt {prompt!r} has no tokens; give a non-empty prompt")
        # format_prompt adds no special tokens exactly when it applied the template.
        reply = separator(text, not special, reply) + reply
        rows.append((encoded_prompts[text], tokenize(tokenizer, reply, special=False) if reply else [], text))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        shared = len({rows[i][2] for i in chunk}) == 1
        prompt_seqs = [rows[chunk[0]][0]] if shared else [rows[i][0] for i in chunk]
        prompt_ids, prompt_mask = pad_ids(prompt_seqs, pad_id, "left")
        reply_ids, reply_mask = pad_ids([rows[i][1] for i in chunk], pad_id, "right")
        batches.append(ReplyBatch(chunk, prompt_ids, prompt_mask, reply_ids, reply_mask, shared))
    return batches


@torch.no_grad()
def reply_logprobs(model: nn.Module, batch: ReplyBatch) -> Tensor:
    """Float32 log-probabilities ``[batch, reply + 1, vocab]`` of the next token.

    Column ``k`` is the prediction after ``k`` reply tokens: column 0 follows
    the prompt, column ``k`` predicts reply token ``k`` (0-based) for ``k <
    reply``. Columns past a row's reply length are padding.
    """
    device = input_device(model)
    prompt_ids = batch.prompt_ids.to(device)
    prompt_mask = batch.prompt_mask.to(device)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask), use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1:].float()
    rows = batch.reply_ids.shape[0]
    if batch.shared and rows > 1:
        output_cache(out).batch_repeat_interleave(rows)
        first = first.expand(rows, -1, -1)
        prompt_mask = prompt_mask.expand(rows, -1)
    if batch.reply_ids.shape[1] == 0:
        return torch.log_softmax(first, dim=-1)
    reply_ids = batch.reply_ids.to(device)
    reply_mask = batch.reply_mask.to(device)
    start = prompt_mask.sum(1, keepdim=True)
    reply_positions = start + torch.arange(reply_ids.shape[1], device=device)[None, :]
    out = model(
        input_ids=reply_ids,
        attention_mask=torch.cat([prompt_mask, reply_mask], dim=1),
        position_ids=reply_positions,
        **cache_kwargs(model, output_cache(out)),
        use_cache=True,
    )
    return torch.log_softmax(torch.cat([first, out.logits.float()], dim=1), dim=-1)


def iter_reply_logprobs(model: nn.Module, batches: Sequence[ReplyBatch]) -> Iterator[tuple[ReplyBatch, Tensor]]:
    """``(batch, reply_logprobs(model, batch))`` for each batch."""
    for batch in batches:
        yield batch, reply_logprobs(model, batch)


def token_logprobs(batch: ReplyBatch, logprobs: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probabilities of the reply tokens themselves, and their mask (both ``[batch, reply]``)."""
    reply_ids = batch.reply_ids.to(logprobs.device)
    picked = logprobs[:, :-1].gather(2, reply_ids[..., None])[..., 0]
    return picked, batch.reply_mask.to(logprobs.device).bool()
