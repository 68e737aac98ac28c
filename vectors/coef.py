"""The one policy for steering coefficients, shared by the library, the CLI and the server.

A coefficient scales a vector before it is added to the residual stream. A
value that is not a real number, or so large that the activations overflow,
does not fail loudly downstream: it turns every logit into NaN and generation
returns an empty string. So every place that takes a coef (`steering.steer`,
`steering.attach`, `steering.generate`, ``steering generate coef=...`` and the
server's ``steering[i].coef``) calls `check_coef`, which accepts ``coef`` when:

- it is an ``int`` or ``float`` (not a bool, string or tensor) and finite;
- ``|coef| <= MAX_COEF`` (1e4), or the caller's tighter ``limit`` (the
  server's ``max_coef``);
- given the vector, ``|coef| * max_layer_norm(vector) <= MAX_DELTA_NORM``
  (1e5): the added delta stays far inside float16/bfloat16 range. Residual
  streams of current models have norms of roughly 1e1..1e4, so a delta of
  1e5 already drowns any activation; anything beyond only risks overflow.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from steering.hooks import SteeringError

if TYPE_CHECKING:
    from .vector import SteeringVector

MAX_COEF = 1e4
MAX_DELTA_NORM = 1e5


class CoefError(SteeringError, ValueError):
    """A steering coefficient outside the policy of `check_coef`."""


def check_coef(coef: object, vector: SteeringVector | None = None, *, limit: float | None = None, name: str = "coef") -> float:
    """Return ``coef`` as a float if the policy (module docs) accepts it.

    Args:
        coef: the coefficient to check.
        vector: the vector it scales, to bound the delta ``coef * vector``.
        limit: a tighter bound on ``|coef|`` than `MAX_COEF` (e.g. a server's ``max_coef``).
        name: how the message names the value (``"coef"``, ``"steering[0].coef"``).

    Raises:
        CoefError: naming ``name``, the value and the bound it breaks.

    Example:
        >>> check_coef(4)
        4.0
        >>> check_coef(float("nan"))
        Traceback (most recent call last):
        ...
        steering.vectors.coef.CoefError: coef=nan is not a finite number
    """
    if isinstance(coef, bool) or not isinstance(coef, (int, float)):
        raise CoefError(f"{name}={coef!r} is not a number (give an int or float, e.g. 4.0)")
    value = float(coef)
    if not math.isfinite(value):
        raise CoefError(f"{name}={coef!r} is not a finite number")
    bound = MAX_COEF if limit is None else min(limit, MAX_COEF)
    if abs(value) > bound:
        raise CoefError(f"{name}={coef!r} is out of range; |coef| must be <= {bound:g}")
    if vector is not None:
        norm = max(vector.norms().values())
        if abs(value) * norm > MAX_DELTA_NORM:
            raise CoefError(
                f"{name}={coef!r} is out of range for a vector of norm {norm:.4g}: |coef| * norm must be "
                f"<= {MAX_DELTA_NORM:g}, i.e. |coef| <= {MAX_DELTA_NORM / norm:.4g}"
            )
    return value
