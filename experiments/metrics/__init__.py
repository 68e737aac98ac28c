"""Metrics of a steering run: small functions in a registry, picked by name in ``metric.use``.

=================  =====  ==================================================
name               kind   values
=================  =====  ==================================================
generation_score   cell   scorer value of generations (``sentiment``, ...);
                          per prompt ``delta_p10/median/p90``, ``wrong_way``
repetition         cell   ``distinct2`` of the generations, ``degenerate``
gen_ppl            cell   perplexity of the generations, unsteered model
neutral_ppl        cell   steered / unsteered perplexity of neutral text
kl                 cell   KL(unsteered || steered) per neutral-text token
ab_pmatch          cell   ``p_match``, ``ab_mass``, ``share_<X>``; per row
                          ``slope`` and ``wrong_sign``
probe_accuracy     layer  ``probe_accuracy``, ``probe_auroc``
capability         choice ``capability`` (two-choice MMLU accuracy),
                          ``capability_drop`` (unsteered minus steered)
=================  =====  ==================================================

Add one with `register_metric`.
"""

from __future__ import annotations

from omegaconf import DictConfig

import steering as st

from .ab import ab_pmatch, steerability
from .base import Cell, Context, Metric, Values, window_label
from .capability import capability
from .data import EvalData, load_eval_data, split_pairs
from .neutral import kl, neutral_ppl
from .probe import probe_accuracy
from .text import PER_EXAMPLE, gen_ppl, generation_score, repetition, scorer_value_name


def _const(*names: str):  # -> Callable[[DictConfig], list[str]]
    return lambda cfg: list(names)


METRICS: dict[str, Metric] = {
    "generation_score": Metric(
        generation_score, lambda cfg: [scorer_value_name(cfg.metric), *PER_EXAMPLE], frozenset({"prompts"}), doc="score of generated text"
    ),
    "repetition": Metric(repetition, _const("distinct2", "degenerate"), frozenset({"prompts"}), doc="distinct-2 of generations"),
    "gen_ppl": Metric(gen_ppl, _const("gen_ppl"), frozenset({"prompts"}), doc="perplexity of generations, unsteered model"),
    "neutral_ppl": Metric(neutral_ppl, _const("neutral_ppl"), frozenset({"neutral"}), doc="perplexity ratio on neutral text"),
    "kl": Metric(kl, _const("kl"), frozenset({"neutral"}), doc="KL(unsteered || steered) on neutral text"),
    "ab_pmatch": Metric(
        ab_pmatch,
        _const("p_match", "ab_mass"),
        frozenset({"items"}),
        row=steerability,
        row_values=("slope", "wrong_sign"),
        doc="CAA A/B P(matching answer)",
    ),
    "probe_accuracy": Metric(
        probe_accuracy, _const("probe_accuracy", "probe_auroc"), frozenset({"pairs"}), kind="layer", doc="held-out linear probe per layer"
    ),
    "capability": Metric(
        capability, _const("capability", "capability_drop"), frozenset({"capability"}), kind="choice", doc="two-choice MMLU accuracy"
    ),
}


def register_metric(name: str, metric: Metric) -> None:
    """Add a metric to the registry (the name must be new)."""
    if name in METRICS:
        raise st.SteeringError(f"metric {name!r} is already registered")
    METRICS[name] = metric


def choice_values(cfg: DictConfig) -> list[str]:
    """Values of the ``choice`` metrics in ``cfg.metric.use`` (measured only on the cells a choice picks)."""
    return [v for name in cfg.metric.use if METRICS[name].kind == "choice" for v in METRICS[name].values(cfg)]


def produced_values(cfg: DictConfig) -> list[str]:
    """Names of the values the metrics in ``cfg.metric.use`` report (per cell, row or layer)."""
    names: list[str] = []
    for metric_name in cfg.metric.use:
        metric = METRICS[metric_name]
        names += [*metric.values(cfg), *metric.row_values]
    return names


__all__ = [
    "METRICS",
    "Cell",
    "Context",
    "EvalData",
    "Metric",
    "Values",
    "choice_values",
    "load_eval_data",
    "produced_values",
    "register_metric",
    "split_pairs",
    "window_label",
]
