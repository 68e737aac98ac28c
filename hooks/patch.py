"""Write to the residual stream: per-layer operations behind forward hooks.

`patch` registers one hook per layer, each calling an `Op` on the hidden
states ``[batch, seq, d_model]`` of its site, and returns the `HookGroup` that
owns them. `AddOp` adds a vector (one for all rows, or one per row);
`AblateOp` projects directions out. Where positions other than ``"all"`` are
asked for, a `PositionTracker` on the decoder stack supplies absolute
positions, so the split between prompt and generated tokens holds under the
KV cache.

Under ``torch.compile`` the hooks are traced into the graph (no graph break,
also for positions with transformers' static cache), but dynamo by default
does not guard on hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``):
a graph compiled before `patch` keeps running without the new hooks. Attach
before compiling, or set that flag to ``False``; `patch` warns when it sees a
compiled model. Folding a constant into a bias (`hooks.fold`) has no such
problem: parameters are guarded.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .devices import wide_dtype
from .errors import LayerError
from .fold import claim
from .handles import HookGroup
from .layers import decoder_stack, resolve_layers
from .outputs import unpack, unpack_inputs
from .positions import ApplyTo, PositionTracker, check_positions
from .sites import Site, site_module


class Op(Protocol):
    """A change to hidden states: ``op(hidden, mask) -> new_hidden``.

    ``mask`` is ``None`` (every token) or a boolean ``[seq]`` tensor.
    """

    def __call__(self, hidden: Tensor, mask: Tensor | None) -> Tensor: ...


class _Cast:
    """A tensor kept in the (device, dtype) of the hidden states it meets.

    One cast is remembered, so the per-call cost is two attribute compares:
    a model runs in one dtype on one device per layer.
    """

    def __init__(self, value: Tensor) -> None:
        self.value = value
        self._last = value

    def like(self, hidden: Tensor) -> Tensor:
        last = self._last
        if last.dtype is hidden.dtype and last.device == hidden.device:
            return last
        self._last = last = self.value.to(device=hidden.device, dtype=hidden.dtype)
        return last


class AddOp:
    """Add ``delta``: ``[d_model]`` for every row, or ``[batch, d_model]`` per row."""

    def __init__(self, delta: Tensor) -> None:
        if delta.dim() not in (1, 2):
            raise LayerError(f"a delta must be [d_model] or [batch, d_model], got shape {tuple(delta.shape)}")
        self.per_row = delta.dim() == 2
        # Shaped once to broadcast over [batch, seq, d_model]: [1, 1, d] or [batch, 1, d].
        self._delta = _Cast(delta.detach()[:, None, :] if self.per_row else delta.detach())

    @property
    def delta(self) -> Tensor:
        """The delta as given: ``[d_model]`` or ``[batch, d_model]``."""
        value = self._delta.value
        return value[:, 0, :] if self.per_row else value

    def __call__(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        delta = self._delta.like(hidden)
        if self.per_row and delta.shape[0] != hidden.shape[0]:
            raise LayerError(f"per-row delta has {delta.shape[0]} rows but the batch has {hidden.shape[0]}")
        if mask is not None:
            delta = delta * mask[:, None].to(delta.dtype)
        return hidden + delta


def span_basis(directions: Tensor) -> Tensor:
    """An orthonormal basis (``[k, d_model]``, float64) of the span of ``directions`` (``[k, d_model]``).

    Ablating with it removes the whole subspace at once rather than one
    direction after another (which would not commute for non-orthogonal ones).
    """
    if directions.dim() == 1:
        directions = directions[None]
    basis, _ = torch.linalg.qr(directions.detach().double().T)
    return basis.T.contiguous()


class AblateOp:
    """Project the span of ``directions`` (``[k, d_model]``) out of the hidden states.

    The projection runs in float32 at least (`wide_dtype`) and the result is
    cast back once: in bf16, ``hidden - projection`` rounded term by term
    leaves a residue along the direction of about 1% of its norm.
    """

    def __init__(self, directions: Tensor) -> None:
        self._basis = _Cast(span_basis(directions))

    def __call__(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        wide = hidden.to(wide_dtype(hidden.dtype))
        basis = self._basis.like(wide)
        projection = (wide @ basis.T) @ basis
        if mask is not None:
            projection = projection * mask[:, None].to(projection.dtype)
        return (wide - projection).to(hidden.dtype)


def patch(
    model: nn.Module,
    ops: Mapping[int, Op],
    *,
    site: Site = "block_output",
    positions: ApplyTo = "all",
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
        LayerError: for a bad layer, site or positions value, or two keys
            naming one layer (``-1`` and ``n - 1``); nothing stays registered.
    """
    check_positions(positions)
    by_index = _by_index(model, ops)
    _warn_if_compiled(model)
    group = HookGroup(label)
    try:
        # Recorded so that a fold from another thread refuses (see `hooks.fold`).
        group.on_remove(claim(model, "hooks"))
        tracker: PositionTracker | None = None
        if positions != "all":
            stack = decoder_stack(model)
            tracker = PositionTracker(stack)
            group.add_pre_hook(stack, tracker, with_kwargs=True)
        for index, op in by_index.items():
            module, is_pre = site_module(model, index, site)
            if is_pre:
                group.add_pre_hook(module, _pre_hook(op, tracker, positions), with_kwargs=True)
            else:
                group.add_forward_hook(module, _forward_hook(op, tracker, positions))
    except BaseException:
        group.remove()
        raise
    return group


