"""Small test utilities shared by several test modules."""

from __future__ import annotations

from torch import nn


def hook_count(model: nn.Module) -> int:
    """Every forward and pre-forward hook registered anywhere in ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
