"""Steer a llama.cpp model (``llama-cpp-python``) with control vectors, as ``llama-cli`` does.

``llama-cli --control-vector-scaled v.gguf 4`` loads the file with llama.cpp's
``common_control_vector_load`` (in its ``common`` library, which the Python
binding does not expose) and hands the result to ``llama_set_adapter_cvec``.
This module does the same from Python:

- each ``direction.N`` tensor (N >= 1; llama.cpp rejects 0) is multiplied by its
  strength and summed into a buffer that starts at layer 1 (``data[(N-1) *
  n_embd:]``), as ``common_control_vector_load_one`` packs it;
- ``llama_set_adapter_cvec(ctx, data, len, n_embd, start, end)`` copies layer
  ``il`` of that buffer into the tensor the graph adds to the output of block
  ``il`` (``build_cvec`` after block ``il``), for ``start <= il <= end``
  (default ``1 .. n_layer``, ``llama-cli``'s default range).

llama.cpp keeps those tensors for the context's life and overwrites only the
layers the buffer reaches, so a shorter vector set after a longer one would keep
the old vector's upper layers (clearing only disables the range). The buffer
given to it therefore always covers every layer, ``1 .. n_layer - 1``, zeros
where the vector has none.

So a vector's layer ``N`` (ours: the output of block ``N``) steers block ``N``
there too; `steering.interop.export_gguf` writes it as ``direction.N``.
Files are read with `import_gguf` (sizes, types and values checked).
``llama_cpp`` is imported only when a vector is set.

Example:
    >>> from llama_cpp import Llama  # doctest: +SKIP
    >>> llm = Llama("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    >>> set_control_vector(llm, "sentiment.gguf", 4.0)  # doctest: +SKIP
    >>> set_control_vector(llm, None)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steering.vectors import SteeringVector, VectorFileError, check_coef
from steering.vectors.interop import import_gguf

__all__ = ["control_vector_data", "set_control_vector"]

VectorSource = SteeringVector | str | Path


def control_vector_data(terms: Sequence[tuple[VectorSource, float]], n_layer: int | None = None) -> tuple[np.ndarray, int]:
    """The ``(data, n_embd)`` buffer llama.cpp's ``common_control_vector_load`` makes of ``terms``.

    ``data`` is float32, ``n_embd`` values per layer from layer 1 on, each
    layer the sum of ``strength * direction.N`` over the terms; up to the
    highest layer of the terms, or with ``n_layer`` (the model's block count)
    up to layer ``n_layer - 1``, all the layers llama.cpp has a tensor for.

    Raises:
        VectorFileError: a vector with layer 0 (llama.cpp has no slot for it), a
            site other than ``block_output``, vectors of different widths, or a
            layer ``>= n_layer``.
        CoefError: a strength the coefficient policy refuses (`steering.vectors.check_coef`).

    Example:
        >>> from steering.vectors import SteeringVector
        >>> import torch
        >>> v = SteeringVector({2: torch.ones(3)}, hidden_size=3, num_layers=4)
        >>> data, n_embd = control_vector_data([(v, 2.0)])
        >>> n_embd, data.tolist()
        (3, [0.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    """
    vectors = [(_read(source), strength) for source, strength in terms]
    if not vectors:
        raise VectorFileError("no control vector given")
    widths = {vec.hidden_size for vec, _ in vectors}
    if len(widths) > 1:
        raise VectorFileError(f"control vectors of different sizes {sorted(widths)} cannot be combined")
    n_embd = widths.pop()
    top = max(max(vec.layers) for vec, _ in vectors)
    if n_layer is not None:
        if top >= n_layer:  # llama.cpp would drop it without a word
            raise VectorFileError(f"control vector layer {top} is out of range for this model's {n_layer} blocks (0..{n_layer - 1})")
        top = n_layer - 1
    data = np.zeros(n_embd * top, dtype=np.float32)
    for vec, strength in vectors:
        scale = np.float32(check_coef(strength, vec, name="strength"))
        where = vec.extra.get("source_file", vec.model)
        if vec.site != "block_output":
            raise VectorFileError(f"{where}: llama.cpp adds control vectors to block outputs; this vector's site is {vec.site!r}")
        if 0 in vec.directions:
            raise VectorFileError(f"{where}: llama.cpp cannot steer layer 0 (its loader rejects 'direction.0'); drop it with vector.select")
        for layer, direction in vec.directions.items():
            start = n_embd * (layer - 1)  # layer 1 at [0], as llama.cpp packs it
            data[start : start + n_embd] += direction.numpy().astype(np.float32) * scale
    return data, n_embd


def set_control_vector(
    llm: Any,
    vector: VectorSource | Sequence[tuple[VectorSource, float]] | None,
    strength: float = 1.0,
    *,
    layer_range: tuple[int, int] | None = None,
) -> None:
    """Set (or with ``None`` clear) the control vector of a ``llama_cpp.Llama``.

    Like ``llama-cli --control-vector-scaled FILE STRENGTH
    [--control-vector-layer-range START END]``. It applies to tokens evaluated
    from now on: call ``llm.reset()`` before reusing an evaluated prompt.

    Args:
        llm: a ``llama_cpp.Llama``.
        vector: a ``.gguf`` control vector file, a `SteeringVector`, or a list of
            ``(file or vector, strength)`` summed together; ``None`` clears.
        strength: the multiplier of a single ``vector`` (ignored for a list).
        layer_range: inclusive ``(start, end)`` blocks to steer (default: all).

    Raises:
        VectorFileError: as `control_vector_data`, or llama.cpp refusing the
            vector (its width is not the model's).
        CoefError: as `control_vector_data`.
    """
    import llama_cpp

    ctx = llm.ctx
    if vector is None:
        if llama_cpp.llama_set_adapter_cvec(ctx, None, 0, 0, -1, -1) != 0:
            raise VectorFileError("llama.cpp refused to clear the control vector")
        return
    if isinstance(vector, (SteeringVector, str, Path)):
        terms: Sequence[tuple[VectorSource, float]] = [(vector, strength)]
    else:
        terms = vector
    n_layer = int(llama_cpp.llama_model_n_layer(llm.model))
    # Every layer, so none keeps a value from a vector set earlier on this context.
    data, n_embd = control_vector_data(terms, n_layer)
    start, end = layer_range if layer_range is not None else (1, n_layer)
    pointer = data.ctypes.data_as(llama_cpp.ctypes.POINTER(llama_cpp.ctypes.c_float))
    if llama_cpp.llama_set_adapter_cvec(ctx, pointer, data.size, n_embd, start, end) != 0:
        raise VectorFileError(f"llama.cpp refused the control vector (width {n_embd}; the model's is {llm.n_embd()})")


def _read(source: VectorSource) -> SteeringVector:
    return source if isinstance(source, SteeringVector) else import_gguf(source)
