"""Scorers: functions that turn generated texts into one number per text.

One type serves both users: `steering.compare.interpolate` (a score per
text at each mixing weight) and the ``generation_score`` metric of
``steering run`` (whose ``metric.scorer`` picks one of these by name).

A `Scorer` takes the texts of one batch and returns a number per text, so a
scorer that runs a model (`steering.compare.projection_scorer`) can batch its
forward passes. A plain ``str -> float`` function becomes one with `per_text`.

Example:
    >>> score = keyword_scorer(["sea"])
    >>> score(["The sea is calm.", "seasons change"])
    [1.0, 0.0]
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from steering.hooks import SteeringError

Scorer = Callable[[list[str]], Sequence[Any]]
"""Texts -> one score per text (numbers; NaN where a text cannot be scored)."""


class ScorerError(SteeringError, ValueError):
    """A scorer that cannot be built or returned a non-number."""


def per_text(fn: Callable[[str], Any]) -> Scorer:
    """The `Scorer` that calls ``fn`` on each text in turn (values returned as ``fn`` gave them).

    Example:
        >>> per_text(len)(["ab", "abc"])
        [2, 3]
    """
    return lambda texts: [fn(text) for text in texts]


@functools.lru_cache(maxsize=1)
def sentiment_scorer() -> Scorer:
    """VADER compound sentiment of each text, in ``[-1, 1]`` (needs ``vaderSentiment``).

    Raises:
        ScorerError: vaderSentiment is not installed.
    """
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ScorerError("scorer 'sentiment' needs vaderSentiment: pip install 'steering[eval]'") from None
    analyzer = SentimentIntensityAnalyzer()
    return per_text(lambda text: float(analyzer.polarity_scores(text)["compound"]))


def keyword_scorer(words: Sequence[str]) -> Scorer:
    """1.0 for a text holding one of ``words`` (whole words, any case), else 0.0.

    Raises:
        ScorerError: no non-blank word given.
    """
    cleaned = [w.strip() for w in words if w.strip()]
    if not cleaned:
        raise ScorerError("scorer 'keyword' needs at least one keyword")
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in cleaned) + r")\b", re.IGNORECASE)
    return per_text(lambda text: 1.0 if pattern.search(text) else 0.0)