def _by_index(model: nn.Module, ops: Mapping[int, Op]) -> dict[int, Op]:
    """``ops`` keyed by non-negative layer index; two keys for one layer would stack two hooks there."""
    out: dict[int, Op] = {}
    keys: dict[int, int] = {}
    for layer, op in ops.items():
        (index,) = resolve_layers(model, [layer])
        if index in out:
            raise LayerError(f"layers {keys[index]} and {layer} both name layer {index}; give each layer once")
        out[index], keys[index] = op, layer
    return out


def _warn_if_compiled(model: nn.Module) -> None:
    # transformers keeps the forward it compiles for static-cache generation
    # (on GPUs it does so on its own) in `_compiled_call`; nn.Module.compile()
    # in `_compiled_call_impl`.
    compiled = getattr(model, "_compiled_call", None) is not None or getattr(model, "_compiled_call_impl", None) is not None
    try:
        import torch._dynamo.config as dynamo_config

        unguarded = bool(getattr(dynamo_config, "skip_nnmodule_hook_guards", False))
    except ImportError:  # pragma: no cover - torch without dynamo
        return
    if compiled and unguarded:
        warnings.warn(
            "this model has a torch.compile'd forward, and torch._dynamo does not guard on hooks: graphs "
            "compiled before now ignore the steering hooks. Use backend='fold' where possible, or set "
            "torch._dynamo.config.skip_nnmodule_hook_guards = False before compiling.",
            RuntimeWarning,
            stacklevel=3,
        )


def _forward_hook(op: Op, tracker: PositionTracker | None, positions: str) -> Any:
    if tracker is None:
        # The common case (every token) is kept to one type check and the op:
        # this runs once per layer per generated token.
        def hook_all(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if type(output) is Tensor:
                return op(output, None)
            hidden, repack = unpack(output)
            return repack(op(hidden, None))

        return hook_all

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        hidden, repack = unpack(output)
        selected = tracker.select(positions, hidden.shape[1], hidden.device)
        if selected is False:
            return None  # no token of this pass is patched: the output stays as it is
        return repack(op(hidden, None if selected is True else selected))

    return hook


def _pre_hook(op: Op, tracker: PositionTracker | None, positions: str) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden, repack = unpack_inputs(args, kwargs)
        selected = tracker.select(positions, hidden.shape[1], hidden.device) if tracker else True
        if selected is False:
            return None
        return repack(op(hidden, None if selected is True else selected))

    return hook
