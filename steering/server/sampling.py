"""Choosing the next token of one row: greedy, or temperature and top-p sampling.

Each request owns its random generator (seeded from ``seed``, or from the OS
when none is given), so a seeded request draws the same tokens whatever else
shares its batch. ``temperature == 0`` is greedy: the arg-max of the raw
logits, exactly as ``model.generate(do_sample=False)`` picks it. Top-p follows
transformers' ``TopPLogitsWarper``: keep the smallest set of most likely
tokens whose probability reaches ``top_p`` (at least one token).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """``temperature`` in [0, 2] (0 = greedy), ``top_p`` in (0, 1], optional ``seed``."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Picks tokens for one request from ``[vocab]`` logits.

    Example:
        >>> sampler = Sampler(SamplingParams(temperature=0.7, seed=1), torch.device("cpu"))
        >>> token = sampler(torch.randn(50))
    """

    def __init__(self, params: SamplingParams, device: torch.device) -> None:
        self.params = params
        self._device = device
        self._generator: torch.Generator | None = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            self._generator = torch.Generator(device=device)
            # torch seeds are unsigned 64-bit; fold negative or huge seeds in.
            self._generator.manual_seed(seed % (1 << 64))

    def __call__(self, logits: Tensor) -> int:
        if self._generator is None:
            return int(torch.argmax(logits))
        # The logits of a model spread over devices come from its last one.
        scores = logits.to(self._device, torch.float32) / self.params.temperature
        if self.params.top_p < 1.0:
            scores = top_p_filter(scores, self.params.top_p)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator))


def top_p_filter(scores: Tensor, top_p: float) -> Tensor:
    """Set to ``-inf`` every score outside the top-``top_p`` nucleus (keeps >= 1 token)."""
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
