"""`HookGroup`: the single owner of the hooks one operation registered.

A group collects ``RemovableHandle`` objects as they are registered, so a
failure halfway through registration still removes what was added. It is a
context manager, and `remove` is idempotent. It never touches hooks it did not
register (transformers relies on its own permanent hooks for
``output_hidden_states``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle


class HookGroup:
    """Hooks registered together and removed together.

    Example:
        >>> with HookGroup("steer layers=[12] coef=4.0") as group:  # doctest: +SKIP
        ...     group.add_forward_hook(block, fn)
        ...     model.generate(...)
    """

    def __init__(self, label: str = "") -> None:
        self.label = label
        self._handles: list[RemovableHandle] = []
        self._finalizers: list[Callable[[], None]] = []

    def add_forward_hook(self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False) -> None:
        """Register ``fn`` as a forward hook on ``module`` and keep its handle."""
        self._handles.append(module.register_forward_hook(fn, with_kwargs=with_kwargs))

    def add_pre_hook(self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False, prepend: bool = False) -> None:
        """Register ``fn`` as a forward pre-hook on ``module`` and keep its handle."""
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs, prepend=prepend))

    def on_remove(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the group is removed (restoring a patched weight, say)."""
        self._finalizers.append(fn)

    def __len__(self) -> int:
        return len(self._handles)

    @property
    def active(self) -> bool:
        """Whether anything is still registered."""
        return bool(self._handles or self._finalizers)

    def remove(self) -> None:
        """Remove every hook and run every finalizer of this group; safe to call more than once.

        Raises:
            BaseException: the first error a hook removal or finalizer raised,
                after all the others have run (one failure must not leave the
                rest registered).
        """
        handles, self._handles = self._handles, []
        finalizers, self._finalizers = self._finalizers, []
        first: BaseException | None = None
        for action in [*(h.remove for h in reversed(handles)), *reversed(finalizers)]:
            try:
                action()
            except BaseException as exc:  # noqa: BLE001 - re-raised below once the rest has run
                if first is None:
                    first = exc
        if first is not None:
            raise first

    def __enter__(self) -> HookGroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = f"{len(self._handles)} hooks" if self.active else "removed"
        return f"HookGroup({self.label}, {state})" if self.label else f"HookGroup({state})"
