"""`SteeringVector`: one float32 direction per layer, plus where it came from.

Vectors are immutable values with finite entries (NaN or inf raises
`VectorValueError` where the vector is made). Arithmetic builds new vectors: ``-v`` turns a
behaviour off, ``a + b`` combines behaviours, ``k * v`` scales. A layer
missing from one operand counts as zero there. Vectors made on different
models (different fingerprints) never combine or compare: their spaces differ.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from steering.hooks import SteeringError, normalize_layers

from .io import read_vector_file, write_vector_file
from .model_info import UNKNOWN, VectorMismatchError, check_fits, same_checkpoint


class VectorValueError(SteeringError, ValueError):
    """A vector whose values are not usable: NaN or inf, from construction or arithmetic."""


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A behaviour direction per decoder layer.

    Attributes:
        directions: layer index -> float32 tensor ``[hidden_size]`` (read-only mapping).
        hidden_size: width of the residual stream.
        num_layers: number of decoder layers of the model it was made on.
        model: model id (registry name, hub id or path).
        model_fingerprint: see `vectors.model_info.model_fingerprint`.
        site: hook site the activations were read at (`hooks.SITES`).
        method: extraction method name (`vectors.METHODS`).
        read: where each text was read (``last`` or ``mean``; formerly ``position``).
        n_pairs: number of contrastive pairs used.
        dataset_sha256: hash of the pairs' content.
        extra: further string metadata, kept through save and load.
        reference: optional layer -> reference mean activation ``[hidden_size]``
            (the mean of the negative side or of a generic corpus), for the
            affine modes of `steering.steer`; same layers as ``directions``.

    Example:
        >>> v = SteeringVector({12: torch.ones(576)}, hidden_size=576, num_layers=30)
        >>> (-2 * v).directions[12][0].item()
        -2.0
    """

    directions: Mapping[int, Tensor]
    hidden_size: int
    num_layers: int
    model: str = UNKNOWN
    model_fingerprint: str = UNKNOWN
    site: str = "block_output"
    method: str = UNKNOWN
    read: str = UNKNOWN
    n_pairs: int = 0
    dataset_sha256: str = UNKNOWN
    extra: Mapping[str, str] = field(default_factory=dict)
    reference: Mapping[int, Tensor] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "directions", self._clean(self.directions, "direction"))
        object.__setattr__(self, "extra", MappingProxyType({str(k): str(v) for k, v in self.extra.items()}))
        if self.reference is not None:
            reference = self._clean(self.reference, "reference mean")
            if list(reference) != self.layers:
                raise VectorMismatchError(f"the reference mean has layers {list(reference)} but the directions have {self.layers}")
            object.__setattr__(self, "reference", reference)

    def _clean(self, tensors: Mapping[int, Tensor], what: str) -> Mapping[int, Tensor]:
        clean: dict[int, Tensor] = {}
        for layer, tensor in sorted(tensors.items()):
            if not isinstance(layer, int) or not 0 <= layer < self.num_layers:
                raise VectorMismatchError(f"layer {layer!r} is outside 0..{self.num_layers - 1}")
            if not isinstance(tensor, Tensor) or tuple(tensor.shape) != (self.hidden_size,):
                shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
                raise VectorMismatchError(f"layer {layer}: expected shape ({self.hidden_size},), got {shape}")
            # A private float32 CPU copy: the caller's tensor may change later.
            copy = tensor.detach().to("cpu", torch.float32).clone()
            if not bool(torch.isfinite(copy).all()):
                # Caught here, where it is made (e.g. v * nan, or a float32 overflow), not as an
                # empty generation later or a file that `load` refuses.
                raise VectorValueError(f"layer {layer}: the {what} holds NaN or inf values; a steering vector must be finite")
            clean[layer] = copy
        if not clean:
            raise VectorMismatchError("a steering vector needs at least one layer")
        return MappingProxyType(clean)

    # ----------------------------------------------------------------- views
    @property
    def layers(self) -> list[int]:
        """Sorted layer indices."""
        return list(self.directions)

    @property
    def position(self) -> str:
        """Deprecated name of `read`."""
        warnings.warn("SteeringVector.position is deprecated; use .read instead", DeprecationWarning, stacklevel=2)
        return self.read

    def norms(self) -> dict[int, float]:
        """L2 norm of each layer's direction."""
        return {layer: float(t.norm()) for layer, t in self.directions.items()}

    def select(self, layers: int | Iterable[int]) -> SteeringVector:
        """A vector with only ``layers`` (each must be present).

        Negative indices count from the end of the model's layers (``num_layers``),
        as in `hooks.resolve_layers`: ``select([-1])`` is the model's last layer.

        Raises:
            LayerError: a value that is not an integer, or outside the model's layers.
            VectorMismatchError: a layer this vector does not hold.
        """
        wanted = normalize_layers(layers, self.num_layers, f"a vector made on {self.model!r}")
        missing = [i for i in wanted if i not in self.directions]
        if missing:
            raise VectorMismatchError(f"layers {missing} are not in this vector (it has {self.layers})")
        return self._with({i: self.directions[i] for i in wanted})

    def metadata(self) -> dict[str, str]:
        """All metadata as strings (the safetensors header, minus format fields)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("directions", "extra", "reference")}
        return {**dict(self.extra), **{k: str(v) for k, v in fields.items()}}

    # ------------------------------------------------------------ arithmetic
    def __neg__(self) -> SteeringVector:
        return self._with({i: -t for i, t in self.directions.items()})

    def __mul__(self, k: float) -> SteeringVector:
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            return NotImplemented
        if not math.isfinite(k):
            raise VectorValueError(f"cannot scale a steering vector by {k!r}: the factor must be finite")
        return self._with({i: t * float(k) for i, t in self.directions.items()})

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> SteeringVector:
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            return NotImplemented
        if k == 0:
            raise VectorValueError("cannot divide a steering vector by 0")
        return self * (1.0 / k)

    def __add__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        self._check_same_space(other, "add")
        if self.site != other.site:
            raise VectorMismatchError(f"cannot add a {self.site} vector to a {other.site} vector")
        out = dict(self.directions)
        for layer, tensor in other.directions.items():
            out[layer] = out[layer] + tensor if layer in out else tensor
        method = self.method if self.method == other.method else "combination"
        # A sum has no one reference mean, unless both operands share it.
        reference = self.reference if _same_reference(self, other) and set(out) == set(self.directions) else None
        return dataclasses.replace(
            self, directions=out, method=method, n_pairs=self.n_pairs + other.n_pairs, dataset_sha256=UNKNOWN, reference=reference
        )

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self + (-other)

    def normalized(self) -> SteeringVector:
        """Each layer's direction scaled to unit norm."""
        return self._with({i: t / t.norm().clamp_min(1e-12) for i, t in self.directions.items()})

    def project_out(self, other: SteeringVector) -> SteeringVector:
        """Remove, at each shared layer, the component along ``other``'s direction."""
        self._check_same_space(other, "project")
        out = {}
        for layer, tensor in self.directions.items():
            if layer in other.directions:
                unit = other.directions[layer] / other.directions[layer].norm().clamp_min(1e-12)
                tensor = tensor - (tensor @ unit) * unit
            out[layer] = tensor
        return self._with(out)

    def cosine(self, other: SteeringVector) -> dict[int, float]:
        """Cosine similarity with ``other`` at each shared layer."""
        self._check_same_space(other, "compare")
        shared = [i for i in self.directions if i in other.directions]
        if not shared:
            raise VectorMismatchError(f"no shared layers: {self.layers} vs {other.layers}")
        return {
            i: float(torch.nn.functional.cosine_similarity(self.directions[i].double(), other.directions[i].double(), dim=0))
            for i in shared
        }

    # ---------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Write to ``path`` as safetensors with a metadata header (atomically)."""
        return write_vector_file(path, self.directions, self.metadata(), reference=self.reference)

    @classmethod
    def load(cls, path: str | Path, model: Any = None, *, allow_model_mismatch: bool = False) -> SteeringVector:
        """Read and validate a vector file; see `vectors.io.read_vector_file`."""
        return cls(**read_vector_file(path, model, allow_model_mismatch=allow_model_mismatch))

    def check_fits(self, model: Any, *, check_model: bool = True, override: str = "pass check_model=False to use it anyway") -> None:
        """Refuse ``model`` where this vector does not fit it (`vectors.model_info.check_fits`).

        ``override`` ends a provenance mismatch's message: how the caller lets it through.
        """
        check_fits(
            model,
            hidden_size=self.hidden_size,
            layers=self.layers,
            site=self.site,
            fingerprint=self.model_fingerprint,
            made_on=self.model,
            check_model=check_model,
            override=override,
        )

    # --------------------------------------------------------------- helpers
    def _with(self, directions: Mapping[int, Tensor]) -> SteeringVector:
        # The reference mean is a point in activation space: scaling or negating the direction keeps it.
        reference = None if self.reference is None else {i: self.reference[i] for i in directions}
        return dataclasses.replace(self, directions=directions, reference=reference)

    def _check_same_space(self, other: SteeringVector, verb: str) -> None:
        if self.hidden_size != other.hidden_size:
            raise VectorMismatchError(f"cannot {verb} vectors of hidden size {self.hidden_size} and {other.hidden_size}")
        if same_checkpoint(self.model_fingerprint, other.model_fingerprint) is False:
            raise VectorMismatchError(
                f"cannot {verb} vectors from different models ({self.model!r} vs {other.model!r}): their activation spaces differ"
            )

    def __repr__(self) -> str:
        norms = ", ".join(f"{i}: {n:.3g}" for i, n in self.norms().items())
        return (
            f"SteeringVector(model={self.model!r}, site={self.site}, method={self.method}, "
            f"read={self.read}, n_pairs={self.n_pairs}, norms={{{norms}}})"
        )


def _same_reference(a: SteeringVector, b: SteeringVector) -> bool:
    if a.reference is None or b.reference is None:
        return False
    shared = set(a.reference) & set(b.reference)
    return all(bool(torch.equal(a.reference[i], b.reference[i])) for i in shared)


def save_vector(vector: SteeringVector, path: str | Path) -> Path:
    """Save ``vector`` to ``path`` (safetensors), atomically. Returns the path."""
    return vector.save(path)


def load_vector(path: str | Path, model: Any = None, *, allow_model_mismatch: bool = False) -> SteeringVector:
    """Load a vector file written by `save_vector` and validate it (and, given ``model``, that it fits that model).

    Arguments and errors: see `vectors.io.read_vector_file`.
    """
    return SteeringVector.load(path, model, allow_model_mismatch=allow_model_mismatch)
