"""Vectors from other tools: llama.cpp / repeng control-vector GGUF and CAA-style ``.pt``.

Layer numbering
---------------
Our layer ``i`` is the output of decoder block ``i`` (0-based), the
``block_output`` site. Both foreign formats use the same index:

- llama.cpp adds tensor ``direction.N`` to the output of block ``N`` (the
  ``l_out-N`` tensor of its graph; ``llama_adapter_cvec::apply`` copies file
  layer ``N`` into ``tensors[N]`` and the graph adds ``tensors[il]`` after
  block ``il``). Its loader rejects ``direction.0`` ("invalid (zero) direction
  tensor layer index"): block 0's output cannot be steered there.
- repeng keys ``ControlVector.directions`` by block index too (it reads
  ``hidden_states[layer + 1]``, the output of block ``layer``, and patches
  ``model.layers[layer]``) and writes ``direction.{layer}`` unchanged.
- CAA (``nrimsky/CAA``) saves ``vec_layer_{layer}_{model}.pt``, read from the
  output of ``model.layers[layer]``.

So ``direction.N`` and ``vec_layer_N`` both become our layer ``N``, unshifted;
the only difference is that a file meant for llama.cpp must not use layer 0
(`export_gguf` refuses it unless told the file is not for llama.cpp).

Metadata
--------
Foreign files lack most of what a `SteeringVector` records. What the user
passes (``model=`` a loaded model, or ``model_id``/``num_layers``) fills the
gaps; the rest is ``"unknown"``, and ``extra`` records where the vector came
from (``source_format``, ``source_file``, ``model_hint``, and
``num_layers_source=inferred`` when the layer count was guessed from the
highest layer). GGUF files written by `export_gguf` also carry our full
metadata under ``steering.*`` keys, so our own round trip loses nothing.
Loading onto a model always checks the hidden size and the layer range.

Example:
    >>> export_gguf(vec.select([6, 12]), "sentiment.gguf")  # doctest: +SKIP
    >>> # llama-cli -m model.gguf --control-vector-scaled sentiment.gguf 4.0
    >>> theirs = import_gguf("repeng_happy.gguf", model)  # doctest: +SKIP
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steering.hooks import num_layers as model_num_layers

from .io import FORMAT, VectorFileError, atomic_write, check_file_fits
from .model_info import model_fingerprint, model_name, text_config
from .vector import UNKNOWN, SteeringVector, load_vector

ARCH = "controlvector"
_DIRECTION = re.compile(r"direction\.(\d+)")
_CAA_FILE = re.compile(r"vec_layer_(\d+)(?:_(.+))?\.pt")
_OUR_PREFIX = "steering."
_INT_FIELDS = ("hidden_size", "num_layers", "n_pairs")
_STR_FIELDS = ("model", "model_fingerprint", "site", "method", "read", "dataset_sha256")


# ----------------------------------------------------------------------- GGUF
def export_gguf(vector: SteeringVector, path: str | Path, *, model_hint: str | None = None, llama_cpp: bool = True) -> Path:
    """Write ``vector`` as a llama.cpp / repeng control vector (GGUF), atomically.

    Tensors ``direction.{i}`` (float32, ``[hidden_size]``) for each layer ``i``;
    keys ``general.architecture=controlvector``, ``controlvector.model_hint``
    and ``controlvector.layer_count`` (as repeng writes them), plus our
    metadata as ``steering.*`` strings, which llama.cpp ignores.

    Args:
        vector: a ``block_output`` vector (llama.cpp adds directions to block outputs).
        path: the ``.gguf`` file to write.
        model_hint: the hint string (default: the vector's model id).
        llama_cpp: the file is meant for llama.cpp, whose loader rejects
            ``direction.0``; pass False to write layer 0 for repeng.

    Raises:
        VectorFileError: a site other than ``block_output``, or layer 0 with ``llama_cpp``.

    Example:
        >>> export_gguf(vec, "happy.gguf")  # doctest: +SKIP
    """
    import gguf

    path = Path(path)
    if vector.site != "block_output":
        raise VectorFileError(
            f"{path}: control-vector GGUF holds block outputs only (llama.cpp adds direction.N after block N); "
            f"this vector's site is {vector.site!r}"
        )
    if llama_cpp and 0 in vector.directions:
        raise VectorFileError(
            f"{path}: layer 0 cannot be written for llama.cpp, whose loader rejects 'direction.0' "
            f"(no slot for block 0); drop it with vector.select({[i for i in vector.layers if i]}) "
            "or pass llama_cpp=False to write it for repeng"
        )
    hint = model_hint if model_hint is not None else vector.model
    metadata = {**vector.metadata(), "format": FORMAT, "format_version": "1"}

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(vector.directions))
        for key, value in sorted(metadata.items()):
            writer.add_string(_OUR_PREFIX + key, value)
        for layer, tensor in vector.directions.items():
            writer.add_tensor(f"direction.{layer}", tensor.numpy().astype(np.float32, copy=True))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(path, write, suffix=".gguf.tmp")


def import_gguf(
    path: str | Path,
    model: Any = None,
    *,
    model_id: str | None = None,
    num_layers: int | None = None,
    allow_model_mismatch: bool = False,
) -> SteeringVector:
    """Read a llama.cpp / repeng control-vector GGUF as a `SteeringVector`.

    ``direction.N`` becomes layer ``N`` (see the module docs on numbering).

    Args:
        path: the ``.gguf`` file.
        model: optional model it is for: fills in model id, fingerprint and
            layer count, and checks hidden size, layer range and model hint.
        model_id: model id to record when no model is given (else ``unknown``).
        num_layers: the model's layer count when no model is given (else
            inferred from the highest layer and marked so in ``extra``).
        allow_model_mismatch: accept a hint or fingerprint naming another model.

    Raises:
        VectorFileError: naming the file and field or tensor, for an unreadable
            file, another architecture, a bad tensor name, type or shape,
            non-finite values, or a model it does not fit.

    Example:
        >>> vec = import_gguf("happy.gguf", model)  # doctest: +SKIP
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError, OverflowError) as exc:  # what gguf raises on bad bytes
        raise VectorFileError(f"{path}: not a readable GGUF file ({exc})") from None
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    arch = fields.get("general.architecture")
    if arch != ARCH:
        raise VectorFileError(f"{path}: field 'general.architecture' is {arch!r}, expected {ARCH!r} (not a control vector)")

    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        match = _DIRECTION.fullmatch(tensor.name)
        if match is None:
            raise VectorFileError(f"{path}: unexpected tensor {tensor.name!r} (expected names like 'direction.12')")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise VectorFileError(f"{path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, expected F32")
        data = np.asarray(tensor.data)
        if data.ndim != 1:
            raise VectorFileError(f"{path}: tensor {tensor.name!r} has shape {data.shape}, expected one dimension")
        directions[int(match.group(1))] = torch.from_numpy(data.astype(np.float32, copy=True))
    ours = {k[len(_OUR_PREFIX) :]: str(v) for k, v in fields.items() if k.startswith(_OUR_PREFIX)}
    extra = {"source_format": "gguf-controlvector", "source_file": path.name}
    if f"{ARCH}.model_hint" in fields:
        extra["model_hint"] = str(fields[f"{ARCH}.model_hint"])
    return _build(path, directions, ours, extra, model, model_id, num_layers, allow_model_mismatch)


