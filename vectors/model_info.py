"""What a vector records about the model it was made on.

The fingerprint (format 3, written ``fp3:<16 hex>.<16 hex>``) hashes the
architecture's shape and a strided sample of every parameter tensor (64
values each, with the tensor's name and shape) twice: rounded to bfloat16
(the first half), and rounded to float16 then bfloat16 (the second half). Two
fingerprints name one checkpoint when either half agrees, so one checkpoint
loaded in float32 and in bfloat16 agrees on the first half (bf16 rounding is
idempotent), and in float32 and in float16 on the second (so is fp16's); a
fine-tune that changed any tensor (frozen embeddings or not) agrees on
neither. No rounding makes a bf16 and an fp16 copy of a float32 checkpoint
agree: each rounds the same value to a different grid, and the two differ in
about one sampled value in sixteen (where the checkpoint's values are
themselves bfloat16, as in most released models, all three agree). It costs a
few small reads per tensor, not a pass over the weights. Biases a fold
(`hooks.fold`) changed count with their original value, so a model gets the
same fingerprint while it is being steered.

Format 2 (``fp2:<16 hex>``) is format 3's first half alone: files that carry
it are checked against it, so they match float32 and bfloat16 loads only.
Format 1 (16 hex digits, no prefix) hashed 16 rows of the input embedding
only. Files that carry it still load: a model is checked against such a file
with the format-1 hash, and two vectors whose fingerprints have formats that
cannot be compared are not compared (with a warning) rather than called different.
"""

from __future__ import annotations

import hashlib
import re
import warnings
import weakref
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import Tensor, nn

from steering.hooks import LayerError, SteeringError, offloaded_tensor
from steering.hooks import num_layers as count_layers
from steering.hooks.fold import unfolded_parameters
from steering.hooks.sites import site_module

UNKNOWN = "unknown"  # a metadata field nobody recorded (model, fingerprint, method, ...)


class VectorMismatchError(SteeringError, ValueError):
    """Two vectors, or a vector and a model, that do not belong together."""


FINGERPRINT_VERSION = 3
_KNOWN_VERSIONS = (1, 2, 3)
_SAMPLES_PER_TENSOR = 64
_VERSIONED = re.compile(r"fp(\d+):(.+)")


