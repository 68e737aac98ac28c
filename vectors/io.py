"""Safetensors files for steering vectors: atomic writes, validated reads.

Layout: one float32 tensor ``layers.{i}`` of shape ``[hidden_size]`` per layer,
optionally a reference mean ``reference.{i}`` for each of those layers
(format version 2: files with it; files without it are still written as
version 1, so older readers keep reading them), and a string metadata header that describes the vector on its own
(``format=steering-vector``, ``format_version``, model, fingerprint, sizes,
site, method, read (``last``/``mean``; files before issue 11 call it ``position``), pair count, dataset hash, library version). Every
problem found on load raises `VectorFileError` naming the file and the field.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from steering.hooks import LayerError, SteeringError

from .model_info import VectorMismatchError, check_fits

FORMAT = "steering-vector"
FORMAT_VERSION = 2
"""The newest format this library reads and writes (2: optional ``reference.{i}`` tensors)."""
REQUIRED = (
    "format",
    "format_version",
    "model",
    "model_fingerprint",
    "hidden_size",
    "num_layers",
    "site",
    "method",
    "read",
    "n_pairs",
    "dataset_sha256",
    "steering_version",
)
_LAYER_KEY = re.compile(r"(layers|reference)\.(\d+)")
_INT_FIELDS = ("hidden_size", "num_layers", "n_pairs")


class VectorFileError(SteeringError, ValueError):
    """A vector file that is missing, corrupt, inconsistent, or for another model."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("steering")
    except PackageNotFoundError:
        return "0+unknown"


