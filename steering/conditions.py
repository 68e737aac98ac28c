"""Conditional steering (CAST, Lee et al. 2025): steer a sequence only when its prompt meets a condition.

A `Condition` is a condition direction at one layer and a threshold. A
prompt's score is the cosine between its mean hidden state (over its non-pad
tokens, chat template included when generation uses one) at that layer and the
direction; the condition holds when the score is above the threshold (or
below it, ``above=False``). Several conditions combine with ``"and"`` or
``"or"``. `steer`, `attach` and `generate` take ``condition=``; the gate is
read once per sequence from its prompt (`hooks.gate`), and rows where it is off
run exactly as unsteered.

`find_condition` picks the layer and threshold from positive / negative
prompts, as IBM activation-steering's ``find_best_condition_point`` does: a
condition direction of the prompts' mean hidden states per layer (a method of
`CONDITION_METHODS`: ``probe``, the default, or ``mean_diff``), the threshold
and side with the best balanced accuracy on the fitting prompts (or, with
``max_fpr``, the most positives turned on while at most that share of
negatives is), and the accuracy on held-out ones reported beside it.

=========  ==================================================================
probe      logistic-regression direction (`vectors.probe_direction`): it
           weighs the hidden dimensions by how well they separate, so a large
           component the two sides share does not swamp the cosine
mean_diff  mean(positives) - mean(negatives) (IBM's choice)
=========  ==================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from steering.hooks import SteeringError, capture, input_device, num_layers, position_ids, read_rows, resolve_layers, run_until_stopped
from steering.hooks.gate import Decide
from steering.vectors import SteeringVector, encode_prompt, probe_direction
from steering.vectors.model_info import hidden_size, model_fingerprint, model_name
from steering.vectors.text import pad_batch

Combine = Literal["and", "or"]
COMBINES: tuple[str, ...] = get_args(Combine)
ConditionMethod = Literal["probe", "mean_diff"]


def _mean_diff(positives: Tensor, negatives: Tensor) -> Tensor:
    return positives.double().mean(0) - negatives.double().mean(0)


CONDITION_METHODS: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = MappingProxyType({"probe": probe_direction, "mean_diff": _mean_diff})
"""Condition directions by name: ``fn(positives [n, hidden], negatives [m, hidden]) -> direction`` (``n``, ``m`` may differ)."""


@dataclass(frozen=True)
class Condition:
    """Steer only prompts whose score at ``layer`` is above ``threshold`` (below, with ``above=False``).

    Attributes:
        vector: holds the condition direction at ``layer`` (other layers are ignored).
        layer: the condition layer (an index the vector holds; negative counts from the end).
        threshold: cosine threshold, in ``[-1, 1]``.
        above: the condition holds for scores ``> threshold`` (``True``) or ``< threshold``.

    Example:
        >>> cond = Condition(harmful_vec, layer=6, threshold=0.05)  # doctest: +SKIP
        >>> with steer(model, refusal_vec, coef=4.0, condition=cond):  # doctest: +SKIP
        ...     out = model.generate(**inputs)
    """

    vector: SteeringVector
    layer: int
    threshold: float
    above: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.vector, SteeringVector):
            raise SteeringError(f"a condition needs a SteeringVector, got {type(self.vector).__name__}")
        if not -1.0 <= float(self.threshold) <= 1.0:
            raise SteeringError(f"condition threshold {self.threshold!r} is a cosine and must lie in [-1, 1]")
        layer = self.vector.select([self.layer]).layers[0]  # checks the layer is in the vector
        object.__setattr__(self, "layer", layer)

    def __str__(self) -> str:
        return f"[layer {self.layer} cosine {'>' if self.above else '<'} {self.threshold:.3g}]"

    @property
    def direction(self) -> Tensor:
        """The condition direction at ``layer`` (float32 ``[hidden_size]``)."""
        return self.vector.directions[self.layer]

    def holds(self, means: Tensor) -> Tensor:
        """Bool ``[batch]``: whether the condition holds for mean hidden states ``[batch, hidden]``."""
        scores = cosine_scores(means, self.direction)
        return scores > self.threshold if self.above else scores < self.threshold


def cosine_scores(means: Tensor, direction: Tensor) -> Tensor:
    """Cosine of each row of ``means`` ``[n, hidden]`` with ``direction`` (float64 ``[n]``)."""
    means = means.double()
    direction = direction.to(means.device, torch.float64)
    return (means @ direction) / (means.norm(dim=-1) * direction.norm()).clamp_min(1e-12)


def as_conditions(condition: Condition | Sequence[Condition]) -> list[Condition]:
    """One condition or a list of them, checked."""
    conditions = [condition] if isinstance(condition, Condition) else list(condition)
    if not conditions or not all(isinstance(c, Condition) for c in conditions):
        raise SteeringError("condition= takes a Condition or a non-empty list of Conditions")
    return conditions


def decision(conditions: Sequence[Condition], combine: Combine = "and") -> tuple[list[int], Decide]:
    """The condition layers and the gate's ``decide`` function for `hooks.gate.PromptGate`."""
    if combine not in COMBINES:
        raise SteeringError(f"unknown combine {combine!r}; choose 'and' or 'or'")

    def decide(means: dict[int, Tensor]) -> Tensor:
        each = torch.stack([c.holds(means[c.layer]) for c in conditions])
        return each.all(0) if combine == "and" else each.any(0)

    return sorted({c.layer for c in conditions}), decide


