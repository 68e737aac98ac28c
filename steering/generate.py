"""Batched, optionally steered text generation with the chat template applied (by `vectors.text`)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, cast, overload

import torch
from torch import nn

from steering.hooks import ApplyTo, SteeringError, input_device, renamed
from steering.vectors.text import encode_prompt, pad_batch, pad_token_id

from .apply import Mode, VectorSpec, steer


def _check_not_empty(ids: list[list[int]], prompts: list[str], start: int) -> None:
    """Refuse a prompt that tokenizes to nothing (the model would have no token to continue)."""
    for offset, (row, prompt) in enumerate(zip(ids, prompts)):
        if not row:
            which = "the prompt" if start == 0 and len(prompts) == 1 else f"prompt {start + offset}"
            raise SteeringError(
                f"{which} ({prompt!r}) is empty after tokenization, with no chat template or BOS "
                "token to start from; give some text, or chat=True"
            )


@overload
def generate(model: nn.Module, tokenizer: Any, prompts: str, vector: VectorSpec | None = ..., coef: float = ..., **kwargs: Any) -> str: ...
@overload
def generate(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], vector: VectorSpec | None = ..., coef: float = ..., **kwargs: Any
) -> list[str]: ...


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: str | Sequence[str],
    vector: VectorSpec | None = None,
    coef: float = 1.0,
    *,
    max_new_tokens: int = 64,
    apply_to: ApplyTo = "all",
    mode: Mode = "add",
    chat: bool | None = None,
    batch_size: int = 16,
    check_model: bool = True,
    positions: ApplyTo | None = None,
    **gen_kwargs: Any,
) -> str | list[str]:
    """Generate completions, steered by ``coef * vector`` if a vector is given.

    Prompts are left-padded into batches (without changing the tokenizer's
    ``padding_side``); greedy decoding unless ``do_sample`` is passed. ``coef=0`` gives exactly the tokens of plain ``model.generate``.

    Args:
        model, tokenizer: a Hugging Face causal LM and its tokenizer.
        prompts: one prompt (returns a string) or a list (returns a list).
        vector: a `SteeringVector` or a list of ``(vector, coef)``; ``None`` = unsteered.
        coef: multiplier of ``vector``; default 1.0, the same as `steer`,
            `attach` and the server, so a vector given is a vector applied.
            Checked by `vectors.check_coef` (finite, bounded).
        max_new_tokens: tokens to generate per prompt.
        apply_to, mode: as in `steer` (``positions``: deprecated name of ``apply_to``).
        chat: apply the chat template (default: when the tokenizer has one).
        batch_size: prompts per ``generate`` call.
        check_model: as in `steer` (``False`` steers with a vector from another checkpoint).
        **gen_kwargs: passed to ``model.generate`` (e.g. ``do_sample=True``).

    Raises:
        SteeringError: a prompt that tokenizes to no tokens (e.g. ``""`` with
            ``chat=False`` and a tokenizer that adds no BOS), or a bad coef
            (`vectors.CoefError`), mode or apply_to (see `steer`).

    Example:
        >>> generate(model, tok, "Tell me about your day.", vec, coef=4.0)  # doctest: +SKIP
    """
    apply_to = renamed("apply_to", apply_to, positions, "all")
    single = isinstance(prompts, str)
    prompt_list: list[str] = [prompts] if isinstance(prompts, str) else list(prompts)
    gen_kwargs.setdefault("do_sample", False)
    if not gen_kwargs["do_sample"]:
        # Silence "temperature is set but do_sample=False" from the model's defaults.
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    pad_id = pad_token_id(tokenizer)
    device = input_device(model)
    outputs: list[str] = []
    context = steer(model, vector, coef, apply_to=apply_to, mode=mode, check_model=check_model) if vector is not None else nullcontext()
    with context:
        for start in range(0, len(prompt_list), batch_size):
            chunk = prompt_list[start : start + batch_size]
            ids = [encode_prompt(tokenizer, p, chat) for p in chunk]
            _check_not_empty(ids, chunk, start)
            # Left padding: generation continues from the right end of every row.
            batch = {k: v.to(device) for k, v in pad_batch(tokenizer, ids, "left").items()}
            out = cast(Any, model).generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad_id, **gen_kwargs)
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs[0] if single else outputs
