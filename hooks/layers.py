"""Find the decoder blocks of a Hugging Face causal LM and resolve layer indices.

Lookup order (first hit wins, each must give exactly one candidate):

1. an explicit dotted path set with :func:`set_decoder_layers` (the escape hatch);
2. Hugging Face metadata: a ``ModuleList`` whose blocks are of a class named in
   ``model._no_split_modules`` (what accelerate uses to keep a block on one device);
3. known paths (``model.layers``, ``transformer.h``, ``gpt_neox.layers``, ...).

Layer ``i`` is always the 0-based index into that list; negative indices count
from the end and are normalised once, here.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import cast

import torch
from torch import nn

from .errors import LayerError

# Paths used by the architectures we support (Llama/Qwen/Mistral/Gemma/Phi-3:
# model.layers; GPT-2: transformer.h; GPT-NeoX: gpt_neox.layers; OPT:
# model.decoder.layers; multimodal wrappers: model.language_model.layers).
KNOWN_PATHS: tuple[str, ...] = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "transformer.layers",
    "transformer.blocks",
    "layers",
)

_OVERRIDE_ATTR = "_steering_layers_path"


def set_decoder_layers(model: nn.Module, path: str) -> None:
    """Tell the framework where a model keeps its decoder blocks.

    Args:
        model: the model.
        path: dotted attribute path of an ``nn.ModuleList``, e.g. ``"backbone.blocks"``.

    Raises:
        LayerError: if the path does not name an ``nn.ModuleList``.

    Example:
        >>> set_decoder_layers(model, "model.layers")  # doctest: +SKIP
    """
    if not isinstance(_get_path(model, path), nn.ModuleList):
        raise LayerError(f"{type(model).__name__}.{path} is not an nn.ModuleList")
    setattr(model, _OVERRIDE_ATTR, path)


def decoder_layers_path(model: nn.Module) -> str:
    """Return the dotted path of the model's decoder-block list.

    Raises:
        LayerError: naming the model class and how to set the path by hand,
            if discovery finds none or several candidates.
    """
    explicit = getattr(model, _OVERRIDE_ATTR, None)
    if explicit is not None:
        return explicit

    block_names = set(getattr(model, "_no_split_modules", None) or ())
    if block_names:
        by_metadata = [
            name
            for name, module in model.named_modules()
            if isinstance(module, nn.ModuleList) and len(module) > 0 and all(type(block).__name__ in block_names for block in module)
        ]
        if len(by_metadata) == 1:
            return by_metadata[0]

    by_path = [p for p in KNOWN_PATHS if isinstance(_get_path(model, p), nn.ModuleList)]
    if len(by_path) == 1:
        return by_path[0]

    found = ", ".join(by_path) or "none"
    raise LayerError(
        f"cannot find the decoder layers of {type(model).__name__} (candidates: {found}); "
        f"tell steering where they are with "
        f"steering.set_decoder_layers(model, 'path.to.layers')"
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the model's decoder blocks as an ``nn.ModuleList`` (see module docs)."""
    return cast(nn.ModuleList, _get_path(model, decoder_layers_path(model)))


def decoder_stack(model: nn.Module) -> nn.Module:
    """Return the module that owns the decoder blocks (it receives the cache and ids)."""
    path = decoder_layers_path(model)
    parent = path.rpartition(".")[0]
    return cast(nn.Module, _get_path(model, parent)) if parent else model


def num_layers(model: nn.Module) -> int:
    """Number of decoder blocks."""
    return len(decoder_layers(model))


def resolve_layers(model: nn.Module, spec: int | Iterable[int] | None = None) -> list[int]:
    """Normalise a layer spec to a sorted list of distinct non-negative indices.

    Args:
        model: the model whose blocks are indexed.
        spec: ``None`` (all layers), an integer, or an iterable of integers
            (Python or numpy ints); negative values count from the end, as in
            Python. Strings, bools and floats are refused, never converted:
            ``"12"`` is not layers 1 and 2, ``12.7`` is not layer 12.

    Raises:
        LayerError: for a value that is not an integer, or an index out of
            range (naming the index and the valid range).

    Example:
        >>> resolve_layers(model, [-1, 0])  # doctest: +SKIP
        [0, 29]
    """
    n = num_layers(model)
    if spec is None:
        return list(range(n))
    return normalize_layers(spec, n, type(model).__name__)


def normalize_layers(spec: int | Iterable[int], n: int, owner: str = "the model") -> list[int]:
    """`resolve_layers` for a known depth ``n``: sorted distinct indices in ``0..n-1``.

    ``owner`` names what has ``n`` layers in the out-of-range message.

    Example:
        >>> normalize_layers([-1, 0], 30)
        [0, 29]
    """
    if isinstance(spec, (str, bytes)):
        raise LayerError(f"layers={spec!r} is a string; give an integer or a list of integers, e.g. [12]")
    items = [spec] if _integer(spec) is not None else _as_list(spec)
    out = {normalize_layer(raw, n, owner) for raw in items}
    if not out:
        raise LayerError("no layers given")
    return sorted(out)


def normalize_layer(raw: object, n: int, owner: str = "the model") -> int:
    """One layer index as a non-negative index in ``0..n-1`` (the rule every caller shares).

    Raises:
        LayerError: for a value that is not an integer, or an index out of range.

    Example:
        >>> normalize_layer(-1, 30)
        29
    """
    index = _integer(raw)
    if index is None:
        raise LayerError(f"layer {raw!r} is not an integer (layers are integer indices; negative counts from the end)")
    if not -n <= index < n:
        raise LayerError(f"layer {index} is out of range for {owner} with {n} layers (valid: 0..{n - 1}, or -{n}..-1 from the end)")
    return index % n


def _as_list(spec: object) -> list[object]:
    try:
        return list(spec)  # type: ignore[call-overload]
    except TypeError:
        raise LayerError(f"layers={spec!r} is not an integer or a list of integers") from None


def _integer(raw: object) -> int | None:
    """``raw`` as an int if it is an integer (Python, numpy, integer tensor) and not a bool, else None.

    ``operator.index`` is the exact test: it takes integer types and refuses
    floats, strings and numpy bools, where ``int()`` would truncate 12.7 or parse "12".
    """
    if isinstance(raw, bool) or (isinstance(raw, torch.Tensor) and raw.dtype == torch.bool):
        return None
    try:
        return operator.index(raw)  # type: ignore[arg-type]
    except TypeError:
        return None


def _get_path(root: nn.Module, path: str) -> nn.Module | None:
    module: object = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None
