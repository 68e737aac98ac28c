"""Vectors for lm-evaluation-harness's ``steered`` model type (``lm_eval/models/hf_steered.py``).

The harness reads a ``.pt`` file (``torch.load(weights_only=True)``) holding
``{hookpoint: {"action", "steering_coefficient", "steering_vector", "bias"}}``.
A hookpoint is the name of a module under ``model.base_model`` (``layers.12``
for a Llama decoder layer, ``h.12`` for GPT-2), and the harness registers a
forward hook there that edits the module's output (the first element of a
tuple):

- ``add``: ``output + steering_coefficient * steering_vector`` at every position;
- ``clamp``: the component along the unit direction set to
  ``steering_coefficient``; with coefficient 0 and no bias that is our
  ``mode="ablate"``.

Our sites map onto those hooks: ``block_output`` is the decoder layer itself,
``attn_output`` / ``mlp_output`` its attention / MLP submodule (`hooks.site_module`),
and ``block_input`` of layer ``i > 0`` is the output of layer ``i - 1`` (the
harness has no pre-hooks, so layer 0's input cannot be steered).

Example:
    >>> export_lm_eval(vec, "happy.pt", model, coef=4.0)  # doctest: +SKIP
    >>> # lm_eval --model steered --model_args pretrained=<folder>,steer_path=happy.pt --tasks ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from steering.hooks import site_module

from .coef import check_coef
from .io import VectorFileError, atomic_write
from .vector import SteeringVector


def lm_eval_hookpoint(model: nn.Module, layer: int, site: str) -> str:
    """The harness hookpoint (a module name under ``model.base_model``) for ``site`` of ``layer``.

    Raises:
        VectorFileError: ``block_input`` of layer 0, which the harness cannot steer.

    Example:
        >>> lm_eval_hookpoint(smollm2, 12, "block_output")  # doctest: +SKIP
        'layers.12'
    """
    if site == "block_input":
        if layer == 0:
            raise VectorFileError("lm-eval steers module outputs only: block_input of layer 0 (the embeddings) has no hookpoint")
        layer, site = layer - 1, "block_output"
    module, _ = site_module(model, layer, site)
    base = getattr(model, "base_model", model)
    for name, candidate in base.named_modules():
        if candidate is module:
            return name
    raise VectorFileError(f"layer {layer} {site}: its module is not under model.base_model, where lm-eval looks for hookpoints")


def export_lm_eval(
    vector: SteeringVector,
    path: str | Path,
    model: nn.Module,
    *,
    coef: float = 1.0,
    mode: Literal["add", "ablate"] = "add",
    check_model: bool = True,
) -> Path:
    """Write ``vector`` as lm-evaluation-harness ``steered`` steering config (``.pt``), atomically.

    Args:
        vector: the vector; every layer is written, one hookpoint each.
        path: the ``.pt`` file to write.
        model: the model it will steer (hookpoint names and the fit check).
        coef: the ``steering_coefficient`` of ``add`` (ablate writes ``clamp`` to 0).
        mode: ``add``, or ``ablate`` (the direction projected out, as in `steering.steer`).
        check_model: compare the vector's model fingerprint with ``model``.

    Raises:
        VectorFileError: a path not ending in ``.pt``/``.pth``, an unknown mode,
            or a site the harness cannot hook.
        SteeringError: a bad coef or a vector that does not fit the model.

    Example:
        >>> export_lm_eval(vec.select([12]), "happy.pt", model, coef=4.0)  # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix not in (".pt", ".pth"):
        raise VectorFileError(f"{path}: lm-eval's steered model reads a .pt or .pth file")
    if mode not in ("add", "ablate"):
        raise VectorFileError(f"{path}: unknown mode {mode!r}; choose 'add' or 'ablate'")
    check_coef(coef, vector)
    vector.check_fits(model, check_model=check_model, override="pass check_model=False to export it anyway")
    config: dict[str, dict[str, Any]] = {}
    for layer, direction in vector.directions.items():
        config[lm_eval_hookpoint(model, layer, vector.site)] = {
            "action": "add" if mode == "add" else "clamp",
            "steering_coefficient": float(coef) if mode == "add" else 0.0,
            "steering_vector": direction.detach().float().clone().contiguous(),
            "bias": None,
        }
    return atomic_write(path, lambda tmp: torch.save(config, tmp), suffix=".pt.tmp")
