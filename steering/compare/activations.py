"""Activations of labelled examples, the raw material for projections and AUROC.

Two sources, one result type (`LabelledActivations`: per layer an ``[n, d]``
float32 matrix, and ``n`` labels, 1 = shows the behaviour):

- contrastive pairs: each pair gives a positive (label 1) and a negative
  (label 0) read exactly as extraction reads them (`vectors.collect_stats`,
  same text formatting and token position), so a vector is scored on the
  activations it was built from, or on held-out pairs of the same kind;
- labelled texts: JSONL lines ``{"text": str, "label": 0 | 1}``, read at the
  last token (``read="last"``) or averaged over all tokens (``"mean"``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from steering.hooks import (
    Site,
    SteeringError,
    renamed,
    resolve_layers,
)
from steering.vectors import ContrastPair, DatasetError, Read, as_pairs, collect_stats, dataset_sha256, read_texts


@dataclass(frozen=True)
class LabelledActivations:
    """Per-layer activations of labelled examples.

    Attributes:
        features: layer -> ``[n, hidden_size]`` float32 array (rows in ``labels`` order).
        labels: ``[n]`` int array, 1 = shows the behaviour, 0 = does not.
        groups: ``[n]`` int array, pair index for pairs (the positive and the
            negative of a pair share it; positives are rows ``0..P-1`` in pair
            order, negatives rows ``P..2P-1``), row index for texts.
        source: what the examples were (for reports).
        dataset_sha256: hash of the pairs (as in vector metadata), or ``None`` for texts.
    """

    features: dict[int, np.ndarray]
    labels: np.ndarray
    groups: np.ndarray
    source: str = ""
    dataset_sha256: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        for layer, x in self.features.items():
            if x.ndim != 2 or x.shape[0] != n:
                raise SteeringError(f"layer {layer}: features of shape {x.shape} do not match {n} labels")
        if set(np.unique(self.labels)) - {0, 1}:
            raise SteeringError(f"labels must be 0 or 1, got {sorted(set(np.unique(self.labels)))}")

    @property
    def layers(self) -> list[int]:
        """Sorted layers with features."""
        return sorted(self.features)


def pair_activations(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[ContrastPair | dict[str, Any] | tuple[str, str]],
    layers: Iterable[int] | int | None,
    *,
    read: Read = "last",
    site: Site = "block_output",
    batch_size: int = 16,
    position: Read | None = None,
    source: str = "pairs",
) -> LabelledActivations:
    """Activations of both sides of each pair at ``layers`` (read as `vectors.extract` reads them).

    Example:
        >>> acts = pair_activations(model, tok, load_pairs("sentiment"), layers=[6, 12])  # doctest: +SKIP
        >>> acts.features[12].shape  # doctest: +SKIP
        (400, 576)
    """
    read = renamed("read", read, position, "last")
    pair_list = as_pairs(pairs)
    stats = collect_stats(model, tokenizer, pair_list, layers, read=read, site=site, batch_size=batch_size, needs_samples=True)
    features: dict[int, np.ndarray] = {}
    for layer, s in stats.items():
        pos, neg = torch.cat(s.pos_samples).numpy(), torch.cat(s.neg_samples).numpy()
        features[layer] = np.concatenate([pos, neg]).astype(np.float32)
    n = len(pair_list)
    # collect_stats returns samples in the order of pair_list: row k (and n + k) is pair k.
    labels = np.r_[np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)]
    groups = np.r_[np.arange(n), np.arange(n)]
    return LabelledActivations(features, labels, groups, source, dataset_sha256(pair_list), {"read": read, "site": site})


def read_labelled_texts(path: str | Path) -> tuple[list[str], list[int]]:
    """Read ``{"text": str, "label": 0|1|true|false}`` JSONL; errors name ``file:line``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such labelled-text file") from None
    texts: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: invalid JSON: {exc.msg}") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise DatasetError(f"{where}: expected an object with a non-empty string field 'text'")
        label = item.get("label")
        if label not in (0, 1) or isinstance(label, float):
            raise DatasetError(f"{where}: field 'label' must be 0, 1, true or false, got {label!r}")
        texts.append(item["text"])
        labels.append(int(label))
    if not texts:
        raise DatasetError(f"{path}: no labelled texts in file")
    if len(set(labels)) < 2:
        raise DatasetError(f"{path}: all labels are {labels[0]}; separation needs both 0 and 1")
    return texts, labels


def is_labelled_texts(path: str | Path) -> bool:
    """Whether the first non-empty line of a JSONL file looks like ``{"text", "label"}``."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    item = json.loads(line)
                    return isinstance(item, dict) and "text" in item and "label" in item
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return False


@torch.no_grad()
def text_features(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Iterable[int] | int | None,
    *,
    read: Read = "last",
    site: Site = "block_output",
    batch_size: int = 16,
    position: Read | None = None,
) -> dict[int, np.ndarray]:
    """Per-layer ``[n, d]`` float32 activations of plain texts (tokenised with special tokens).

    ``read="last"`` reads the last token, ``"mean"`` averages all tokens
    (``position`` is its deprecated name).

    Example:
        >>> feats = text_features(model, tok, ["I love it", "I hate it"], layers=[12])  # doctest: +SKIP
    """
    read = renamed("read", read, position, "last")
    if tokenizer.pad_token_id is None:
        raise SteeringError("the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token")
    if not texts:
        raise SteeringError("no texts given")
    indices = resolve_layers(model, layers)
    rows: dict[int, list[Tensor]] = {i: [] for i in indices}

    def keep(layer: int, batch: Tensor) -> None:
        rows[layer].append(batch.to("cpu", torch.float32))

    read_texts(model, tokenizer, texts, indices, keep, read=read, site=site, batch_size=batch_size)
    return {i: torch.cat(r).numpy() for i, r in rows.items()}


def text_activations(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    layers: Iterable[int] | int | None,
    *,
    read: Read = "last",
    site: Site = "block_output",
    batch_size: int = 16,
    position: Read | None = None,
    source: str = "texts",
) -> LabelledActivations:
    """Activations of labelled plain texts (see `text_features`).

    Example:
        >>> acts = text_activations(model, tok, ["I love it", "I hate it"], [1, 0], layers=[12])  # doctest: +SKIP
    """
    if len(texts) != len(labels):
        raise SteeringError(f"{len(texts)} texts but {len(labels)} labels")
    read = renamed("read", read, position, "last")
    features = text_features(model, tokenizer, texts, layers, read=read, site=site, batch_size=batch_size)
    label_array = np.asarray(labels, dtype=np.int64)
    return LabelledActivations(features, label_array, np.arange(len(texts)), source, None, {"read": read, "site": site})
