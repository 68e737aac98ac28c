"""The front end of the vLLM plugin: a request's ``extra_args["steering"]`` checked and folded.

Checks are our HTTP server's own: the body schema (`steering.server.schemas.
SteeringTerm`), vector names inside one folder, the fit check against the
model, the coef policy and the layer rules (`steering.server.validate.
check_terms`), with the same messages. The plugin runs them in vLLM's front-end
process before a request reaches the engine, so a bad request is a 400 from
``vllm serve`` (or a ``VLLMValidationError`` offline) and never reaches a worker.

``extra_args["steering"]`` is a list of terms, or that list as a JSON string
(``vllm serve`` passes ``vllm_xargs`` values as scalars).

Settings come from the environment, because vLLM starts its own processes:

- ``STEERING_VECTORS``: the vectors folder (unset: no vectors, every named
  vector is unknown);
- ``STEERING_ALLOW_MODEL_MISMATCH=1``: skip the fingerprint check, as
  ``allow_model_mismatch`` does in ``steering serve``;
- ``STEERING_MAX_ABLATE``: most ``ablate`` terms at one layer (default 4;
  it sizes the workers' persistent tables).

For the fit check the front end loads the model's Hugging Face checkpoint on
the CPU once (`steering serve engine=vllm` hands over the one it already has).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from torch import nn

from steering.hooks import num_layers
from steering.server.config import ServerConfig
from steering.server.errors import APIError, from_validation_errors
from steering.server.row_steering import build_row_deltas
from steering.server.schemas import SteeringTerm
from steering.server.validate import check_terms
from steering.server.vector_store import VectorStore
from steering.vectors import hidden_size

from .payload import SITE, encode

VECTORS_ENV = "STEERING_VECTORS"
ALLOW_ENV = "STEERING_ALLOW_MODEL_MISMATCH"
MAX_ABLATE_ENV = "STEERING_MAX_ABLATE"

_TERMS = TypeAdapter(list[SteeringTerm])

VLLM_MODES: tuple[str, ...] = ("add", "ablate")
"""The modes the vLLM engine applies: its workers' tables hold added vectors and ablated bases only."""
VLLM_ENGINE = "the vLLM engine (its worker tables hold added vectors and ablated bases only)"


def max_ablate() -> int:
    """``$STEERING_MAX_ABLATE`` (default 4): ablated directions per layer and request."""
    raw = os.environ.get(MAX_ABLATE_ENV, "4")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{MAX_ABLATE_ENV}={raw!r}: must be an integer >= 1")
    return int(raw)


def parse_terms(raw: object) -> list[SteeringTerm]:
    """``extra_args["steering"]`` as schema-checked terms (a 422 `APIError` naming the field otherwise)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise APIError(422, f"steering: not valid JSON ({exc})", param="steering", code="invalid_value") from None
    if not isinstance(raw, list):
        raise APIError(422, f"steering: must be a list of terms, got {type(raw).__name__}", param="steering", code="invalid_value")
    try:
        return _TERMS.validate_python(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("steering", *e.get("loc", ()))} for e in exc.errors()]
        raise from_validation_errors(errors) from None


@dataclass(frozen=True)
class Frontend:
    """What checking a request needs: the server limits, the vectors and the model's shape."""

    config: ServerConfig
    store: VectorStore
    num_layers: int
    width: int
    max_ablate: int = 4

    @classmethod
    def for_model(cls, model: nn.Module, config: ServerConfig) -> Frontend:
        store = VectorStore(config.vectors_dir, model, allow_model_mismatch=config.allow_model_mismatch)
        return cls(config, store, num_layers(model), hidden_size(model), max_ablate())

    def prepare(self, raw: object) -> dict[str, Any] | None:
        """The payload (`payload.encode`) of a request's steering, ``None`` for none.

        Raises:
            APIError: the status, message and field our HTTP server gives.
        """
        terms = parse_terms(raw)
        resolved = check_terms(terms, self.config, self.store, self.num_layers, modes=VLLM_MODES, engine=VLLM_ENGINE)
        if not resolved:
            return None
        for i, term in enumerate(resolved):
            if term.vector.site != SITE:
                raise APIError(
                    422,
                    f"steering[{i}].vector: vector {terms[i].vector!r} was made at site {term.vector.site!r}; "
                    f"the vLLM engine steers {SITE!r} only",
                    param=f"steering[{i}].vector",
                    code="invalid_vector",
                )
        deltas = build_row_deltas(resolved)
        for phase in ("prompt", "generated"):
            for (_, layer), basis in deltas.ablation(phase).items():
                if basis.shape[0] > self.max_ablate:
                    raise APIError(
                        422,
                        f"steering ablates {basis.shape[0]} directions at layer {layer}; the vLLM engine allows "
                        f"{self.max_ablate} per layer ({MAX_ABLATE_ENV})",
                        param="steering",
                        code="too_many_vectors",
                    )
        return encode(deltas, self.width)


_frontends: dict[str, Frontend] = {}
_lock = threading.Lock()


def install_frontend(model_path: str, frontend: Frontend) -> None:
    """Use ``frontend`` for requests to the vLLM model at ``model_path`` (what `steering serve` does)."""
    with _lock:
        _frontends[str(model_path)] = frontend


def frontend_for(model_path: str, env: Mapping[str, str] | None = None) -> Frontend:
    """The `Frontend` of ``model_path``: the installed one, else one built from the environment (once)."""
    key = str(model_path)
    with _lock:
        found = _frontends.get(key)
        if found is None:
            from steering.models import load_model

            env = os.environ if env is None else env
            allow = env.get(ALLOW_ENV, "").lower() in ("1", "true", "yes")
            root = env.get(VECTORS_ENV)
            config = ServerConfig(model_name=key, vectors_dir=Path(root) if root else None, allow_model_mismatch=allow)
            model, _ = load_model(key)
            found = _frontends[key] = Frontend.for_model(model, config)
        return found
