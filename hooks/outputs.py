"""One place that knows how a hooked module hands over its hidden states.

Decoder blocks return a bare tensor in current transformers and a tuple
``(hidden, ...)`` in older releases; attention modules return
``(output, weights)``; pre-hooks see ``hidden_states`` either positionally or
as a keyword. Callers get the hidden tensor plus a ``repack`` function that
rebuilds the very same container around a replacement, so no caller ever
writes ``output[0]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from .errors import SteeringError

Repack = Callable[[Tensor], Any]


def unpack(output: Any) -> tuple[Tensor, Repack]:
    """Split a module output into ``(hidden, repack)``.

    ``repack(new_hidden)`` returns an object of the same structure as
    ``output`` with the hidden states replaced.

    Raises:
        SteeringError: if the output holds no tensor where hidden states belong.
    """
    if isinstance(output, Tensor):
        return output, _identity
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        rest = output[1:]
        return output[0], lambda hidden: (hidden, *rest)
    if isinstance(output, list) and output and isinstance(output[0], Tensor):
        rest_list = output[1:]
        return output[0], lambda hidden: [hidden, *rest_list]
    raise SteeringError(f"cannot find hidden states in a module output of type {type(output).__name__}")


def unpack_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Tensor, Callable[[Tensor], tuple[tuple[Any, ...], dict[str, Any]]]]:
    """Split a pre-hook's ``(args, kwargs)`` into ``(hidden, repack)``.

    ``repack(new_hidden)`` returns the ``(args, kwargs)`` pair a
    ``with_kwargs=True`` forward pre-hook must return.
    """
    if args and isinstance(args[0], Tensor):
        rest = args[1:]
        return args[0], lambda hidden: ((hidden, *rest), kwargs)
    hidden = kwargs.get("hidden_states")
    if isinstance(hidden, Tensor):
        return hidden, lambda new: (args, {**kwargs, "hidden_states": new})
    raise SteeringError("cannot find hidden_states among the block's inputs")


def _identity(hidden: Tensor) -> Tensor:
    return hidden
