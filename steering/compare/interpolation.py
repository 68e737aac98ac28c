"""Interpolate between two behaviours: steer with ``(1 - t) a + t b`` and score the outputs.

For each ``t`` on a grid the model generates from the same prompts, steered by
``coef * ((1 - t) a + t b)`` (a layer only one vector has counts as zero in
the other, as in vector arithmetic), and every scorer turns the generations
into one number per text. A smooth, monotone curve means the two directions
mix linearly; a jump or a dip means they interfere.

A scorer is a `steering.scoring.Scorer` (texts -> a number per text). Besides
those of `steering.scoring` (``sentiment_scorer``: VADER compound polarity in
``[-1, 1]``, needs ``vaderSentiment``), one is built in here:

- `projection_scorer`: the unsteered model reads each generated text and the
  mean activation at a layer is projected onto a vector's direction; the
  model's own measure of how much of that behaviour the text shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from steering.hooks import ApplyTo, SteeringError, renamed
from steering.vectors import SteeringVector
from steering.vectors.text import tokenize

from ..generate import generate
from ..scoring import Scorer
from .activations import text_features
from .projection import project
from .similarity import check_same_space


class SeededSampler:
    """A logits processor that samples with its own ``torch.Generator`` (the global RNG is never reseeded).

    It draws each row's token from the (already warped) scores and leaves that
    token the only finite score, so transformers' own sampling step can only
    pick it. ``model.generate`` takes no generator; this is how a seed stays
    local to one call. Used by `interpolate` when sampling.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self._generator is None or self._generator.device != scores.device:
            self._generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        picked = torch.multinomial(scores.float().softmax(-1), 1, generator=self._generator)
        return torch.full_like(scores, float("-inf")).scatter_(1, picked, 0.0)


def projection_scorer(model: nn.Module, tokenizer: Any, vector: SteeringVector, layer: int, *, batch_size: int = 16) -> Scorer:
    """Score texts by the projection of their mean activation at ``layer`` onto ``vector``.

    Texts that tokenise to nothing score NaN (left out of means).

    Example:
        >>> score = projection_scorer(model, tok, sentiment_vec, layer=12)  # doctest: +SKIP
        >>> score(["What a lovely day!", "This is awful."])  # doctest: +SKIP
        array([ 3.1, -2.4])
    """
    if layer not in vector.directions:
        raise SteeringError(f"projection scorer: the vector has no layer {layer} (it has {vector.layers})")
    direction = vector.directions[layer].numpy()

    def score(texts: list[str]) -> list[float]:
        out = np.full(len(texts), np.nan)
        keep = [k for k, t in enumerate(texts) if tokenize(tokenizer, t)]
        if keep:
            feats = text_features(model, tokenizer, [texts[k] for k in keep], [layer], read="mean", batch_size=batch_size)
            out[keep] = project(feats[layer], direction)
        return out.tolist()  # NaN for a text with no tokens

    return score


def interpolate(
    model: nn.Module,
    tokenizer: Any,
    a: SteeringVector,
    b: SteeringVector,
    prompts: Sequence[str],
    scorers: Mapping[str, Scorer],
    *,
    ts: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    coef: float = 4.0,
    layers: Sequence[int] | None = None,
    max_new_tokens: int = 32,
    apply_to: ApplyTo = "all",
    seed: int = 0,
    positions: ApplyTo | None = None,
    **gen_kwargs: Any,
) -> dict[str, Any]:
    """Generate with ``coef * ((1 - t) a + t b)`` for each ``t`` and score the texts.

    Args:
        model, tokenizer: the model both vectors were made on.
        a, b: the two endpoint vectors (same model).
        prompts: prompts to complete at every ``t``.
        scorers: name -> scorer (see module docs).
        ts: interpolation weights (0 = pure ``a``, 1 = pure ``b``).
        coef: steering strength applied to the mixed vector.
        layers: steer only at these layers (default: every layer of either
            vector; vectors made at every layer usually want one or a few).
        max_new_tokens, apply_to, **gen_kwargs: passed to `steering.generate` (greedy by default);
            ``positions`` is the deprecated name of ``apply_to``.
        seed: seed of a local generator, fresh for each ``t`` (matters only
            with ``do_sample=True``; the global torch RNG is not reseeded).

    Returns:
        ``{"ts": [...], "coef": c, "layers": [...], "scores": {scorer: [mean per t]}, "stds":
        {scorer: [std per t]}, "per_text": {scorer: [[score per prompt] per t]},
        "texts": [[text per prompt] per t]}``.

    Example:
        >>> res = interpolate(model, tok, happy, formal, prompts, {"sentiment": sentiment_scorer()})  # doctest: +SKIP
    """
    from transformers import LogitsProcessorList

    apply_to = renamed("apply_to", apply_to, positions, "all")
    check_same_space({"a": a, "b": b})
    if layers is not None:
        wanted = sorted(set(layers))
        missing = [i for i in wanted if i not in a.directions and i not in b.directions]
        if not wanted or missing:
            raise SteeringError(f"interpolation layers {missing or wanted} are in neither vector (a has {a.layers}, b has {b.layers})")
    if not prompts:
        raise SteeringError("interpolation needs at least one prompt")
    if not scorers:
        raise SteeringError("interpolation needs at least one scorer")
    grid = [float(t) for t in ts]
    result: dict[str, Any] = {
        "ts": grid,
        "coef": float(coef),
        "layers": sorted(set(a.layers) | set(b.layers)) if layers is None else wanted,
        "scores": {},
        "stds": {},
        "per_text": {},
        "texts": [],
    }
    for name in scorers:
        result["scores"][name], result["stds"][name], result["per_text"][name] = [], [], []
    for t in grid:
        mixed = (1.0 - t) * a + t * b
        if layers is not None:
            mixed = mixed.select(wanted)
        kwargs = dict(gen_kwargs)
        if kwargs.get("do_sample"):
            kwargs["logits_processor"] = LogitsProcessorList([*kwargs.get("logits_processor", []), SeededSampler(seed)])
        texts = generate(model, tokenizer, list(prompts), mixed, coef, max_new_tokens=max_new_tokens, apply_to=apply_to, **kwargs)
        result["texts"].append(texts)
        for name, scorer in scorers.items():
            values = np.asarray(scorer(texts), dtype=np.float64)
            if values.shape != (len(texts),):
                raise SteeringError(f"scorer {name!r} returned shape {values.shape} for {len(texts)} texts")
            finite = values[np.isfinite(values)]
            result["per_text"][name].append(values.tolist())
            result["scores"][name].append(float(finite.mean()) if finite.size else float("nan"))
            result["stds"][name].append(float(finite.std()) if finite.size else float("nan"))
    return result
