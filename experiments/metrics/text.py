"""Metrics of generated text: ``generation_score``, ``repetition``, ``gen_ppl``.

Each cell generates once from the held-out prompts (batched, greedy unless
``eval.do_sample``; sampling is seeded per cell, so a cell gives the same
text on a re-run) and the three metrics share those generations.

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
            ctx.data.prompts,
            None if cell.is_baseline else cell.vector,
            cell.layer_coef,
            max_new_tokens=int(ev.max_new_tokens),
            apply_to=cell.apply_to,
            chat=ev.chat,
            batch_size=int(ev.batch_size),
            **sampling,
        )
    return cell.cache["generations"]


def generation_score(ctx: Context, cell: Cell) -> Values:
    """Mean scorer value of the cell's generations (per-text scores kept in the cache)."""
    if "scorer" not in ctx.cache:
        ctx.cache["scorer"] = make_scorer(ctx.cfg.metric)
    scorer = ctx.cache["scorer"]
    texts = generations(ctx, cell)
    scores = []
    for text, value in zip(texts, scorer(texts), strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ScorerError(f"scorer {ctx.cfg.metric.scorer!r} returned {value!r} for {text[:60]!r}; expected a finite number")
        scores.append(float(value))
    cell.cache["scores"] = scores
    return {scorer_value_name(ctx.cfg.metric): sum(scores) / len(scores)}


def distinct_n(text: str, n: int = 2) -> float | None:
    """Distinct n-grams / n-grams of a text's words (``None`` below ``n`` words)."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def repetition(ctx: Context, cell: Cell) -> Values:
    """``distinct2``: mean distinct-2 of the generations (1 = no repeated word pair)."""
    values = [d for d in (distinct_n(t) for t in generations(ctx, cell)) if d is not None]
    return {"distinct2": sum(values) / len(values) if values else math.nan}


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
