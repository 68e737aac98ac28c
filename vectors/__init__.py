"""Steering vectors: contrastive pairs, extraction methods, the vector type and its files.

An internal layer of the `steering` framework (users import `steering`); it
builds on `hooks` and never imports upwards.
"""

from .extract import READS, Read, collect_stats, extract, pair_texts, read_indices
from .io import FORMAT, FORMAT_VERSION, VectorFileError, atomic_write, load_vector, save_vector
from .methods import METHODS, LayerStats, Method, PairMethod, get_method, register_method
from .model_info import hidden_size, model_fingerprint, model_name
from .pairs import ContrastPair, DatasetError, as_pairs, dataset_sha256, read_pairs
from .vector import SteeringVector, VectorMismatchError, VectorValueError
from .coef import MAX_COEF, MAX_DELTA_NORM, CoefError, check_coef

__all__ = [
    "FORMAT",
    "MAX_COEF",
    "MAX_DELTA_NORM",
    "FORMAT_VERSION",
    "METHODS",
    "READS",
    "Read",
    "CoefError",
    "ContrastPair",
    "DatasetError",
    "LayerStats",
    "Method",
    "PairMethod",
    "SteeringVector",
    "VectorFileError",
    "VectorMismatchError",
    "VectorValueError",
    "as_pairs",
    "atomic_write",
    "check_coef",
    "collect_stats",
    "dataset_sha256",
    "extract",
    "get_method",
    "hidden_size",
    "load_vector",
    "model_fingerprint",
    "model_name",
    "pair_texts",
    "read_indices",
    "read_pairs",
    "register_method",
    "save_vector",
]