# ------------------------------------------------------------------ CAA .pt
def export_pt(vector: SteeringVector, path: str | Path, *, model_suffix: str | None = None) -> Path:
    """Write ``vector`` as CAA-style ``.pt`` tensors, atomically; returns ``path``.

    A ``path`` ending in ``.pt`` (or ``.pth``) gets one file holding ``{layer: tensor}``;
    any other path is a folder of ``vec_layer_{i}_{model_suffix}.pt`` files,
    one 1-D float32 tensor each, as CAA lays them out (``model_suffix``
    defaults to the last part of the vector's model id; none if unknown).
    In an existing folder, files of the same ``model_suffix`` for layers the
    vector does not have are removed once the new ones are written (`import_pt`
    would otherwise merge them in); other models' files stay.
    Only tensors are written: ``.pt`` has no place for our metadata.

    Example:
        >>> export_pt(vec, "vectors/sentiment")  # doctest: +SKIP
    """
    path = Path(path)
    tensors = {i: t.clone().contiguous() for i, t in vector.directions.items()}
    if path.suffix in (".pt", ".pth"):
        return atomic_write(path, lambda tmp: torch.save(tensors, tmp), suffix=".pt.tmp")
    suffix = model_suffix if model_suffix is not None else ("" if vector.model == UNKNOWN else vector.model.rstrip("/").split("/")[-1])
    path.mkdir(parents=True, exist_ok=True)
    for layer, tensor in tensors.items():
        name = f"vec_layer_{layer}_{suffix}.pt" if suffix else f"vec_layer_{layer}.pt"
        atomic_write(path / name, lambda tmp, t=tensor: torch.save(t, tmp), suffix=".pt.tmp")
    for layer, stale in _caa_files(path).get(suffix, {}).items():
        if layer not in tensors:  # left by an earlier export of another layer set
            stale.unlink()
    return path


