"""transformers' KV-cache calling conventions, recognised in one place.

Releases name the cache argument of a decoder's ``forward`` differently:
``past_key_values`` up to 5.23, ``cache`` from 5.24 (the old name still works
there, with a deprecation warning, until 5.40). Older releases also passed
``cache_position``. Everything that reads or passes a cache goes through this
module, and a convention it does not know is an error, never a silent 0:
position-targeted steering would otherwise patch the wrong tokens.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from .errors import LayerError

# Newest first: `cache_kwargs` passes the first one a forward declares.
CACHE_KEYWORDS: tuple[str, ...] = ("cache", "past_key_values")


def forward_parameters(module: nn.Module) -> list[str]:
    """Names of the parameters ``module.forward`` declares, in order (``self`` excluded).

    A forward replaced by a bare ``(*args, **kwargs)`` wrapper (a test spy, a
    profiler) names nothing; then the class's own forward is read, which is
    what the wrapper ends up calling.
    """
    for forward in (module.forward, getattr(type(module), "forward", None)):
        try:
            params = inspect.signature(forward).parameters  # type: ignore[arg-type]
        except (TypeError, ValueError):  # a builtin or C forward: nothing to read
            continue
        named = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"]
        if named:
            return named
    return []


def cache_keyword(module: nn.Module) -> str:
    """The name under which ``module.forward`` takes the KV cache.

    Raises:
        LayerError: when the forward declares none of the names in `CACHE_KEYWORDS`
            (a transformers release or custom model with a convention this
            framework does not know yet).
    """
    names = forward_parameters(module)
    for name in CACHE_KEYWORDS:
        if name in names:
            return name
    shown = ", ".join(names) if names else "none readable"
    raise LayerError(
        f"{type(module).__name__}.forward takes no KV cache under a known name "
        f"({' / '.join(CACHE_KEYWORDS)}); its parameters: {shown}. Position-dependent steering "
        "cannot tell prompt from generated tokens with this transformers version or model; "
        "use positions='all' or report the version"
    )


def cache_kwargs(model: nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for calling ``model`` with ``cache``, under the name its forward declares."""
    return {cache_keyword(model): cache}


def cache_length(cache: Any) -> int | Tensor:
    """Tokens held by ``cache`` (a transformers `Cache` or a legacy tuple of tuples).

    A 0-d tensor is returned as it is: a static cache counts in a tensor so that
    compiled graphs need not be specialised per step.

    Raises:
        LayerError: for an object that is neither.
    """
    if hasattr(cache, "get_seq_length"):
        length = cache.get_seq_length()
        return length if isinstance(length, Tensor) else int(length)
    if isinstance(cache, (tuple, list)):
        if not cache:
            return 0
        try:  # legacy tuple-of-tuples cache: [layer][key/value] -> [batch, heads, seq, dim]
            return int(cache[0][0].shape[-2])
        except (IndexError, TypeError, AttributeError):
            pass
    raise LayerError(f"unrecognised KV cache object {type(cache).__name__}: it has no get_seq_length()")


def past_offset(kwargs: dict[str, Any]) -> int | Tensor | None:
    """Tokens already in the cache given to a forward call, or ``None`` if it names no cache.

    Reads ``cache_position`` (older releases), then the cache under any name of
    `CACHE_KEYWORDS`. ``None`` means the call passed no cache argument at all
    (the caller decides whether that is allowed); an explicit ``None`` cache
    means an empty one.
    """
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, Tensor) and cache_position.numel():
        return cache_position[0]
    found = False
    for name in CACHE_KEYWORDS:
        if name in kwargs:
            found = True
            if kwargs[name] is not None:
                return cache_length(kwargs[name])
    return 0 if found else None


def output_cache(output: Any) -> Any:
    """The cache a model call returned (``output.cache`` from 5.24, ``output.past_key_values`` before)."""
    for name in CACHE_KEYWORDS:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    raise LayerError(f"{type(output).__name__} returned no KV cache under a known name ({' / '.join(CACHE_KEYWORDS)})")
