"""`ServerConfig`: every limit and default of the server in one frozen value.

The field defaults here are the only ones: ``steering serve``'s typed schema
(``experiments/serve.py``, ``ServeConf``) copies each field with its type and
default; tests build the dataclass directly.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from steering.hooks import ConfigError

API_KEY_ENV = "STEERING_API_KEY"


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one server.

    Attributes:
        model_name: the id clients pass as ``model`` and ``/v1/models`` lists.
        vectors_dir: folder of ``<name>.safetensors`` vectors (``None``: no steering).
        api_key: required ``Bearer`` key on every endpoint but ``/health``;
            ``None`` reads ``$STEERING_API_KEY``; empty string disables it.
        max_batch_size: rows decoded together in one forward pass.
        max_queue: requests waiting for a batch slot; one more gets a 503.
        max_concurrent_requests: generation requests in progress (running or
            waiting) over all HTTP calls; one more gets a 503.
        retry_after_s: ``Retry-After`` seconds sent with a 503.
        default_max_tokens: ``max_tokens`` when a request gives none (capped to
            what the context leaves).
        max_tokens_limit: the largest ``max_tokens`` accepted (else 422).
        context_length: prompt + completion tokens allowed (``None``: the
            model's ``max_position_embeddings``).
        max_coef: largest ``|coef|`` of a steering term (else 422).
        max_vectors: steering terms per request (else 422).
        max_choices: completions per request (``n`` times the prompts).
        max_stop: stop sequences per request (OpenAI allows 4).
        max_body_bytes: request bodies above this get a 413.
        default_temperature: ``temperature`` when a request gives none
            (OpenAI's default is 1.0; 0 means greedy).
        allow_model_mismatch: serve vectors whose fingerprint names another
            checkpoint of the same shape.
        drain_timeout_s: on shutdown (SIGTERM), how long calls in flight may
            go on before each is ended with a ``shutting_down`` error.
    """

    model_name: str = "model"
    vectors_dir: Path | None = None
    api_key: str | None = None
    max_batch_size: int = 8
    max_queue: int = 64
    max_concurrent_requests: int = 64
    retry_after_s: int = 1
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    context_length: int | None = None
    max_coef: float = 50.0
    max_vectors: int = 8
    max_choices: int = 8
    max_stop: int = 4
    max_body_bytes: int = 1 << 20
    default_temperature: float = 1.0
    allow_model_mismatch: bool = False
    drain_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.vectors_dir is not None:
            object.__setattr__(self, "vectors_dir", Path(self.vectors_dir).expanduser())
        for name in (
            "max_batch_size",
            "max_concurrent_requests",
            "retry_after_s",
            "default_max_tokens",
            "max_tokens_limit",
            "max_vectors",
            "max_choices",
            "max_body_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}: must be an integer >= 1")
        for name in ("max_queue", "max_stop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}={value!r}: must be an integer >= 0")
        if self.context_length is not None and self.context_length < 2:
            raise ConfigError(f"context_length={self.context_length!r}: must be >= 2 or null")
        if not (math.isfinite(self.max_coef) and self.max_coef > 0):
            raise ConfigError(f"max_coef={self.max_coef!r}: must be a finite number > 0")
        if not (math.isfinite(self.drain_timeout_s) and 0 <= self.drain_timeout_s <= 60):
            raise ConfigError(f"drain_timeout_s={self.drain_timeout_s!r}: must be in [0, 60] seconds")
        if not (math.isfinite(self.default_temperature) and 0 <= self.default_temperature <= 2):
            raise ConfigError(f"default_temperature={self.default_temperature!r}: must be in [0, 2]")

    def resolved_api_key(self) -> str | None:
        """The key to require: the configured one, else ``$STEERING_API_KEY``; ``None`` = open."""
        key = self.api_key if self.api_key is not None else os.environ.get(API_KEY_ENV)
        return key or None

    def replace(self, **changes: object) -> ServerConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