def _caa_files(folder: Path) -> dict[str, dict[int, Path]]:
    """``model suffix -> layer -> file`` of the CAA vector files in ``folder``."""
    found: dict[str, dict[int, Path]] = {}
    for file in sorted(folder.glob("*.pt")):
        match = _CAA_FILE.fullmatch(file.name)
        if match:
            found.setdefault(match.group(2) or "", {})[int(match.group(1))] = file
    return found


def import_pt(
    path: str | Path,
    model: Any = None,
    *,
    layer: int | None = None,
    model_suffix: str | None = None,
    model_id: str | None = None,
    num_layers: int | None = None,
    allow_model_mismatch: bool = False,
) -> SteeringVector:
    """Read CAA-style ``.pt`` tensors (``torch.load(weights_only=True)``: no code is unpickled).

    Accepts a folder of ``vec_layer_{i}[_{model}].pt`` files (CAA's layout;
    ``model_suffix`` picks one model where several are present), a file with
    ``{layer: tensor}`` (keys ``12``, ``"12"`` or ``"layers.12"``), or a file
    with one 1-D tensor whose layer is ``layer`` or the ``vec_layer_{i}`` in its name.
    Tensors of other float dtypes become float32 (the original is noted in ``extra``).

    Args:
        model, model_id, num_layers, allow_model_mismatch: as in `import_gguf`.

    Raises:
        VectorFileError: naming the file, for pickled code, unknown layout,
            bad shapes or values, or a model it does not fit.

    Example:
        >>> vec = import_pt("CAA/vectors/sycophancy", model, model_suffix="Llama-2-7b-chat-hf")  # doctest: +SKIP
    """
    path = Path(path)
    extra = {"source_format": "caa-pt", "source_file": path.name}
    names_layers = f"{path}: layer={layer} applies to a file holding one tensor; this {{}} names its layers itself"
    if path.is_dir():
        if layer is not None:
            raise VectorFileError(names_layers.format("folder"))
        found = _caa_files(path)
        if not found:
            raise VectorFileError(f"{path}: no CAA vector files (vec_layer_{{i}}[_{{model}}].pt) in this folder")
        if model_suffix is None and len(found) > 1:
            raise VectorFileError(f"{path}: vectors for several models {sorted(found)}; pick one with model_suffix=")
        suffix = model_suffix if model_suffix is not None else next(iter(found))
        if suffix not in found:
            raise VectorFileError(f"{path}: no files for model_suffix={suffix!r} (found {sorted(found)})")
        directions = {i: _one_tensor(file, _torch_load(file)) for i, file in sorted(found[suffix].items())}
        if suffix:
            extra["model_hint"] = suffix
    elif path.is_file():
        content = _torch_load(path)
        if isinstance(content, Mapping):
            if layer is not None:
                raise VectorFileError(names_layers.format("{layer: tensor} file"))
            directions = {_layer_key(path, key): _one_tensor(path, value, key) for key, value in content.items()}
        else:
            match = _CAA_FILE.fullmatch(path.name)
            if layer is None and match is None:
                raise VectorFileError(f"{path}: holds one tensor but its layer is unknown; pass layer= (or name it vec_layer_<i>.pt)")
            index = layer if layer is not None else int(match.group(1))  # type: ignore[union-attr]
            directions = {index: _one_tensor(path, content)}
            if match is not None and match.group(2):
                extra["model_hint"] = match.group(2)
    else:
        raise VectorFileError(f"{path}: no such .pt file or folder")
    if not directions:
        raise VectorFileError(f"{path}: holds no tensors")
    dtypes = {str(t.dtype).removeprefix("torch.") for t in directions.values()}
    if dtypes != {"float32"}:
        extra["source_dtype"] = ",".join(sorted(dtypes))
    directions = {i: t.float() for i, t in directions.items()}
    return _build(path, directions, {}, extra, model, model_id, num_layers, allow_model_mismatch)


