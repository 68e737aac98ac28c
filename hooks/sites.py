"""The hook sites: where in decoder block ``i`` a vector is read or written.

=============  ====================================================  ==========
site           what it is                                            hook kind
=============  ====================================================  ==========
block_output   residual stream after block i (HF hidden_states[i+1])  forward
block_input    residual stream entering block i (hidden_states[i])    pre
attn_output    output of block i's attention module, before the add  forward
mlp_output     output of block i's MLP module, before the add        forward
=============  ====================================================  ==========

All tensors are ``[batch, seq, d_model]``. On Gemma 2/3 the attention and MLP
outputs are read before the post-attention / post-feedforward norms.
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

from .errors import LayerError
from .layers import decoder_layers

Site = Literal["block_output", "block_input", "attn_output", "mlp_output"]
SITES: tuple[str, ...] = get_args(Site)

# Submodule names by architecture family: Llama-likes use self_attn/mlp, GPT-2
# attn/mlp, GPT-NeoX attention/mlp. OPT has no MLP module (its fc1/fc2 work on
# flattened [batch*seq, d] tensors), so it has no mlp_output site.
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


def check_site(site: str) -> str:
    """Return ``site`` if it is a known site, else raise a `LayerError` listing them."""
    if site not in SITES:
        raise LayerError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    return site


def site_module(model: nn.Module, layer: int, site: str) -> tuple[nn.Module, bool]:
    """Return ``(module, is_pre_hook)`` for ``site`` of block ``layer``.

    Raises:
        LayerError: for an unknown site, or a block without the needed submodule.
    """
    check_site(site)
    block = decoder_layers(model)[layer]
    if site == "block_output":
        return block, False
    if site == "block_input":
        return block, True
    names = _ATTN_NAMES if site == "attn_output" else _MLP_NAMES
    for name in names:
        sub = getattr(block, name, None)
        if isinstance(sub, nn.Module):
            return sub, False
    raise LayerError(f"{type(block).__name__} has none of the submodules {', '.join(names)} needed for site {site!r}")