@torch.no_grad()
def prompt_means(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], layers: Iterable[int], *, chat: bool | None = None, batch_size: int = 16
) -> dict[int, Tensor]:
    """Mean hidden state (float64 ``[n, hidden]``) of each prompt per layer, as the gate reads it.

    Prompts are encoded as `steering.generate` encodes them (chat template when
    the tokenizer has one, unless ``chat=False``).
    """
    indices = resolve_layers(model, layers)
    device = input_device(model)
    out: dict[int, list[Tensor]] = {i: [] for i in indices}
    how: dict[str, Tensor] = {}

    def keep(layer: int, hidden: Tensor) -> None:
        out[layer].append(read_rows(hidden.float(), how["mask"]).to("cpu", torch.float64))

    with capture(model, indices, keep, stop_after_last=True):
        for start in range(0, len(prompts), batch_size):
            ids = [encode_prompt(tokenizer, p, chat) for p in prompts[start : start + batch_size]]
            batch = pad_batch(tokenizer, ids, "left")
            # Positions from the mask: a left-padded row is read as the gate reads it unpadded.
            batch["position_ids"] = position_ids(batch["attention_mask"])
            batch = {k: v.to(device) for k, v in batch.items()}
            how["mask"] = batch["attention_mask"].bool()  # the mean over each row's tokens, as the gate reads it
            run_until_stopped(model, **batch, use_cache=False)
    return {i: torch.cat(rows) for i, rows in out.items()}


@torch.no_grad()
def prompt_gate(conditions: Sequence[Condition], combine: Combine = "and") -> Callable[[nn.Module, Sequence[int]], bool]:
    """``gate(model, prompt_ids) -> bool`` for one unpadded prompt: what the server reads at a request's prefill.

    The same decision as the hook gate of `steer` (mean hidden state over the
    prompt's tokens at each condition layer, `decision`).
    """
    layers, decide = decision(conditions, combine)

    def gate(model: nn.Module, prompt_ids: Sequence[int]) -> bool:
        device = input_device(model)
        means: dict[int, Tensor] = {}
        with capture(model, layers, lambda i, h: means.__setitem__(i, h.float().mean(1)), stop_after_last=True):
            run_until_stopped(model, input_ids=torch.tensor([list(prompt_ids)], device=device), use_cache=False)
        return bool(decide(means)[0])

    return gate


@dataclass(frozen=True)
class ConditionSearch:
    """What `find_condition` found: the chosen condition and one row per layer."""

    condition: Condition
    rows: list[dict[str, float]]


