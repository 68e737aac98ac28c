"""``probe_accuracy``: how linearly readable the behaviour is at each layer.

The contrastive pairs are split (by pair, seeded, ``eval.test_fraction``
held out) so a pair's two texts never sit on both sides. Activations at the
read position (``method.read``) of every requested layer come from one
pass per side; per layer a logistic-regression probe (standardised features)
is fitted on the training texts and scored on the held-out ones:
``probe_accuracy`` and ``probe_auroc``.
"""

from __future__ import annotations

import numpy as np
import torch

from vectors import LayerStats, collect_stats

from .base import Context, Values
from .data import split_pairs


def _xy(stats: LayerStats) -> tuple[np.ndarray, np.ndarray]:
    pos = torch.cat(stats.pos_samples).double().numpy()
    neg = torch.cat(stats.neg_samples).double().numpy()
    return np.concatenate([pos, neg]), np.r_[np.ones(len(pos)), np.zeros(len(neg))]


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int = 0) -> Values:
    """Fit a standardised logistic regression; return held-out accuracy and AUROC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    mean, scale = x_train.mean(0), x_train.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    clf.fit((x_train - mean) / scale, y_train)
    scores = clf.decision_function((x_test - mean) / scale)
    accuracy = float(((scores > 0) == (y_test > 0.5)).mean())
    return {"probe_accuracy": accuracy, "probe_auroc": float(roc_auc_score(y_test, scores))}


def probe_accuracy(ctx: Context, layers: list[int]) -> dict[int, Values]:
    """Held-out probe accuracy and AUROC at each of ``layers``."""
    cfg = ctx.cfg
    train, test = split_pairs(ctx.data.pairs, float(cfg.eval.test_fraction), ctx.seed)
    kwargs = dict(read=str(cfg.method.read), site=str(cfg.sweep.site), batch_size=int(cfg.method.batch_size), needs_samples=True)
    train_stats = collect_stats(ctx.model, ctx.tokenizer, train, layers, **kwargs)
    test_stats = collect_stats(ctx.model, ctx.tokenizer, test, layers, **kwargs)
    out = {}
    for layer in layers:
        out[layer] = fit_probe(*_xy(train_stats[layer]), *_xy(test_stats[layer]), seed=ctx.seed)
    return out
