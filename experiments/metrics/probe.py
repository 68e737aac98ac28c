"""``probe_accuracy``: how linearly readable the behaviour is at each layer.

The contrastive pairs are split (by pair, seeded, ``eval.test_fraction``
held out) so a pair's two texts never sit on both sides. Activations at the
read position (``method.read``) of every requested layer come from one
pass per side; per layer a logistic-regression probe (standardised features)
is fitted on the training texts and scored on the held-out ones:
``probe_accuracy`` and ``probe_auroc``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from steering.compare.projection import auroc
from steering.vectors import LayerStats, collect_stats, fit_logistic

from .base import Context, Values
from .data import split_pairs


def _xy(stats: LayerStats) -> tuple[np.ndarray, np.ndarray]:
    pos = torch.cat(stats.pos_samples).double().numpy()
    neg = torch.cat(stats.neg_samples).double().numpy()
    return np.concatenate([pos, neg]), np.r_[np.ones(len(pos)), np.zeros(len(neg))]


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int = 0) -> Values:
    """Fit the standardised logistic probe (`vectors.fit_logistic`); return held-out accuracy and AUROC."""
    scores = fit_logistic(x_train, y_train, seed=seed).decision_function(x_test)
    accuracy = float(((scores > 0) == (y_test > 0.5)).mean())
    return {"probe_accuracy": accuracy, "probe_auroc": auroc(scores, y_test)}


def probe_accuracy(ctx: Context, layers: list[int]) -> dict[int, Values]:
    """Held-out probe accuracy and AUROC at each of ``layers``."""
    cfg = ctx.cfg
    train, test = split_pairs(ctx.data.pairs, float(cfg.eval.test_fraction), ctx.seed)
    kwargs: dict[str, Any] = dict(
        read=str(cfg.method.read), site=str(cfg.sweep.site), batch_size=int(cfg.method.batch_size), needs_samples=True
    )
    train_stats = collect_stats(ctx.model, ctx.tokenizer, train, layers, **kwargs)
    test_stats = collect_stats(ctx.model, ctx.tokenizer, test, layers, **kwargs)
    out = {}
    for layer in layers:
        out[layer] = fit_probe(*_xy(train_stats[layer]), *_xy(test_stats[layer]), seed=ctx.seed)
    return out
