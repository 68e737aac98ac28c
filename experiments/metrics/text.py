"""Metrics of generated text: ``generation_score``, ``repetition``, ``gen_ppl``.

Each cell generates once from the held-out prompts (batched, greedy unless
``eval.do_sample``; sampling is seeded per cell, so a cell gives the same
text on a re-run) and the three metrics share those generations.

Besides means, both look at each prompt against the unsteered generation
from the same prompt (the baseline cell's, generated on demand if no
baseline was measured yet):

- ``generation_score`` reports the distribution of the per-prompt change of
  the score (``delta_p10``, ``delta_median``, ``delta_p90``) and
  ``wrong_way``: the fraction of prompts whose score moved against the
  cell's sign (down for a positive coefficient, up for a negative one);
- ``repetition`` reports ``degenerate``: the fraction of prompts whose
  generation is repetitive (distinct-2 below ``DEGENERATE_DISTINCT2``, e.g.
  "A.\n\nA.\n\nA.") where the unsteered one was not. Sentiment scorers
  do not see degeneration; a budget on ``degenerate`` does.

Scorers (`steering.scoring.Scorer`) turn texts into a number each;
``metric.scorer`` picks one:

==============  ==========================================================
sentiment       VADER compound score, -1 (negative) .. +1 (positive)
keyword         1 if the text holds a word of ``metric.keywords``, else 0
module:function any importable callable ``str -> float`` (value ``score``)
==============  ==========================================================
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

import steering as st
from steering.scoring import Scorer, ScorerError, keyword_scorer, per_text, sentiment_scorer

from .base import Cell, Context, Values
from .replies import encode_replies, iter_reply_logprobs, token_logprobs


def _import_callable(path: str) -> Scorer:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ScorerError(f"metric.scorer={path!r}: expected 'sentiment', 'keyword' or 'module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ScorerError(f"metric.scorer={path!r}: cannot import it ({exc})") from None
    if not callable(fn):
        raise ScorerError(f"metric.scorer={path!r} is not callable")
    return per_text(fn)


def scorer_value_name(metric: DictConfig) -> str:
    """Name of the value ``generation_score`` reports: the scorer's name, or ``score``."""
    return str(metric.scorer) if metric.scorer in ("sentiment", "keyword") else "score"


def make_scorer(metric: DictConfig) -> Scorer:
    """The scorer ``metric.scorer`` names (see module docs)."""
    if metric.scorer == "sentiment":
        return sentiment_scorer()
    if metric.scorer == "keyword":
        try:
            return keyword_scorer(list(metric.keywords))
        except ScorerError as exc:
            raise ScorerError(f"{exc}: set metric.keywords, e.g. metric.keywords=[wedding,bride]") from None
    return _import_callable(str(metric.scorer))


def generations(ctx: Context, cell: Cell) -> list[str]:
    """The cell's completions of ``ctx.data.prompts`` (generated once per cell)."""
    if "generations" not in cell.cache:
        ev = ctx.cfg.eval
        sampling: dict[str, Any] = {"do_sample": bool(ev.do_sample)}
        if ev.do_sample:
            sampling.update(temperature=float(ev.temperature), top_p=float(ev.top_p))
        torch.manual_seed(ctx.seed + cell.index)
        cell.cache["generations"] = st.generate(
            ctx.model,
            ctx.tokenizer,
            [cell.prompt(p) for p in ctx.data.prompts],
            cell.vector if cell.steers else None,
            cell.layer_coef,
            max_new_tokens=int(ev.max_new_tokens),
            apply_to=cell.apply_to,
            mode=cell.mode,
            chat=ev.chat,
            batch_size=int(ev.batch_size),
            **sampling,
        )
    return cell.cache["generations"]


# Distinct-2 below this is repetition, not prose: "A.\n\nA.\n\nA." has 0.4, a
# sentence that repeats itself twice about 0.5; fluent replies sit near 0.9.
DEGENERATE_DISTINCT2 = 0.5
PER_EXAMPLE = ("delta_p10", "delta_median", "delta_p90", "wrong_way")