def best_threshold(pos: np.ndarray, neg: np.ndarray, *, max_fpr: float | None = None) -> tuple[float, bool, float]:
    """Threshold, side (``above``) and balanced accuracy that best split ``pos`` from ``neg`` scores.

    Without ``max_fpr``: the best balanced accuracy. With it: the highest share
    of ``pos`` on among the cuts that turn on at most ``max_fpr`` of ``neg``
    (then the fewest ``neg`` on), for a gate where a false positive costs more
    than a miss. Of equally good cuts (a gap between the sides) the middle one
    is taken, leaving new prompts room on both sides.

    Example:
        >>> best_threshold(np.array([0.5, 0.7]), np.array([0.1, 0.3]))
        (0.4, True, 1.0)
    """
    if max_fpr is not None and not 0.0 <= max_fpr < 1.0:
        raise SteeringError(f"max_fpr must be a fraction in [0, 1), got {max_fpr!r}")
    values = np.unique(np.r_[pos, neg])
    cuts = np.r_[values[0] - 1e-6, (values[1:] + values[:-1]) / 2, values[-1] + 1e-6]
    best: tuple[tuple[float, float], float, bool, float] | None = None
    for above in (True, False):
        # share of each side on at every cut: strictly above (or below) it
        on_pos, on_neg = (_share_on(np.sort(x), cuts, above) for x in (pos, neg))
        if max_fpr is None:
            ok = np.ones(len(cuts), dtype=bool)
            key = (0.5 * (on_pos + 1 - on_neg), np.zeros(len(cuts)))
        else:
            ok = on_neg <= max_fpr + 1e-12
            key = (on_pos, -on_neg)
        if not ok.any():
            continue
        first = key[0][ok].max()
        second = key[1][ok & (key[0] == first)].max()
        ties = np.flatnonzero(ok & (key[0] == first) & (key[1] == second))
        at = ties[len(ties) // 2]
        if best is None or (float(first), float(second)) > best[0]:
            best = ((float(first), float(second)), float(cuts[at]), above, float(0.5 * (on_pos[at] + 1 - on_neg[at])))
    assert best is not None  # the cut above every score turns no negative on
    return best[1], best[2], best[3]


def _share_on(sorted_scores: np.ndarray, cuts: np.ndarray, above: bool) -> np.ndarray:
    n = len(sorted_scores)
    if above:
        return 1.0 - np.searchsorted(sorted_scores, cuts, side="right") / n
    return np.searchsorted(sorted_scores, cuts, side="left") / n


def find_condition(
    model: nn.Module,
    tokenizer: Any,
    positives: Sequence[str],
    negatives: Sequence[str],
    layers: Iterable[int],
    *,
    held_out: float = 0.25,
    chat: bool | None = None,
    seed: int = 0,
    method: ConditionMethod = "probe",
    max_fpr: float | None = None,
) -> ConditionSearch:
    """Choose a condition layer and threshold from prompts where the condition holds (``positives``) and not.

    Per layer: the direction is ``method`` (`CONDITION_METHODS`) on the fitting
    prompts' mean hidden states, the threshold and side are `best_threshold`'s
    on their scores (balanced accuracy, or the most positives within
    ``max_fpr``), and the held-out fraction measures it. The layer with the
    best held-out balanced accuracy (ties: the earlier layer) is chosen.

    Args:
        method: ``"probe"`` (logistic regression; the default) or ``"mean_diff"``.
        max_fpr: optional bound on the share of fitting negatives the gate turns on.

    Returns:
        A `ConditionSearch`; its rows hold ``layer``, ``threshold``, ``above``,
        ``fit_accuracy``, ``held_out_accuracy``, ``held_out_pos_rate`` (gate on
        where the condition holds) and ``held_out_neg_rate`` (gate on where it does not).
    """
    if len(positives) < 2 or len(negatives) < 2:
        raise SteeringError("find_condition needs at least 2 positive and 2 negative prompts")
    if not 0.0 < held_out < 1.0:
        raise SteeringError(f"held_out must be a fraction in (0, 1), got {held_out!r}")
    if method not in CONDITION_METHODS:
        raise SteeringError(f"unknown condition method {method!r}; choose one of {', '.join(CONDITION_METHODS)}")
    if max_fpr is not None and not 0.0 <= max_fpr < 1.0:
        raise SteeringError(f"max_fpr must be a fraction in [0, 1), got {max_fpr!r}")
    rng = np.random.default_rng(seed)
    split = {}
    for name, items in (("pos", list(positives)), ("neg", list(negatives))):
        order = rng.permutation(len(items))
        n_test = max(1, round(held_out * len(items)))
        split[name] = (order[n_test:], order[:n_test])
    indices = resolve_layers(model, layers)
    means_pos = prompt_means(model, tokenizer, list(positives), indices, chat=chat)
    means_neg = prompt_means(model, tokenizer, list(negatives), indices, chat=chat)
    rows: list[dict[str, float]] = []
    directions: dict[int, Tensor] = {}
    for layer in indices:
        (pos_fit, pos_test), (neg_fit, neg_test) = split["pos"], split["neg"]
        pos, neg = means_pos[layer], means_neg[layer]
        direction = CONDITION_METHODS[method](pos[pos_fit], neg[neg_fit]).float()
        directions[layer] = direction
        score_pos, score_neg = cosine_scores(pos, direction).numpy(), cosine_scores(neg, direction).numpy()
        cut, above, fit_acc = best_threshold(score_pos[pos_fit], score_neg[neg_fit], max_fpr=max_fpr)
        on_pos = (score_pos[pos_test] > cut) if above else (score_pos[pos_test] < cut)
        on_neg = (score_neg[neg_test] > cut) if above else (score_neg[neg_test] < cut)
        rows.append(
            dict(
                layer=layer,
                threshold=cut,
                above=float(above),
                fit_accuracy=fit_acc,
                held_out_accuracy=float(0.5 * (on_pos.mean() + 1 - on_neg.mean())),
                held_out_pos_rate=float(on_pos.mean()),
                held_out_neg_rate=float(on_neg.mean()),
            )
        )
    best = max(rows, key=lambda r: (r["held_out_accuracy"], r["fit_accuracy"], -r["layer"]))
    vector = SteeringVector(
        directions,
        hidden_size=hidden_size(model),
        num_layers=num_layers(model),
        model=model_name(model),
        model_fingerprint=model_fingerprint(model),
        method=f"condition_{method}",
        read="prompt_mean",
        n_pairs=min(len(positives), len(negatives)),
    )
    condition = Condition(vector, int(best["layer"]), float(best["threshold"]), bool(best["above"]))
    return ConditionSearch(condition, rows)