def text_config(model: nn.Module):  # -> PretrainedConfig
    """The text part of the model's config (multimodal configs nest it)."""
    config: Any = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream."""
    return int(text_config(model).hidden_size)


_width = hidden_size  # check_fits takes a keyword of that name


def model_name(model: nn.Module) -> str:
    """A human-readable model id: registry name, hub id or folder path."""
    name = getattr(model.config, "_name_or_path", "") or ""
    return str(name) or type(model).__name__


def fingerprint_version(fingerprint: str) -> int:
    """The format of a fingerprint: ``N`` for ``fpN:...``, 1 for the unprefixed original format."""
    match = _VERSIONED.fullmatch(fingerprint)
    return int(match.group(1)) if match else 1


@torch.no_grad()
def model_fingerprint(model: nn.Module, version: int = FINGERPRINT_VERSION) -> str:
    """A short hash that tells checkpoints apart (see module docs).

    Args:
        model: a Hugging Face model.
        version: the fingerprint format; 1 and 2 reproduce what older files recorded.

    Raises:
        ValueError: for a format this library cannot compute.

    Example:
        >>> model_fingerprint(model)  # doctest: +SKIP
        'fp3:3f0c9a1be27d4410.9b01e6f2a4c8d317'
    """
    config = text_config(model)
    digest = hashlib.sha256()
    shape = (getattr(config, "model_type", ""), hidden_size(model), count_layers(model), getattr(config, "vocab_size", 0))
    digest.update(repr(shape).encode())
    if version == 1:
        _digest_v1(digest, cast(Any, model).get_input_embeddings().weight)
        return digest.hexdigest()[:16]
    if version not in _KNOWN_VERSIONS:
        raise ValueError(f"fingerprint format {version} is not known to this library (it computes {_KNOWN_VERSIONS})")
    samples: list[Tensor] = []
    offloaded = _OFFLOADED_SAMPLES.setdefault(model, {})
    for name, param in unfolded_parameters(model):
        digest.update(f"{name}{tuple(param.shape)};".encode())
        if param.device.type == "meta":  # offloaded by accelerate: sampled where it keeps the value, once
            if name not in offloaded:
                value = offloaded_tensor(model, name)
                if value is None:  # an empty model (init_empty_weights, not loaded yet): shape only
                    continue
                offloaded[name] = _sample(value)
            samples.append(offloaded[name])
        elif param.numel():
            samples.append(_sample(param))
    halves = []
    # One transfer to the CPU for all tensors (they may live on several devices).
    joined = torch.cat([s.to(samples[0].device) for s in samples]).to("cpu") if samples else None
    for via in (torch.bfloat16, torch.float16)[: version - 1]:
        half = digest.copy()
        if joined is not None:
            # float16 rounds first where a float16 load would (subnormals and overflow included).
            half.update(joined.to(via).to(torch.bfloat16).float().numpy().tobytes())
        halves.append(half.hexdigest()[:16])
    return f"fp{version}:{'.'.join(halves)}"


# Samples of offloaded weights, per model: reading them back from disk costs a full tensor
# each, and `steer` checks the fingerprint on every call. Offloaded weights cannot change
# in place (they live in accelerate's weights map), so the samples stay valid.
_OFFLOADED_SAMPLES: weakref.WeakKeyDictionary[nn.Module, dict[str, Tensor]] = weakref.WeakKeyDictionary()


def _sample(tensor: Tensor) -> Tensor:
    """Up to `_SAMPLES_PER_TENSOR` evenly strided float32 values of ``tensor`` (empty for an empty one)."""
    flat = tensor.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // _SAMPLES_PER_TENSOR)][:_SAMPLES_PER_TENSOR].float()


def _digest_v1(digest: hashlib._Hash, embeddings: Tensor) -> None:
    if embeddings.device.type != "meta":
        step = max(1, embeddings.shape[0] // 16)
        sample = embeddings[::step][:16].detach().to("cpu", torch.bfloat16).float()
        digest.update(sample.numpy().tobytes())


def fingerprint_mismatch(fingerprint: str, model: nn.Module) -> str | None:
    """The model's fingerprint where it differs from ``fingerprint``, else ``None``.

    The model is hashed in ``fingerprint``'s own format. ``unknown`` never
    mismatches; a format this library cannot compute is skipped with a warning.
    """
    if fingerprint == UNKNOWN:
        return None
    version = fingerprint_version(fingerprint)
    if version not in _KNOWN_VERSIONS:
        warnings.warn(
            f"fingerprint {fingerprint!r} has format {version}, which this library cannot compute: not checked",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    actual = model_fingerprint(model, version)
    return None if _agree(fingerprint, actual) else actual


def _halves(fingerprint: str) -> list[str]:
    match = _VERSIONED.fullmatch(fingerprint)
    return match.group(2).split(".") if match else [fingerprint]


def _agree(a: str, b: str) -> bool:
    """Two fingerprints of one format agree: equal, or (format 3) equal in either half."""
    return a == b or any(x == y for x, y in zip(_halves(a), _halves(b), strict=False))


def same_checkpoint(a: str, b: str) -> bool | None:
    """Whether two recorded fingerprints name one checkpoint; ``None`` when that cannot be told.

    ``None`` for an ``unknown`` fingerprint, and (with a warning) for two
    formats that hash different things (1 and 2 or 3), where unequal strings
    prove nothing. Format 3 agrees with itself in either half, and with
    format 2 in its first.
    """
    if UNKNOWN in (a, b):
        return None
    versions = {fingerprint_version(a), fingerprint_version(b)}
    if versions == {2, 3}:  # format 2 is format 3's first half (so it tells float16 copies apart, as it always did)
        return _halves(a)[0] == _halves(b)[0]
    if len(versions) > 1:
        warnings.warn(
            f"fingerprints {a!r} and {b!r} have different formats and cannot be compared; "
            "re-extract or re-save the older vector to check that both come from one model",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return _agree(a, b)


def check_fits(
    model: nn.Module,
    *,
    hidden_size: int,
    layers: Iterable[int],
    site: str,
    fingerprint: str = UNKNOWN,
    made_on: str = UNKNOWN,
    num_layers: int | None = None,
    check_model: bool = True,
    override: str = "pass check_model=False to use it anyway",
) -> None:
    """The one "does this vector fit this model" check (`steer`, `load_vector`, `import_gguf`/`import_pt`).

    Sizes are always checked: the width, that every layer exists, and that
    the model has the site (OPT has no ``mlp_output``). With ``check_model``
    the recorded ``fingerprint`` is compared in its own format
    (`fingerprint_mismatch`), and a recorded layer count ``num_layers``, when
    given, must equal the model's.

    Args:
        model: the model the vector is meant for.
        hidden_size, layers, site, fingerprint, made_on, num_layers: what the
            vector (or file) records.
        check_model: also compare fingerprint and layer count (the provenance checks).
        override: how to skip the provenance checks, for the messages.

    Raises:
        VectorMismatchError: a different width, layer count or checkpoint.
        LayerError: a layer out of range, or a site the model lacks.

    Example:
        >>> check_fits(model, hidden_size=576, layers=[12], site="block_output")  # doctest: +SKIP
    """
    name = model_name(model)
    width = _width(model)
    if hidden_size != width:
        raise VectorMismatchError(f"hidden size {hidden_size} does not match the model's {width} (model {name!r})")
    depth = count_layers(model)
    wanted = sorted(layers)
    bad = [i for i in wanted if not 0 <= i < depth]
    if bad:
        raise LayerError(f"layers {bad} are out of range for a model with {depth} layers (model {name!r})")
    if wanted:
        site_module(model, wanted[0], site)  # an unknown site, or a block without that submodule
    if not check_model:
        return
    if num_layers is not None and num_layers != depth:
        raise VectorMismatchError(f"num_layers {num_layers} does not match model {name!r} ({depth} layers); {override}")
    actual = fingerprint_mismatch(fingerprint, model)
    if actual is not None:
        raise VectorMismatchError(
            f"the vector was made on {made_on!r} (fingerprint {fingerprint}), but the model is {name!r} "
            f"(fingerprint {actual}): another checkpoint, whose activation space differs; {override}"
        )
