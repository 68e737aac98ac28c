"""Vectors from and for other tools: llama.cpp / repeng GGUF, CAA-style ``.pt``, lm-evaluation-harness.

The public face of `vectors.interop` (see its docs for the layer numbering
and what metadata a foreign file lacks) and `vectors.harness` (the harness'
``steered`` model files); `steering.bake` writes a whole model folder instead.

Example:
    >>> from steering.interop import export_gguf, import_gguf
    >>> export_gguf(vec.select([8, 12]), "sentiment.gguf")  # doctest: +SKIP
    >>> # llama-cli -m SmolLM2.gguf --control-vector-scaled sentiment.gguf 4.0
    >>> theirs = import_gguf("repeng_happy.gguf", model)  # doctest: +SKIP
"""

from steering.vectors.harness import export_lm_eval, lm_eval_hookpoint
from steering.vectors.interop import export_gguf, export_pt, import_gguf, import_pt, read_any_vector, write_any_vector

__all__ = [
    "export_gguf",
    "export_lm_eval",
    "export_pt",
    "lm_eval_hookpoint",
    "import_gguf",
    "import_pt",
    "read_any_vector",
    "write_any_vector",
]
