"""Servers for the server tests: tiny random Llamas on free loopback ports.

One session-scoped server (no API key, roomy limits) serves most tests; a
few tests build their own small server for API keys and tight limits. Every
server has its own model instance: the engine owns the model it runs.

Vectors (``vecs`` fixture, one folder for the session):

* ``up``    – layers 1 and 2, norm 6 (block_output), with a reference mean (affine modes)
* ``side``  – layer 1 only, another direction (block_output)
* ``pre``   – layer 2 at ``block_input`` (a second hook site)
* ``broken`` – not a safetensors file (listed under ``errors``)
* ``wide``  – hidden size 64: does not fit the model (listed under ``errors``)
* ``hollow`` – layers 1 and 2, zero at layer 2 (nothing to ablate there)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from openai import OpenAI
from server_helpers import start_server, tiny_vector
from tiny_models import make_tiny

from steering.server import BackgroundServer


@pytest.fixture(scope="session")
def vecs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vectors")
    up = tiny_vector(1, [1, 2])
    g = torch.Generator().manual_seed(11)
    dataclasses.replace(up, reference={i: torch.randn(32, generator=g) for i in (1, 2)}).save(folder / "up.safetensors")
    tiny_vector(2, [1]).save(folder / "side.safetensors")
    tiny_vector(3, [2], site="block_input").save(folder / "pre.safetensors")
    (folder / "broken.safetensors").write_bytes(b"this is not a safetensors file")
    tiny_vector(4, [1], width=64).save(folder / "wide.safetensors")
    hollow = tiny_vector(5, [1, 2])
    dataclasses.replace(hollow, directions={1: hollow.directions[1], 2: hollow.directions[2] * 0}).save(folder / "hollow.safetensors")
    return folder


@pytest.fixture(scope="session")
def server(vecs: Path) -> Iterator[BackgroundServer]:
    srv = start_server(vecs, max_batch_size=8, max_tokens_limit=64, max_coef=10.0, max_vectors=3, max_body_bytes=20_000)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: BackgroundServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def reference() -> tuple[torch.nn.Module, object]:
    """A separate tiny Llama (same weights) for library-side reference generations."""
    return make_tiny("llama")
