"""steering: activation steering (representation engineering) for Hugging Face causal LMs.

Capture residual-stream activations with forward hooks, turn contrastive pairs
into one direction per layer, save it as self-describing safetensors, and add
or subtract it while generating.

Example:
    >>> import steering as st
    >>> model, tok = st.load_model("smollm2-135m-instruct")  # doctest: +SKIP
    >>> vec = st.extract(model, tok, st.load_pairs("sentiment"), layers=[12])  # doctest: +SKIP
    >>> vec.save("sentiment.safetensors")  # doctest: +SKIP
    >>> st.generate(model, tok, "Tell me about your day.", vec, coef=4.0)  # doctest: +SKIP

Importing this package registers no hooks and changes no global state.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

from steering.hooks import (
    SITES,
    ApplyTo,
    HookGroup,
    LayerError,
    Recording,
    Site,
    SteeringError,
    decoder_layers,
    record,
    resolve_layers,
    set_decoder_layers,
)
from steering.vectors import (
    METHODS,
    BipoOptions,
    ContrastPair,
    DatasetError,
    LayerStats,
    Method,
    PairMethod,
    Read,
    SteeringVector,
    VectorFileError,
    VectorMismatchError,
    bipo_directions,
    extract,
    model_fingerprint,
    register_method,
)

from .apply import Backend, Mode, attach, steer
from .bake import BakeError, BakeMode, bake
from .conditions import Condition, find_condition
from .data import bundled_datasets, load_lines, load_pairs, load_prompts
from .generate import generate
from .models import DEFAULT_MODEL, MODEL_REGISTRY, ModelLoadError, ModelSpec, load_model, register_model
from .self_pairs import self_written_pairs

try:
    __version__ = _dist_version("steering")  # the one version string: pyproject.toml's
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_MODEL",
    "METHODS",
    "MODEL_REGISTRY",
    "SITES",
    "ApplyTo",
    "Backend",
    "BakeError",
    "BakeMode",
    "BipoOptions",
    "Condition",
    "ContrastPair",
    "DatasetError",
    "HookGroup",
    "LayerError",
    "LayerStats",
    "Method",
    "Mode",
    "ModelLoadError",
    "ModelSpec",
    "PairMethod",
    "Read",
    "Recording",
    "Site",
    "SteeringError",
    "SteeringVector",
    "VectorFileError",
    "VectorMismatchError",
    "attach",
    "bake",
    "bipo_directions",
    "bundled_datasets",
    "decoder_layers",
    "extract",
    "find_condition",
    "generate",
    "load_lines",
    "load_prompts",
    "load_model",
    "load_pairs",
    "model_fingerprint",
    "record",
    "register_method",
    "register_model",
    "resolve_layers",
    "self_written_pairs",
    "set_decoder_layers",
    "steer",
]
