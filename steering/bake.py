"""Bake a fixed steering into a model's weights: a Hugging Face folder any tool can load.

``mode="add"`` folds ``coef * v[i]`` into the bias of block ``i``'s last MLP
linear layer, the placement `hooks.fold` uses at run time (`fold_target`), so
it is exact wherever folding is. A layer without that bias gets one through
the config switch its architecture already has (`BIAS_SWITCHES`, Llama's
``mlp_bias``); the other biases the switch creates are written as zeros. An
architecture with no such switch, a site other than ``block_output`` /
``mlp_output`` and Gemma 2/3 at ``block_output`` (a norm follows the MLP) are
refused: a plain ``from_pretrained`` could not reproduce the steering.

``mode="ablate"`` is weight orthogonalisation, as in the refusal-direction
work (Arditi et al. 2024): the vector's direction at one layer is projected
out of every matrix that writes to the residual stream (token and position
embeddings, each block's attention output and MLP output projections, and
their biases), so no activation ever has a component along it. That equals
``st.steer(mode="ablate")`` with the direction at ``block_input`` of layer 0
and at ``attn_output`` and ``mlp_output`` of every layer (`ablation_vectors`
builds those), not ablation at one ``block_output``. Tied input/output
embeddings are untied (the output head keeps the original weights). Gemma 2/3
normalise attention and MLP outputs before the residual add, so they are
refused.

The folder holds ``config.json``, ``model.safetensors``, the generation config,
the tokenizer when given, and ``steering_bake.json`` recording what was baked
(mode, coef, layers, site, the vector file's SHA-256 and metadata, the config
switches turned on).

Example:
    >>> st.bake(model, "sentiment.safetensors", coef=4.0, out="smollm2-happy", tokenizer=tok)  # doctest: +SKIP
    >>> # AutoModelForCausalLM.from_pretrained("smollm2-happy") is steered, without steering installed
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from steering.hooks import SteeringError, decoder_layers, num_layers
from steering.hooks.fold import fold_target
from steering.hooks.patch import span_basis
from steering.vectors import SteeringVector

from .apply import build_deltas

BakeMode = Literal["add", "ablate"]
BAKE_MODES: tuple[str, ...] = get_args(BakeMode)
BAKE_FILE = "steering_bake.json"
BAKE_FORMAT_VERSION = "1"

# block class -> config attribute that gives its last MLP linear layer a bias
BIAS_SWITCHES: dict[str, str] = {"LlamaDecoderLayer": "mlp_bias"}

# block class -> (attention output projection, MLP output projection): what a block writes to the residual stream
RESIDUAL_WRITERS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer", "GemmaDecoderLayer", "Phi3DecoderLayer"),
        ("self_attn.o_proj", "mlp.down_proj"),
    ),
    "GPT2Block": ("attn.c_proj", "mlp.c_proj"),
    "GPTNeoXLayer": ("attention.dense", "mlp.dense_4h_to_h"),
    "OPTDecoderLayer": ("self_attn.out_proj", "fc2"),
}


class BakeError(SteeringError, ValueError):
    """The steering cannot be baked into this model's weights exactly."""


def bake(
    model: nn.Module,
    vector: SteeringVector | str | Path,
    coef: float = 1.0,
    *,
    out: str | Path,
    tokenizer: Any = None,
    mode: BakeMode = "add",
    layers: Iterable[int] | None = None,
    check_model: bool = True,
) -> Path:
    """Write ``model`` with ``vector`` baked into its weights as a Hugging Face folder.

    ``model`` itself is not changed.

    Args:
        model: a Hugging Face decoder-only model in eval mode.
        vector: a `SteeringVector` or the path of a vector file (its SHA-256 is recorded).
        coef: multiplier for ``mode="add"`` (ignored for ablate), as in `steer`.
        out: the folder to write (created; files of the same name are replaced).
        tokenizer: saved into the folder when given, so it is complete on its own.
        mode: ``add`` (into biases) or ``ablate`` (weight orthogonalisation).
        layers: restrict to these layers of the vector; ablate needs exactly one.
        check_model: compare the vector's model fingerprint with ``model``.

    Returns:
        ``out`` as a `Path`.

    Raises:
        BakeError: an architecture, site or layer where baking would not be
            exact, an unknown mode, or ablate with several layers; nothing is written.
        SteeringError: a bad coef or a vector that does not fit the model.

    Example:
        >>> bake(model, vec, 4.0, out="baked", tokenizer=tok, layers=[12])  # doctest: +SKIP
        PosixPath('baked')
    """
    if mode not in BAKE_MODES:
        raise BakeError(f"unknown mode {mode!r}; choose one of {', '.join(BAKE_MODES)}")
    if model.training:
        raise BakeError("the model is in training mode; call model.eval() before baking (dropout would scale a bias)")
    source = None
    if not isinstance(vector, SteeringVector):
        source = Path(vector)
        vector = SteeringVector.load(source, model, allow_model_mismatch=not check_model)
    if mode == "add":
        tensors, switches, record = _add(model, vector, coef, layers, check_model)
    else:
        tensors, switches, record = _ablate(model, vector, layers, check_model)
    record.update(
        format="steering-bake",
        format_version=BAKE_FORMAT_VERSION,
        mode=mode,
        vector_file=None if source is None else str(source),
        vector_sha256=None if source is None else hashlib.sha256(source.read_bytes()).hexdigest(),
        vector_content_sha256=_content_hash(vector),
        vector_metadata=vector.metadata(),
        config_changes=switches,
    )
    return _write(model, tokenizer, tensors, switches, Path(out), record)


