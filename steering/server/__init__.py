"""An OpenAI-compatible server where every request carries its own steering.

Requests name vectors from one directory in a ``steering`` field of the body;
concurrent requests are decoded together (continuous batching on a stock
transformers model), each row of the batch steered by its own vectors with any
mode of ``st.steer`` (add, ablate, clamp, angular, affine). A request's greedy
output in a mixed batch is the same as alone.

Layout:

* `config` – `ServerConfig`, every limit in one place;
* `schemas`, `validate` – request bodies, and their checks into engine requests;
* `vector_store` – names resolved inside the vectors directory only;
* `row_steering` – the per-row delta and ablation tables and one-vector ops applied inside the hooks;
* `kv_batch`, `engine`, `sampling`, `text` – the batching scheduler thread;
* `app`, `http`, `responses`, `errors`, `metrics` – the FastAPI layer;
* `runner` – `serve` (foreground) and `BackgroundServer` (tests, benchmarks).

This package imports FastAPI; ``import steering`` does not import it.

Example:
    >>> from steering.server import ServerConfig, serve
    >>> model, tok = st.load_model("smollm2-135m-instruct")  # doctest: +SKIP
    >>> serve(model, tok, ServerConfig(model_name="smollm2-135m-instruct", vectors_dir=Path("vecs")))  # doctest: +SKIP
"""

from .app import create_app
from .config import API_KEY_ENV, ConfigError, ServerConfig
from .engine import Engine, EngineBusy, Finished, GenerationRequest
from .errors import APIError
from .row_steering import RowDeltas, RowSteering, Term, build_row_deltas
from .runner import BackgroundServer, serve
from .sampling import SamplingParams
from .text import Codec
from .vector_store import VectorStore

__all__ = [
    "API_KEY_ENV",
    "APIError",
    "BackgroundServer",
    "Codec",
    "ConfigError",
    "Engine",
    "EngineBusy",
    "Finished",
    "GenerationRequest",
    "RowDeltas",
    "RowSteering",
    "SamplingParams",
    "ServerConfig",
    "Term",
    "VectorStore",
    "build_row_deltas",
    "create_app",
    "serve",
]
