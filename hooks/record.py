"""Read the residual stream: capture hidden states at chosen layers and sites.

`capture` calls a function with each layer's hidden states as they pass (for
reductions on the fly, e.g. running sums during extraction) and can stop the
forward pass after the deepest requested layer, so no compute is spent on
layers nobody reads. `record` keeps detached clones for inspection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from .handles import HookGroup
from .layers import resolve_layers
from .outputs import unpack, unpack_inputs
from .sites import Site, site_module


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early; see `run_until_stopped`."""


@contextmanager
def capture(
    model: nn.Module,
    layers: int | Iterable[int] | None,
    callback: Callable[[int, Tensor], None],
    *,
    site: Site = "block_output",
    stop_after_last: bool = False,
) -> Iterator[HookGroup]:
    """Call ``callback(layer, hidden)`` with ``[batch, seq, d_model]`` hidden states.

    Args:
        model: a Hugging Face decoder-only model.
        layers: layers to read (``None`` = all).
        callback: receives detached hidden states; must not modify them.
        site: one of `hooks.SITES`.
        stop_after_last: raise `StopForward` once the deepest layer was read;
            call the model through `run_until_stopped`.

    Example:
        >>> sums = {}
        >>> with capture(model, [3], lambda i, h: sums.__setitem__(i, h.sum(1))):  # doctest: +SKIP
        ...     model(**batch)
    """
    indices = resolve_layers(model, layers)
    last = indices[-1]
    group = HookGroup(f"capture layers={indices} site={site}")
    try:
        for index in indices:
            module, is_pre = site_module(model, index, site)
            stop = stop_after_last and index == last
            if is_pre:
                group.add_pre_hook(module, _reader_pre(index, callback, stop), with_kwargs=True)
            else:
                group.add_forward_hook(module, _reader(index, callback, stop))
        yield group
    finally:
        group.remove()


def run_until_stopped(model: nn.Module, **inputs: Any) -> Any:
    """Call ``model(**inputs)``; return ``None`` if a hook raised `StopForward`."""
    try:
        return model(**inputs)
    except StopForward:
        return None


class Recording:
    """Hidden states captured by `record`: ``rec[layer]`` is the last call's tensor."""

    def __init__(self) -> None:
        self.calls: dict[int, list[Tensor]] = {}

    def _add(self, layer: int, hidden: Tensor) -> None:
        self.calls.setdefault(layer, []).append(hidden)

    def __getitem__(self, layer: int) -> Tensor:
        return self.calls[layer][-1]

    def __contains__(self, layer: object) -> bool:
        return layer in self.calls

    def layers(self) -> list[int]:
        """Layers that received at least one call."""
        return sorted(self.calls)

    def __repr__(self) -> str:
        shapes = {i: tuple(c[-1].shape) for i, c in sorted(self.calls.items())}
        return f"Recording({shapes})"


@contextmanager
def record(
    model: nn.Module,
    layers: int | Iterable[int] | None = None,
    *,
    site: Site = "block_output",
    to_cpu: bool = False,
) -> Iterator[Recording]:
    """Record detached clones of the hidden states at ``layers`` and ``site``.

    Every forward call appends one ``[batch, seq, d_model]`` tensor per layer
    (cached generation appends one per step); ``rec[layer]`` is the latest.

    Example:
        >>> with record(model, [8]) as rec:  # doctest: +SKIP
        ...     model(**batch)
        >>> rec[8].shape  # doctest: +SKIP
        torch.Size([2, 7, 576])
    """
    rec = Recording()

    def keep(layer: int, hidden: Tensor) -> None:
        rec._add(layer, hidden.to("cpu", copy=True) if to_cpu else hidden.clone())

    with capture(model, layers, keep, site=site):
        yield rec


def _reader(index: int, callback: Callable[[int, Tensor], None], stop: bool) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        hidden, _ = unpack(output)
        callback(index, hidden.detach())
        if stop:
            raise StopForward

    return hook


def _reader_pre(index: int, callback: Callable[[int, Tensor], None], stop: bool) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden, _ = unpack_inputs(args, kwargs)
        callback(index, hidden.detach())
        if stop:
            raise StopForward

    return hook
