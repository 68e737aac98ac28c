"""Small test utilities shared by several test modules."""

from __future__ import annotations

import torch
from torch import nn

import steering as st
from steering import hooks


def hook_count(model: nn.Module) -> int:
    """Every forward and pre-forward hook registered anywhere in ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def random_vector(model: nn.Module, layers, *, scale: float = 3.0, seed: int = 0, site: str = "block_output") -> st.SteeringVector:
    """A seeded random `SteeringVector` that fits ``model`` (fingerprint included)."""
    width = model.config.get_text_config().hidden_size
    gen = torch.Generator().manual_seed(seed)
    return st.SteeringVector(
        {i: torch.randn(width, generator=gen) * scale for i in layers},
        hidden_size=width,
        num_layers=hooks.num_layers(model),
        model_fingerprint=st.model_fingerprint(model),
        site=site,
    )