def atomic_write(path: str | Path, write: Any, suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it over ``path``.

    A crash or error leaves ``path`` as it was: never half-written. The result
    has the permissions of a file made by a plain ``open()``: ``0o666`` less
    the process umask (0644 under umask 022, 0640 under 027).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # After the write, not before: writers may replace the temp file with
        # their own (safetensors' save_file does, as 0600), and mkstemp's is 0600 too.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    # Elsewhere the only way is to set and restore it (briefly visible to other threads).
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_vector_file(
    path: str | Path,
    directions: Mapping[int, torch.Tensor],
    metadata: Mapping[str, str],
    *,
    reference: Mapping[int, torch.Tensor] | None = None,
) -> Path:
    """Write ``directions`` (and ``reference`` means) and a vector's ``metadata`` to ``path`` (safetensors), atomically.

    Returns the path. ``format_version`` is 2 with a reference mean and 1
    without, the oldest version that holds what is written.

    The file layer of `vectors.vector.save_vector`; it knows no vector type (the
    vector type imports this module, never the other way round).
    """
    tensors = {f"layers.{i}": t.contiguous() for i, t in directions.items()}
    if reference is not None:
        tensors.update({f"reference.{i}": t.contiguous() for i, t in reference.items()})
    metadata = {
        **metadata,
        "format": FORMAT,
        "format_version": "1" if reference is None else str(FORMAT_VERSION),
        "steering_version": _version(),  # the library that wrote this file
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_vector_file(path: str | Path, model: Any = None, *, allow_model_mismatch: bool = False) -> dict[str, Any]:
    """Read a vector file and validate it (and, given ``model``, that it fits that model).

    The file layer of `vectors.vector.load_vector`: it returns the vector's
    constructor arguments (``directions`` and the metadata fields), not a vector.

    Args:
        path: a ``.safetensors`` file written by `write_vector_file`.
        model: optional model to check hidden size, layer range and fingerprint against.
        allow_model_mismatch: accept a vector whose fingerprint names another
            checkpoint of the same shape (sizes are still checked).

    Raises:
        VectorFileError: naming the file and field, for a missing or corrupt
            file, missing or malformed metadata, NaN/inf values, shapes or
            layers that do not fit, or a different model.
    """
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"{path}: no such vector file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise VectorFileError(f"{path}: not a readable safetensors file ({exc})") from None

    if "read" not in meta and "position" in meta:  # written before the rename: same values
        meta["read"] = meta.pop("position")
    if meta.get("format") != FORMAT:
        raise VectorFileError(f"{path}: metadata field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    for key in REQUIRED:
        if key not in meta:
            raise VectorFileError(f"{path}: missing metadata field {key!r}")
    ints: dict[str, int] = {}
    for key in (*_INT_FIELDS, "format_version"):
        try:
            ints[key] = int(meta[key])
        except ValueError:
            raise VectorFileError(f"{path}: metadata field {key!r} is not an integer: {meta[key]!r}") from None
    if ints["format_version"] > FORMAT_VERSION:
        raise VectorFileError(
            f"{path}: format_version {ints['format_version']} is newer than this library reads ({FORMAT_VERSION}); upgrade steering"
        )

    directions: dict[int, torch.Tensor] = {}
    reference: dict[int, torch.Tensor] = {}
    for key, tensor in tensors.items():
        match = _LAYER_KEY.fullmatch(key)
        if match is None or (match.group(1) == "reference" and ints["format_version"] < 2):
            raise VectorFileError(f"{path}: unexpected tensor {key!r} (expected names like 'layers.12')")
        layer = int(match.group(2))
        if tuple(tensor.shape) != (ints["hidden_size"],):
            raise VectorFileError(
                f"{path}: tensor {key!r} has shape {tuple(tensor.shape)}, expected ({ints['hidden_size']},) from hidden_size"
            )
        if not tensor.is_floating_point():
            raise VectorFileError(f"{path}: tensor {key!r} has dtype {tensor.dtype}, expected float32")
        if not bool(torch.isfinite(tensor).all()):
            raise VectorFileError(f"{path}: tensor {key!r} contains NaN or inf values")
        if not 0 <= layer < ints["num_layers"]:
            raise VectorFileError(f"{path}: tensor {key!r} is outside the file's num_layers={ints['num_layers']}")
        (directions if match.group(1) == "layers" else reference)[layer] = tensor.float()
    if not directions:
        raise VectorFileError(f"{path}: the file holds no 'layers.{{i}}' tensors")
    if reference and sorted(reference) != sorted(directions):
        raise VectorFileError(
            f"{path}: 'reference.{{i}}' tensors for layers {sorted(reference)} do not match the directions' layers {sorted(directions)}"
        )

    if model is not None:
        _check_model(path, meta, ints, directions, model, allow_model_mismatch)

    fields = {f: meta[f] for f in ("model", "model_fingerprint", "site", "method", "read", "dataset_sha256")}
    extra = {k: v for k, v in meta.items() if k not in REQUIRED or k == "steering_version"}
    return dict(
        directions=directions,
        reference=reference or None,
        hidden_size=ints["hidden_size"],
        num_layers=ints["num_layers"],
        n_pairs=ints["n_pairs"],
        extra=extra,
        **fields,
    )


def _check_model(
    path: Path, meta: dict[str, str], ints: dict[str, int], directions: dict[int, torch.Tensor], model: Any, allow: bool
) -> None:
    check_file_fits(
        path,
        model,
        hidden_size=ints["hidden_size"],
        layers=directions,
        site=meta["site"],
        fingerprint=meta["model_fingerprint"],
        made_on=meta["model"],
        num_layers=ints["num_layers"],
        allow=allow,
    )


def check_file_fits(
    path: Path,
    model: Any,
    *,
    hidden_size: int,
    layers: Iterable[int],
    site: str,
    fingerprint: str,
    made_on: str,
    num_layers: int | None = None,
    allow: bool = False,
) -> None:
    """`check_fits` for a vector read from ``path`` (any format): a misfit is a `VectorFileError` naming the file.

    ``allow`` (``allow_model_mismatch``) skips the provenance checks, as in `check_fits`.
    """
    try:
        check_fits(
            model,
            hidden_size=hidden_size,
            layers=layers,
            site=site,
            fingerprint=fingerprint,
            made_on=made_on,
            num_layers=num_layers,
            check_model=not allow,
            override="pass allow_model_mismatch=True to load it anyway",
        )
    except (VectorMismatchError, LayerError) as exc:
        raise VectorFileError(f"{path}: {exc}") from None
