"""Mechanics of reading and writing a model's residual stream with forward hooks.

An internal layer of the `steering` framework (users import `steering`); it
knows nothing of steering vectors. Every registration is owned by a
`HookGroup` that removes exactly what it added.
"""

from .cache import CACHE_KEYWORDS, cache_kwargs, cache_length, forward_parameters, output_cache
from .devices import input_device, layer_device, layer_dtype, module_device, offloaded_tensor, wide_dtype
from .errors import ConfigError, LayerError, SteeringError
from .fold import FOLD_TARGETS, FoldConflictError, fold, fold_blocker, share
from .handles import HookGroup
from .layers import (
    decoder_layers,
    decoder_layers_path,
    decoder_stack,
    normalize_layer,
    normalize_layers,
    num_layers,
    resolve_layers,
    set_decoder_layers,
)
from .outputs import unpack, unpack_inputs
from .patch import AblateOp, AddOp, Op, patch, span_basis
from .positions import APPLY_TO, ApplyTo, PositionTracker, past_length
from .record import Recording, StopForward, capture, record, run_until_stopped
from .renamed import renamed
from .sites import SITES, Site, check_site, site_module
from .tokens import completion_mask, pad_ids, position_ids, read_indices, read_rows

__all__ = [
    "CACHE_KEYWORDS",
    "FOLD_TARGETS",
    "APPLY_TO",
    "SITES",
    "AblateOp",
    "ApplyTo",
    "AddOp",
    "ConfigError",
    "FoldConflictError",
    "HookGroup",
    "LayerError",
    "Op",
    "PositionTracker",
    "Recording",
    "Site",
    "SteeringError",
    "StopForward",
    "cache_kwargs",
    "cache_length",
    "capture",
    "check_site",
    "completion_mask",
    "decoder_layers",
    "decoder_layers_path",
    "decoder_stack",
    "fold",
    "fold_blocker",
    "forward_parameters",
    "input_device",
    "layer_device",
    "layer_dtype",
    "module_device",
    "normalize_layer",
    "normalize_layers",
    "num_layers",
    "offloaded_tensor",
    "past_length",
    "output_cache",
    "pad_ids",
    "patch",
    "position_ids",
    "read_indices",
    "read_rows",
    "record",
    "renamed",
    "resolve_layers",
    "run_until_stopped",
    "set_decoder_layers",
    "share",
    "site_module",
    "span_basis",
    "unpack",
    "unpack_inputs",
    "wide_dtype",
]
