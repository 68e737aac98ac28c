"""The held-out material metrics read, loaded and checked before any model loads.

=========  ===============================================================
prompts    user prompts to generate from (``eval.prompts``)
neutral    plain factual sentences for side effects (``eval.neutral``)
items      A/B items, CAA format (``eval.ab_items``, or the pairs held out of
           ``data.path`` by ``data.holdout``); with ``eval.balance_letters``
           each item also with (A) and (B) swapped, so every question is asked
           with its matching answer under both letters
pairs      contrastive pairs for probes (``data.path``)
capability two-choice MMLU items (``eval.capability``)
=========  ===============================================================
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

import steering as st
from steering.hooks import ConfigError
from steering.vectors import swap_letters


@dataclass(frozen=True)
class EvalData:
    """Evaluation material; a field a run does not need stays empty."""

    prompts: list[str] = field(default_factory=list)
    neutral: list[str] = field(default_factory=list)
    items: list[st.ContrastPair] = field(default_factory=list)
    pairs: list[st.ContrastPair] = field(default_factory=list)
    capability: list[st.ContrastPair] = field(default_factory=list)


def split_pairs(pairs: Sequence[st.ContrastPair], fraction: float, seed: int) -> tuple[list[st.ContrastPair], list[st.ContrastPair]]:
    """Shuffle with ``seed`` and return ``(kept, held_out)``, ``held_out`` being ``fraction`` of the pairs.

    Raises:
        ConfigError: when the split would leave either side empty.
    """
    if fraction <= 0:
        return list(pairs), []
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_held = round(len(pairs) * fraction)
    if n_held < 1 or n_held >= len(pairs):
        raise ConfigError(f"a split of {fraction} leaves no pairs on one side ({len(pairs)} pairs in all)")
    held = sorted(order[:n_held])
    kept = sorted(order[n_held:])
    return [pairs[i] for i in kept], [pairs[i] for i in held]


def _first(items: list, limit: int | None) -> list:
    return items if limit is None else items[: int(limit)]


def _lines(key: str, value: str, limit: int | None) -> list[str]:
    try:
        return _first(st.load_lines(value), limit)
    except st.DatasetError as exc:
        raise st.DatasetError(f"{key}={value}: {exc}") from None


def load_items(path: str, limit: int | None) -> list[st.ContrastPair]:
    """A/B items from a CAA-format file; each needs a question.

    Raises:
        DatasetError: naming the file and item for an item without a question.
    """
    items = st.load_pairs(path)
    for i, item in enumerate(items):
        if not item.prompt:
            raise st.DatasetError(f"{path}: item {i} has no question (A/B items need 'question')")
    return _first(items, limit)


def load_capability(path: str, limit: int | None) -> list[st.ContrastPair]:
    """Two-choice items (``prompt``, ``correct``, ``incorrect``) as pairs: positive = the correct letter.

    Raises:
        DatasetError: a missing file, bad JSON or an item without those fields, naming file and item.
    """
    file = Path(path)
    where = f"eval.capability={path}"
    if not file.is_file():
        raise st.DatasetError(f"{where}: no such file (two-choice MMLU: caa/test/mmlu/mmlu.json in the shared data)")
    try:
        items = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise st.DatasetError(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(items, list) or not items:
        raise st.DatasetError(f"{where}: expected a non-empty JSON list of items")
    pairs = []
    for i, item in enumerate(items if limit is None else items[: int(limit)]):
        fields = ("prompt", "correct", "incorrect")
        if not isinstance(item, dict) or any(not isinstance(item.get(k), str) or not item[k].strip() for k in fields):
            raise st.DatasetError(f"{where}: item {i} needs the strings {', '.join(fields)}")
        pairs.append(st.ContrastPair(_letter(item["correct"]), _letter(item["incorrect"]), item["prompt"]))
    return pairs


def _letter(answer: str) -> str:
    # "(A)" -> "(A": the letter is the token read after "(", as in A/B items.
    answer = answer.strip()
    return answer[:-1] if answer.startswith("(") and answer.endswith(")") else answer


def load_eval_data(cfg: DictConfig, needs: set[str], pairs: Sequence[st.ContrastPair], held_out: Sequence[st.ContrastPair]) -> EvalData:
    """Load what ``needs`` names (see module docs); ``held_out`` serves as A/B items when ``eval.ab_items`` is null.

    Raises:
        DatasetError: a missing or empty file, or bad items, naming the file.
        ConfigError: A/B items needed but neither ``eval.ab_items`` nor ``data.holdout`` given.
    """
    ev = cfg.eval
    prompts = _lines("eval.prompts", ev.prompts, ev.max_prompts) if "prompts" in needs else []
    neutral = _lines("eval.neutral", ev.neutral, ev.max_neutral) if "neutral" in needs else []
    items: list[st.ContrastPair] = []
    if "items" in needs:
        if ev.ab_items is not None:
            items = load_items(ev.ab_items, ev.max_ab_items)
        elif held_out:
            items = _first(list(held_out), ev.max_ab_items)
        else:
            raise ConfigError("A/B metrics need test items: set eval.ab_items=<CAA test file> or data.holdout=<fraction of data.path>")
        for i, item in enumerate(items):
            if not item.prompt:
                raise st.DatasetError(f"A/B item {i} ({item.positive!r} vs {item.negative!r}) has no question")
        if ev.balance_letters:
            source = f"eval.ab_items={ev.ab_items}" if ev.ab_items is not None else f"the held-out part of data.path={cfg.data.path}"
            try:
                items = [q for p in items for q in (p, swap_letters(p))]
            except st.DatasetError as exc:
                raise st.DatasetError(f"eval.balance_letters=true with {source}: {exc}") from None
    probe_pairs = list(pairs) if "pairs" in needs else []
    capability: list[st.ContrastPair] = []
    if "capability" in needs:
        if ev.capability is None:
            raise ConfigError("metric.use has 'capability': set eval.capability=<two-choice MMLU file, e.g. caa/test/mmlu/mmlu.json>")
        capability = load_capability(str(ev.capability), ev.max_capability)
    return EvalData(prompts=prompts, neutral=neutral, items=items, pairs=probe_pairs, capability=capability)