def ablation_vectors(model: nn.Module, vector: SteeringVector, layer: int | None = None) -> list[SteeringVector]:
    """The vectors whose ``st.steer(mode="ablate")`` equals ``bake(mode="ablate")``.

    One direction (``vector`` at ``layer``, default its only layer) at
    ``block_input`` of layer 0 and at ``attn_output`` and ``mlp_output`` of
    every layer: the residual stream never holds it.

    Example:
        >>> with contextlib.ExitStack() as stack:  # doctest: +SKIP
        ...     for v in ablation_vectors(model, vec):
        ...         stack.enter_context(st.steer(model, v, mode="ablate"))
    """
    direction = _one_direction(vector, None if layer is None else [layer])
    every = {i: direction for i in range(num_layers(model))}
    return [
        dataclasses.replace(vector, directions={0: direction}, site="block_input"),
        dataclasses.replace(vector, directions=every, site="attn_output"),
        dataclasses.replace(vector, directions=every, site="mlp_output"),
    ]


# ------------------------------------------------------------------- add
def _add(
    model: nn.Module, vector: SteeringVector, coef: float, layers: Iterable[int] | None, check_model: bool
) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    deltas, site = build_deltas(model, vector, coef, layers=layers, check_model=check_model)
    names = _module_names(model)
    blocks = decoder_layers(model)
    tensors: dict[str, Tensor] = {}
    switches: dict[str, Any] = {}
    for layer, delta in deltas.items():
        target = fold_target(model, layer, site)
        if isinstance(target, str):
            raise BakeError(f"cannot bake layer {layer} at {site}: {target}; baking would not be exact")
        bias = getattr(target, "bias", None)
        if bias is None:
            kind = type(blocks[layer]).__name__
            switch = BIAS_SWITCHES.get(kind)
            if switch is None:
                raise BakeError(
                    f"cannot bake layer {layer}: {kind}.{names[id(target)].rsplit('.', 1)[-1]} has no bias and its config has no "
                    f"switch to add one (known: {', '.join(f'{k}.{v}' for k, v in BIAS_SWITCHES.items())}), "
                    "so a plain from_pretrained could not load the steered weights"
                )
            switches[switch] = True
            bias = torch.zeros_like(delta)
        weight = target.weight
        assert isinstance(weight, Tensor)
        tensors[f"{names[id(target)]}.bias"] = (bias.detach().double() + delta.double()).to(weight.dtype)
    record = {"coef": coef, "layers": sorted(deltas), "site": site}
    return tensors, switches, record


# ---------------------------------------------------------------- ablate
def _one_direction(vector: SteeringVector, layers: Iterable[int] | None) -> Tensor:
    chosen = vector.layers if layers is None else sorted(set(layers))
    if len(chosen) != 1:
        raise BakeError(
            f"ablate bakes one direction into every layer (weight orthogonalisation); the vector has layers {chosen}: "
            "pick one with layers=[i]"
        )
    (layer,) = chosen
    if layer not in vector.directions:
        raise BakeError(f"layer {layer} is not in the vector (it has {vector.layers})")
    return vector.directions[layer]