def _baseline(ctx: Context, cell: Cell) -> Cell:
    """The unsteered cell to compare ``cell`` with, prompt by prompt (``cell`` itself if it is the baseline)."""
    if cell.is_baseline:
        ctx.cache.setdefault("baseline_cell", cell)
        return cell
    if "baseline_cell" not in ctx.cache:
        ctx.cache["baseline_cell"] = Cell(0, apply_to=cell.apply_to)
    return ctx.cache["baseline_cell"]


def _scores(ctx: Context, cell: Cell) -> list[float]:
    if "scores" in cell.cache:
        return cell.cache["scores"]
    if "scorer" not in ctx.cache:
        ctx.cache["scorer"] = make_scorer(ctx.cfg.metric)
    texts = generations(ctx, cell)
    scores = []
    for text, value in zip(texts, ctx.cache["scorer"](texts), strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ScorerError(f"scorer {ctx.cfg.metric.scorer!r} returned {value!r} for {text[:60]!r}; expected a finite number")
        scores.append(float(value))
    cell.cache["scores"] = scores
    return scores


def per_example(deltas: list[float], sign: float) -> Values:
    """Quantiles of per-prompt changes and the fraction moved against ``sign`` (none for sign 0)."""
    quantiles = np.quantile(np.asarray(deltas, dtype=np.float64), [0.1, 0.5, 0.9]) if deltas else [math.nan] * 3
    wrong = sum(1 for d in deltas if sign * d < 0) / len(deltas) if deltas else math.nan
    return dict(zip(PER_EXAMPLE, [*map(float, quantiles), wrong]))


def generation_score(ctx: Context, cell: Cell) -> Values:
    """Mean scorer value of the cell's generations and its per-prompt change (see module docs)."""
    scores = _scores(ctx, cell)
    base = _scores(ctx, _baseline(ctx, cell))
    deltas = [s - b for s, b in zip(scores, base, strict=True)]
    return {
        scorer_value_name(ctx.cfg.metric): sum(scores) / len(scores),
        **per_example(deltas, math.copysign(1.0, cell.coef) if cell.coef else 0.0),
    }


def distinct_n(text: str, n: int = 2) -> float | None:
    """Distinct n-grams / n-grams of a text's words (``None`` below ``n`` words)."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def is_degenerate(text: str) -> bool:
    """Whether ``text`` repeats itself (distinct-2 below `DEGENERATE_DISTINCT2`)."""
    value = distinct_n(text)
    return value is not None and value < DEGENERATE_DISTINCT2


def repetition(ctx: Context, cell: Cell) -> Values:
    """``distinct2``: mean distinct-2 of the generations (1 = no repeated word pair); ``degenerate`` (module docs)."""
    texts = generations(ctx, cell)
    values = [d for d in (distinct_n(t) for t in texts) if d is not None]
    base = generations(ctx, _baseline(ctx, cell))
    newly = sum(1 for text, plain in zip(texts, base, strict=True) if is_degenerate(text) and not is_degenerate(plain))
    return {"distinct2": sum(values) / len(values) if values else math.nan, "degenerate": newly / len(texts) if texts else math.nan}


def gen_ppl(ctx: Context, cell: Cell) -> Values:
    """Perplexity of the cell's generations under the unsteered model."""
    texts = generations(ctx, cell)
    batches = encode_replies(ctx.tokenizer, ctx.data.prompts, texts, chat=ctx.cfg.eval.chat, batch_size=int(ctx.cfg.eval.batch_size))
    nll, tokens = 0.0, 0
    for batch, logprobs in iter_reply_logprobs(ctx.model, batches):
        picked, mask = token_logprobs(batch, logprobs)
        nll -= float(picked[mask].double().sum())
        tokens += int(mask.sum())
    return {"gen_ppl": math.exp(nll / tokens) if tokens else math.nan}
