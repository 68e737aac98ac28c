"""Steering vectors: contrastive pairs, extraction methods, the vector type and its files.

An internal layer of the `steering` framework (users import `steering`); it
builds on `hooks` and never imports upwards.
"""

from .bipo import BipoOptions, bipo_directions
from .coef import MAX_COEF, MAX_DELTA_NORM, CoefError, check_coef
from .extract import READS, Read, collect_stats, extract, read_texts
from .io import FORMAT, FORMAT_VERSION, VectorFileError, atomic_write
from .methods import METHODS, LayerStats, LogisticProbe, Method, PairMethod, fit_logistic, get_method, probe_direction, register_method
from .model_info import hidden_size, model_fingerprint, model_name
from .pairs import ContrastPair, DatasetError, as_pairs, dataset_sha256, read_pairs, swap_letters
from .text import encode_chat, encode_prompt, format_prompt, pair_texts
from .vector import SteeringVector, VectorMismatchError, VectorValueError, load_vector, save_vector

__all__ = [
    "FORMAT",
    "MAX_COEF",
    "MAX_DELTA_NORM",
    "FORMAT_VERSION",
    "METHODS",
    "READS",
    "Read",
    "BipoOptions",
    "CoefError",
    "ContrastPair",
    "DatasetError",
    "LayerStats",
    "LogisticProbe",
    "Method",
    "PairMethod",
    "SteeringVector",
    "VectorFileError",
    "VectorMismatchError",
    "VectorValueError",
    "as_pairs",
    "atomic_write",
    "bipo_directions",
    "check_coef",
    "collect_stats",
    "dataset_sha256",
    "encode_chat",
    "encode_prompt",
    "extract",
    "fit_logistic",
    "format_prompt",
    "get_method",
    "hidden_size",
    "load_vector",
    "model_fingerprint",
    "model_name",
    "pair_texts",
    "probe_direction",
    "read_pairs",
    "read_texts",
    "register_method",
    "save_vector",
    "swap_letters",
]