def _ablate(
    model: nn.Module, vector: SteeringVector, layers: Iterable[int] | None, check_model: bool
) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    deltas, site = build_deltas(model, vector, 1.0, layers=layers, check_model=check_model)  # the fit checks
    direction = _one_direction(vector, list(deltas))
    layer = next(iter(deltas))
    basis = span_basis(direction)  # [1, d], float64, unit norm
    hidden = basis.shape[1]
    names = _module_names(model)
    blocks = decoder_layers(model)
    inside = {id(m) for block in blocks for m in block.modules()}
    tensors: dict[str, Tensor] = {}
    switches: dict[str, Any] = {}

    embedding = model.get_input_embeddings()  # type: ignore[operator]
    if not isinstance(embedding, nn.Embedding):
        raise BakeError(f"cannot ablate: the input embeddings are a {type(embedding).__name__}, not an nn.Embedding")
    for module in model.modules():
        if isinstance(module, nn.Embedding) and id(module) not in inside:
            if module.embedding_dim != hidden:
                raise BakeError(
                    f"cannot ablate: {names[id(module)]} has width {module.embedding_dim}, not the residual width {hidden} "
                    "(another layer projects it into the residual stream)"
                )
            tensors[f"{names[id(module)]}.weight"] = _project_rows(module.weight, basis)
    output = model.get_output_embeddings()  # type: ignore[operator]
    if output is not None and output.weight is embedding.weight:
        switches["tie_word_embeddings"] = False  # the head keeps reading the original vocabulary directions
        tensors[f"{names[id(output)]}.weight"] = output.weight.detach().clone()

    for index, block in enumerate(blocks):
        kind = type(block).__name__
        paths = RESIDUAL_WRITERS.get(kind)
        if paths is None:
            why = (
                "normalises its attention and MLP outputs before the residual add"
                if kind.startswith(("Gemma2", "Gemma3"))
                else "is not in steering.bake.RESIDUAL_WRITERS"
            )
            raise BakeError(f"cannot ablate by weight orthogonalisation: {kind} {why}; baking would not be exact")
        for path in paths:
            module = block.get_submodule(path)
            name = names[id(module)]
            weight, bias = module.weight, module.bias
            assert isinstance(weight, Tensor) and (bias is None or isinstance(bias, Tensor))
            if type(module).__name__ == "Conv1D":  # GPT-2: weight is [in, out]
                tensors[f"{name}.weight"] = _project_rows(weight, basis)
            elif isinstance(module, nn.Linear):
                tensors[f"{name}.weight"] = _project_rows(weight.T, basis).T.contiguous()
            else:
                raise BakeError(f"cannot ablate: layer {index} {name} is a {type(module).__name__}, not a linear layer")
            if bias is not None:
                tensors[f"{name}.bias"] = _project_rows(bias[None], basis)[0]
    record = {"coef": None, "layers": [layer], "site": site, "direction_layer": layer}
    return tensors, switches, record


def _project_rows(matrix: Tensor, basis: Tensor) -> Tensor:
    """``matrix`` (``[n, d]``) with the span of ``basis`` (``[k, d]``, orthonormal) removed from each row."""
    m = matrix.detach().double()
    return (m - (m @ basis.T) @ basis).to(matrix.dtype)


# ----------------------------------------------------------------- write
def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules(remove_duplicate=False) if n}


def _content_hash(vector: SteeringVector) -> str:
    digest = hashlib.sha256()
    for layer in vector.layers:
        digest.update(f"{vector.site}:{layer}:".encode())
        digest.update(vector.directions[layer].detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _write(
    model: nn.Module, tokenizer: Any, tensors: dict[str, Tensor], switches: dict[str, Any], out: Path, record: dict[str, Any]
) -> Path:
    from safetensors.torch import save_file

    config: Any = copy.deepcopy(model.config)
    for key, value in switches.items():
        setattr(config, key, value)
    state = dict(model.state_dict())
    state.update(tensors)
    # What the loader will expect under the new config: a bias a switch created is zero.
    with torch.device("meta"):
        skeleton = type(model)(config)
    expected = skeleton.state_dict()
    for key, meta in expected.items():
        if key not in state:
            if not key.endswith(".bias"):
                raise BakeError(f"the baked config expects a tensor {key!r} the model does not have")
            state[key] = torch.zeros(meta.shape, dtype=meta.dtype)
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise BakeError(f"baked tensors {unknown} have no place in {type(model).__name__} under the new config")
    out.mkdir(parents=True, exist_ok=True)
    save_file(_unshared({k: v for k, v in state.items() if k in expected}), str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    generation: Any = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / BAKE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out


def _unshared(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """One entry per storage (tied weights are written once, as `from_pretrained` expects), contiguous, on the CPU."""
    seen: set[tuple[int, object]] = set()
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.device.type != "meta" and ident in seen:
            continue
        seen.add(ident)
        out[key] = tensor.detach().to("cpu").contiguous()
    return out
