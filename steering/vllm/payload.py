"""A request's folded steering as plain data, from vLLM's front end to its workers.

The front end resolves a request's terms once (`steering.server.validate`)
and folds them into `RowDeltas` (`steering.server.row_steering`), exactly as
our HF server does. vLLM moves ``SamplingParams.extra_args`` to the engine
core and the workers by MessagePack, so the folded tables travel as a dict of
strings and ints, stored under `PAYLOAD_KEY`::

    {"key": "<32 hex>", "width": 576,
     "prompt": {"12": "<base64 float32 [d]>", ...}, "generated": {...},
     "ablate_prompt": {"12": "<base64 float32 [k, d]>", ...}, "ablate_generated": {...}}

``key`` hashes everything else: two requests with the same steering (same
vector bytes, coefs, layers, ``apply_to``, ``mode``) share it, so a worker
decodes and stores one config once (its slots are keyed by it), and the
prefix cache salt is derived from it. Only the ``block_output`` site exists
on vLLM; layers are absolute indices.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from steering.server.row_steering import RowDeltas

PAYLOAD_KEY = "_steering_rows"
"""``extra_args`` key of the folded payload; the front end sets it (and drops any a client sent)."""

SITE = "block_output"
_TABLES = ("prompt", "generated", "ablate_prompt", "ablate_generated")


def _encode(t: Tensor) -> str:
    return base64.b64encode(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).decode("ascii")


def encode(deltas: RowDeltas, width: int) -> dict[str, Any]:
    """The payload of ``deltas`` (every key must be at the ``block_output`` site)."""
    body: dict[str, Any] = {"width": width}
    for name in _TABLES:
        table: Mapping[tuple[str, int], Tensor] = getattr(deltas, name)
        out = {}
        for (site, layer), value in sorted(table.items()):
            if site != SITE:
                raise ValueError(f"site {site!r} is not supported on vLLM (only {SITE!r})")
            out[str(layer)] = [int(value.shape[0]), _encode(value)] if name.startswith("ablate") else _encode(value)
        body[name] = out
    body["key"] = hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=16).hexdigest()
    return body


@dataclass(frozen=True)
class Decoded:
    """A payload as tensors: per phase, ``layer -> [d]`` deltas and ``layer -> [k, d]`` bases (float32, CPU)."""

    key: str
    add: Mapping[str, Mapping[int, Tensor]]  # phase -> layer -> delta
    ablate: Mapping[str, Mapping[int, Tensor]]  # phase -> layer -> basis

    @property
    def layers(self) -> set[int]:
        return {layer for table in (*self.add.values(), *self.ablate.values()) for layer in table}


def decode(body: Mapping[str, Any]) -> Decoded:
    """Tensors of a payload made by `encode` (the worker side)."""
    width = int(body["width"])

    def vec(text: str, rows: int | None = None) -> Tensor:
        array = np.frombuffer(base64.b64decode(text), dtype=np.float32).copy()
        return torch.from_numpy(array).reshape(-1, width) if rows is not None else torch.from_numpy(array).reshape(width)

    add = {phase: {int(k): vec(v) for k, v in body[phase].items()} for phase in ("prompt", "generated")}
    ablate = {phase: {int(k): vec(v[1], int(v[0])) for k, v in body[f"ablate_{phase}"].items()} for phase in ("prompt", "generated")}
    return Decoded(str(body["key"]), add, ablate)
