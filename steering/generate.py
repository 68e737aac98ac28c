"""Batched, optionally steered text generation with the chat template applied."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, overload

import torch
from torch import Tensor, nn

from hooks import ApplyTo, SteeringError, renamed

from .apply import Mode, VectorSpec, steer


def left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` (``[batch, seq]``) with every row padded on the left.

    Done here rather than by ``tokenizer.pad`` so that the tokenizer's
    ``padding_side`` is never touched: a tokenizer shared between threads
    (a server, say) must not change under another caller.
    """
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, row in enumerate(ids):
        if row:
            input_ids[r, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            mask[r, width - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def format_prompt(tokenizer: Any, prompt: str, chat: bool | None = None) -> tuple[str, bool]:
    """Return ``(text, add_special_tokens)`` for a plain prompt.

    With ``chat`` (default: when the tokenizer has a chat template) the prompt
    becomes a templated user turn with the generation prompt; the template
    already holds any BOS, so no special tokens are added again.
    """
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if use_chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return text, False
    return prompt, True


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
def generate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], vector: VectorSpec | None = ..., coef: float = ..., **kwargs: Any) -> list[str]: ...


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
    prompt_list = [prompts] if single else list(prompts)
    gen_kwargs.setdefault("do_sample", False)
    if not gen_kwargs["do_sample"]:
        # Silence "temperature is set but do_sample=False" from the model's defaults.
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    outputs: list[str] = []
    context = steer(model, vector, coef, apply_to=apply_to, mode=mode, check_model=check_model) if vector is not None else nullcontext()
    with context:
        for start in range(0, len(prompt_list), batch_size):
            chunk = prompt_list[start : start + batch_size]
            formatted = [format_prompt(tokenizer, p, chat) for p in chunk]
            ids = [tokenizer(t, add_special_tokens=s)["input_ids"] for t, s in formatted]
            _check_not_empty(ids, chunk, start)
            # Left padding: generation continues from the right end of every row.
            batch = {k: v.to(device) for k, v in left_pad(ids, pad_id).items()}
            out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad_id, **gen_kwargs)
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs[0] if single else outputs
