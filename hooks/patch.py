"""Write to the residual stream: per-layer operations behind forward hooks.

`patch` registers one hook per layer, each calling an `Op` on the hidden
states ``[batch, seq, d_model]`` of its site, and returns the `HookGroup` that
owns them. `AddOp` adds a vector (one for all rows, or one per row);
`AblateOp` projects directions out. Where positions other than ``"all"`` are
asked for, a `PositionTracker` on the decoder stack supplies absolute
positions, so the split between prompt and generated tokens holds under the
KV cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .errors import LayerError
from .handles import HookGroup
from .layers import decoder_stack, resolve_layers
from .outputs import unpack, unpack_inputs
from .positions import PositionTracker, check_positions
from .sites import site_module


class Op(Protocol):
    """A change to hidden states: ``op(hidden, mask) -> new_hidden``.

    ``mask`` is ``None`` (every token) or a boolean ``[seq]`` tensor.
    """

    def __call__(self, hidden: Tensor, mask: Tensor | None) -> Tensor: ...


class _Cast:
    """A tensor kept once per (device, dtype), so hooks never cast per call."""

    def __init__(self, value: Tensor) -> None:
        self.value = value
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def like(self, hidden: Tensor) -> Tensor:
        key = (hidden.device, hidden.dtype)
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = self.value.to(device=hidden.device, dtype=hidden.dtype)
        return out


class AddOp:
    """Add ``delta``: ``[d_model]`` for every row, or ``[batch, d_model]`` per row."""

    def __init__(self, delta: Tensor) -> None:
        if delta.dim() not in (1, 2):
            raise LayerError(f"a delta must be [d_model] or [batch, d_model], got shape {tuple(delta.shape)}")
        self._delta = _Cast(delta.detach())

    def __call__(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        delta = self._delta.like(hidden)
        if delta.dim() == 2:
            if delta.shape[0] != hidden.shape[0]:
                raise LayerError(f"per-row delta has {delta.shape[0]} rows but the batch has {hidden.shape[0]}")
            delta = delta[:, None, :]
        if mask is not None:
            delta = delta * mask[:, None].to(delta.dtype)
        return hidden + delta


class AblateOp:
    """Project the span of ``directions`` (``[k, d_model]``) out of the hidden states."""

    def __init__(self, directions: Tensor) -> None:
        if directions.dim() == 1:
            directions = directions[None]
        # An orthonormal basis of the span, so several directions ablate their
        # whole subspace rather than one after another.
        basis, _ = torch.linalg.qr(directions.detach().double().T)
        self._basis = _Cast(basis.T.contiguous())

    def __call__(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        basis = self._basis.like(hidden)
        projection = (hidden @ basis.T) @ basis
        if mask is not None:
            projection = projection * mask[:, None].to(projection.dtype)
        return hidden - projection


def patch(
    model: nn.Module,
    ops: Mapping[int, Op],
    *,
    site: str = "block_output",
    positions: str = "all",
    label: str = "",
) -> HookGroup:
    """Register ``ops[layer]`` at ``site`` of each layer; return the owning group.

    Args:
        model: a Hugging Face decoder-only model.
        ops: layer index (negative allowed) -> operation on that layer's hidden states.
        site: one of `hooks.SITES`.
        positions: ``"all"``, ``"prompt"`` or ``"generated"`` (absolute positions).
        label: shown in the group's ``repr``.

    Returns:
        A `HookGroup`; use it as a context manager or call ``remove()``.

    Raises:
        LayerError: for a bad layer, site or positions value (nothing stays registered).
    """
    check_positions(positions)
    group = HookGroup(label)
    try:
        tracker: PositionTracker | None = None
        if positions != "all":
            tracker = PositionTracker()
            group.add_pre_hook(decoder_stack(model), tracker, with_kwargs=True)
        for layer, op in ops.items():
            (index,) = resolve_layers(model, [layer])
            module, is_pre = site_module(model, index, site)
            if is_pre:
                group.add_pre_hook(module, _pre_hook(op, tracker, positions), with_kwargs=True)
            else:
                group.add_forward_hook(module, _forward_hook(op, tracker, positions))
    except BaseException:
        group.remove()
        raise
    return group


def _forward_hook(op: Op, tracker: PositionTracker | None, positions: str) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        hidden, repack = unpack(output)
        mask = tracker.mask(positions, hidden.shape[1], hidden.device) if tracker else None
        return repack(op(hidden, mask))

    return hook


def _pre_hook(op: Op, tracker: PositionTracker | None, positions: str) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden, repack = unpack_inputs(args, kwargs)
        mask = tracker.mask(positions, hidden.shape[1], hidden.device) if tracker else None
        return repack(op(hidden, mask))

    return hook
