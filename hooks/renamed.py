"""Keywords renamed in issue 11, accepted under their old names with a warning.

``position`` (where extraction reads a text: ``last`` / ``mean``) is now
``read``, and ``positions`` (which tokens steering changes: ``all`` /
``prompt`` / ``generated``) is now ``apply_to``: two names that cannot be
mistaken for each other. Functions keep the old keyword (default ``None``)
and call `renamed` once, so every layer words the warning the same way.
"""

from __future__ import annotations

import warnings
from typing import TypeVar

T = TypeVar("T")

RENAMED: dict[str, str] = {"position": "read", "positions": "apply_to"}
"""Old keyword (and config key, and file metadata field) -> new one."""


def renamed(new: str, value: T, old_value: T | None, default: T, *, stacklevel: int = 3) -> T:
    """The value of keyword ``new``, taking its old name's ``old_value`` (with a warning) if given.

    Args:
        new: the new keyword (``read`` or ``apply_to``); its old name is looked up in `RENAMED`.
        value: what the caller passed as ``new`` (``default`` when not passed).
        old_value: what the caller passed under the old name (``None`` when not passed).
        default: the default of ``new``, to tell whether both were given.

    Raises:
        TypeError: if both names are given, with different values.

    Warns:
        DeprecationWarning: naming the new keyword, when the old one is used.

    Example:
        >>> renamed("read", "last", None, "last")
        'last'
    """
    if old_value is None:
        return value
    old = next(k for k, v in RENAMED.items() if v == new)
    if value != default and value != old_value:
        raise TypeError(f"{old}= is the old name of {new}=; give only {new}=")
    warnings.warn(f"{old}= is deprecated; use {new}= instead (same values)", DeprecationWarning, stacklevel=stacklevel)
    return old_value