def _torch_load(file: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:  # code, or corrupt bytes
        raise VectorFileError(f"{file}: not loadable as plain tensors with torch.load(weights_only=True) ({exc})") from None


def _layer_key(path: Path, key: Any) -> int:
    text = str(key).removeprefix("layers.")
    if isinstance(key, bool) or not text.isdigit():
        raise VectorFileError(f"{path}: key {key!r} is not a layer index (expected 12, '12' or 'layers.12')")
    return int(text)


def _one_tensor(path: Path, value: Any, key: Any = None) -> torch.Tensor:
    where = f"{path}" + (f" [{key!r}]" if key is not None else "")
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        kind = f"{value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise VectorFileError(f"{where}: expected a float tensor, got {kind}")
    if value.dim() == 2 and value.shape[0] == 1:
        value = value[0]  # [1, d]: a batch of one, as some CAA forks save it
    if value.dim() != 1:
        raise VectorFileError(f"{where}: expected a 1-D tensor [hidden_size], got shape {tuple(value.shape)}")
    return value.detach().clone()


# ------------------------------------------------------------------- common
def _build(
    path: Path,
    directions: dict[int, torch.Tensor],
    ours: dict[str, str],
    extra: dict[str, str],
    model: Any,
    model_id: str | None,
    num_layers: int | None,
    allow: bool,
) -> SteeringVector:
    """Validate foreign tensors and fill in metadata from our keys, the model or the user."""
    if not directions:
        raise VectorFileError(f"{path}: the file holds no direction tensors")
    widths = {int(t.shape[0]) for t in directions.values()}
    if len(widths) > 1:
        raise VectorFileError(f"{path}: direction tensors have different sizes {sorted(widths)}")
    width = widths.pop()
    for layer, tensor in directions.items():
        if not bool(torch.isfinite(tensor).all()):
            raise VectorFileError(f"{path}: layer {layer} contains NaN or inf values")

    fields: dict[str, Any] = {
        "model": UNKNOWN,
        "model_fingerprint": UNKNOWN,
        "site": "block_output",
        "method": UNKNOWN,
        "read": UNKNOWN,
        "n_pairs": 0,
        "dataset_sha256": UNKNOWN,
    }
    if ours.get("format") == FORMAT:  # written by export_gguf: our metadata, verbatim
        if "read" not in ours and "position" in ours:  # written before the rename
            ours["read"] = ours.pop("position")
        try:
            fields.update({k: ours[k] for k in _STR_FIELDS}, n_pairs=int(ours["n_pairs"]))
            file_width, depth = int(ours["hidden_size"]), int(ours["num_layers"])
        except (KeyError, ValueError) as exc:
            raise VectorFileError(f"{path}: steering metadata field {exc} is missing or malformed") from None
        if file_width != width:
            raise VectorFileError(f"{path}: steering.hidden_size {file_width} does not match the tensors' size {width}")
        skip = {"format", "format_version", *_STR_FIELDS, *_INT_FIELDS}
        extra = {**{k: v for k, v in ours.items() if k not in skip}, **extra}
    else:
        depth = num_layers if num_layers is not None else 0
        if model_id is not None:
            fields["model"] = model_id

    if model is not None:
        _check_fits(path, directions, width, fields, extra, model, allow)
        if ours.get("format") != FORMAT:
            fields.update(model=model_id or model_name(model), model_fingerprint=model_fingerprint(model))
        depth = model_num_layers(model)
    if not depth:
        depth = max(directions) + 1
        extra["num_layers_source"] = "inferred"
    if max(directions) >= depth:
        raise VectorFileError(f"{path}: layer {max(directions)} is out of range for num_layers={depth}")
    return SteeringVector(directions, hidden_size=width, num_layers=depth, extra=extra, **fields)


def _check_fits(
    path: Path, directions: dict[int, torch.Tensor], width: int, fields: dict[str, Any], extra: dict[str, str], model: Any, allow: bool
) -> None:
    check_file_fits(
        path,
        model,
        hidden_size=width,
        layers=directions,
        site=fields["site"],
        fingerprint=fields["model_fingerprint"],
        made_on=fields["model"],
        allow=allow,
    )
    if allow:
        return
    name = model_name(model)
    hint = extra.get("model_hint", "")
    model_type = str(getattr(text_config(model), "model_type", "") or "")
    # repeng and llama.cpp write the architecture (config.model_type) as the hint.
    if (
        extra.get("source_format") == "gguf-controlvector"
        and hint
        and model_type
        and hint.lower() != model_type.lower()
        and hint not in name
    ):
        raise VectorFileError(
            f"{path}: controlvector.model_hint {hint!r} does not match model {name!r} (type {model_type!r}); "
            "pass allow_model_mismatch=True to load it anyway"
        )


def read_any_vector(path: str | Path, model: Any = None, **foreign: Any) -> SteeringVector:
    """Load a vector from any supported file, chosen by suffix.

    ``.safetensors`` (ours, `load_vector`), ``.gguf`` (`import_gguf`), ``.pt``
    / ``.pth`` or a folder (`import_pt`). ``foreign`` (``model_id``,
    ``num_layers``, ``layer``, ``model_suffix``) applies to foreign formats only;
    ``layer`` and ``model_suffix`` are `import_pt` options, refused for ``.gguf``.

    Raises:
        VectorFileError: as the reader for the format does, for an unknown
            suffix, or for ``layer=`` / ``model_suffix=`` with a ``.gguf``
            (its tensors ``direction.N`` name their layers; pick some with
            ``vector.select``).

    Example:
        >>> v = read_any_vector("happy.gguf", model_id="smollm2-135m-instruct")  # doctest: +SKIP
    """
    path = Path(path)
    allow = bool(foreign.pop("allow_model_mismatch", False))
    if path.suffix == ".safetensors":
        return load_vector(path, model, allow_model_mismatch=allow)
    if path.suffix == ".gguf":
        pt_only = sorted(k for k in ("layer", "model_suffix") if foreign.pop(k, None) is not None)
        if pt_only:
            raise VectorFileError(
                f"{path}: {', '.join(pt_only)} applies to CAA .pt files only; a GGUF control vector names its own "
                "layers (direction.N): load it whole and pick layers with vector.select([...])"
            )
        return import_gguf(path, model, allow_model_mismatch=allow, **foreign)
    if path.suffix in (".pt", ".pth") or path.is_dir():
        return import_pt(path, model, allow_model_mismatch=allow, **foreign)
    raise VectorFileError(f"{path}: unknown vector file type {path.suffix!r} (expected .safetensors, .gguf, .pt or a CAA folder)")


def write_any_vector(vector: SteeringVector, path: str | Path, **options: Any) -> Path:
    """Save ``vector`` in the format its path names, atomically; the mirror of `read_any_vector`.

    ``.safetensors`` (ours, with all metadata), ``.gguf`` (`export_gguf`;
    options ``model_hint``, ``llama_cpp``), ``.pt`` or any other path as a CAA
    folder (`export_pt`; option ``model_suffix``).

    Example:
        >>> write_any_vector(read_any_vector("happy.gguf", model_id="smollm2"), "happy.safetensors")  # doctest: +SKIP
    """
    path = Path(path)
    gguf_options = {k: options.pop(k) for k in ("model_hint", "llama_cpp") if k in options}
    pt_options = {k: options.pop(k) for k in ("model_suffix",) if k in options}
    if options:
        raise TypeError(f"write_any_vector: unknown options {sorted(options)}")
    if path.suffix == ".safetensors":
        return vector.save(path)
    if path.suffix == ".gguf":
        return export_gguf(vector, path, **gguf_options)
    if path.suffix in (".pt", ".pth") or not path.suffix:
        return export_pt(vector, path, **pt_options)
    raise VectorFileError(f"{path}: unknown vector file type {path.suffix!r} (expected .safetensors, .gguf, .pt or a folder)")
