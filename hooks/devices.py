"""Where a model's inputs go and where each decoder block runs, also when it is spread over devices.

A model placed with ``device_map`` (transformers/accelerate) has no single
device: blocks sit on several GPUs, on the CPU, or on the meta device with
their weights offloaded to CPU memory or disk, where accelerate's
``AlignDevicesHook`` loads them onto an *execution device* for each forward
pass. "The first parameter's device" is then wrong (or ``meta``), so every
caller asks here instead:

* `input_device`: where input ids go (the embedding layer's execution device);
* `layer_device` / `layer_dtype`: where layer ``i``'s hidden states live and in
  which dtype, so a vector is moved and cast once per layer, up front;
* `wide_dtype`: the dtype sums and projections run in (float32 at least, so
  bf16/fp16 models do not round every partial sum);
* `offloaded_tensor`: the value of a weight accelerate offloaded (the model
  fingerprint reads it, so an offloaded model has its in-memory fingerprint);
  `offload_slot` finds where accelerate keeps it and `OverlaidWeights` replaces
  entries there (how `hooks.fold` folds into an offloaded block).

An accelerate hook's ``execution_device`` wins over the parameters (an
offloaded module's parameters are on ``meta``); without one, the first
parameter or buffer not on ``meta`` tells.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .errors import LayerError
from .layers import decoder_layers, normalize_layer


def module_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: an accelerate hook's execution device, else its tensors'.

    Raises:
        LayerError: when neither a hook nor a tensor off the meta device says.

    Example:
        >>> module_device(torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    for sub in module.modules():
        device = _hook_device(getattr(sub, "_hf_hook", None))
        if device is not None:
            return device
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    raise LayerError(
        f"cannot tell where {type(module).__name__} runs: its tensors are on the meta device and no accelerate hook "
        "names an execution device (load the model with device_map=..., or move it with .to(device))"
    )


def _hook_device(hook: object) -> torch.device | None:
    """The ``execution_device`` of an accelerate hook (or of the first in a ``SequentialHook``)."""
    if hook is None:
        return None
    for one in getattr(hook, "hooks", None) or (hook,):
        device = getattr(one, "execution_device", None)
        if device is not None:
            # accelerate stores an int for a CUDA index, or a string / torch.device.
            return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    return None


def _offload_hooks(model: nn.Module, name: str) -> Iterator[tuple[Any, str]]:
    """Each offloading accelerate hook above tensor ``name``, nearest first, with the key ``name`` has in its weights map."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        try:
            owner = model.get_submodule(".".join(parts[:cut]))
        except AttributeError:
            continue
        hook = getattr(owner, "_hf_hook", None)
        for one in (getattr(hook, "hooks", None) or (hook,)) if hook is not None else ():
            if getattr(one, "weights_map", None) is not None and getattr(one, "offload", False):
                yield one, ".".join(parts[cut:])


def offload_slot(model: nn.Module, name: str) -> tuple[Any, str] | None:
    """The accelerate hook whose ``weights_map`` holds ``model``'s offloaded tensor ``name``, and its key there.

    An offloaded module's hook loads its weights from a ``weights_map`` (CPU
    memory or a disk folder) for each forward pass, keyed relative to the
    module that holds the hook (a block, or the linear layer itself).
    ``None`` when no offloading hook above ``name`` has that entry.
    """
    return next(((hook, key) for hook, key in _offload_hooks(model, name) if has_key(hook.weights_map, key)), None)


def has_key(weights: Mapping[str, Any], key: str) -> bool:
    """Whether an accelerate weights map has ``key``, without loading it (``in`` on its disk loader reads the tensor)."""
    prefix, inner = getattr(weights, "prefix", None), getattr(weights, "dataset", None)
    if isinstance(prefix, str) and isinstance(inner, Mapping):  # accelerate's PrefixedDataset (it iterates full keys)
        return has_key(inner, prefix + key)
    if isinstance(weights, (dict, OverlaidWeights)):
        return key in weights
    return any(k == key for k in weights)


def offloaded_tensor(model: nn.Module, name: str) -> torch.Tensor | None:
    """The value accelerate keeps for ``model``'s tensor ``name`` while it sits on ``meta``, else ``None``.

    Reads the weights map entry accelerate's hook loads before each forward pass (see `offload_slot`).

    Example:
        >>> offloaded_tensor(model, "model.layers.20.mlp.down_proj.weight").shape  # doctest: +SKIP
        torch.Size([576, 1536])
    """
    for hook, key in _offload_hooks(model, name):
        try:
            return torch.as_tensor(hook.weights_map[key])
        except KeyError:
            continue
    return None


class OverlaidWeights(Mapping[str, Any]):
    """An accelerate ``weights_map`` with some entries replaced or added, the rest read from ``base``.

    `hooks.fold` puts one on the hook of an offloaded linear layer so that the
    hook loads the folded bias with the weights for each forward pass (a bias
    written into the module itself would be dropped when the hook moves it
    back to ``meta``); putting ``base`` back restores the weights map as it was.
    """

    def __init__(self, base: Mapping[str, Any], replaced: dict[str, torch.Tensor]) -> None:
        self.base = base
        self.replaced = replaced

    def __getitem__(self, key: str) -> Any:
        return self.replaced[key] if key in self.replaced else self.base[key]

    def __contains__(self, key: object) -> bool:
        return key in self.replaced or (isinstance(key, str) and has_key(self.base, key))

    def __iter__(self) -> Iterator[str]:
        yield from self.replaced
        yield from (key for key in self.base if key not in self.replaced)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def input_device(model: nn.Module) -> torch.device:
    """Where input ids (and masks, positions) must go: the device the embedding layer runs on.

    Example:
        >>> input_device(model)  # doctest: +SKIP
        device(type='cuda', index=0)
    """
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    return module_device(embeddings if isinstance(embeddings, nn.Module) else model)


def layer_device(model: nn.Module, layer: int) -> torch.device:
    """The device decoder block ``layer`` (negative counts from the end) computes on.

    Example:
        >>> layer_device(model, -1)  # doctest: +SKIP
        device(type='cuda', index=1)
    """
    blocks = decoder_layers(model)
    return module_device(blocks[normalize_layer(layer, len(blocks), type(model).__name__)])


def layer_dtype(model: nn.Module, layer: int) -> torch.dtype:
    """The floating dtype of decoder block ``layer``'s weights (offloaded weights keep theirs on ``meta``).

    Example:
        >>> layer_dtype(model, 12)  # doctest: +SKIP
        torch.bfloat16
    """
    blocks = decoder_layers(model)
    block = blocks[normalize_layer(layer, len(blocks), type(model).__name__)]
    for tensor in (*block.parameters(), *block.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    raise LayerError(f"layer {layer} of {type(model).__name__} has no floating-point weights to take a dtype from")


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` widened to float32 at least: what sums and projections of hidden states run in.

    Example:
        >>> wide_dtype(torch.bfloat16), wide_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)
