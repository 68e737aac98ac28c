"""Client-side helpers shared by the server tests (tests/server/)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch
from openai import OpenAI
from tiny_models import make_tiny

import steering as st
from steering.server import BackgroundServer, ServerConfig, create_app
from steering.vectors import model_fingerprint

MODEL_NAME = "tiny-llama"
PROMPTS = (
    "Tell me about your day.",
    "What is the capital of France?",
    "Write a short poem about the ocean.",
    "Why is the sky blue?",
    "Please tell me a story about a dragon.",
)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` s (generous: CI is shared)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.005)


def chat(client: OpenAI, prompt: str, steering: list[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
    """A greedy chat completion of one user turn, steered by ``steering`` (via ``extra_body``)."""
    kwargs.setdefault("max_tokens", 16)
    kwargs.setdefault("temperature", 0)
    extra = {"steering": steering} if steering is not None else None
    return client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": prompt}], extra_body=extra, **kwargs)


def post(url: str, path: str, body: Any = None, *, content: bytes | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """A raw POST (for bodies the openai client would refuse to send)."""
    with httpx.Client(timeout=60) as http:
        if content is not None:
            return http.post(url + path, content=content, headers={"content-type": "application/json", **(headers or {})})
        return http.post(url + path, json=body, headers=headers)


def sse_events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of a server-sent-event response, in order."""
    return [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]


def sse_json(response: httpx.Response) -> list[dict[str, Any]]:
    events = sse_events(response)
    assert events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


def tiny_vector(seed: int, layers: list[int], *, norm: float = 6.0, site: str = "block_output", width: int = 32) -> st.SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    model, _ = make_tiny("llama")
    directions = {}
    for layer in layers:
        d = torch.randn(width, generator=generator)
        directions[layer] = d / d.norm() * norm
    fingerprint = model_fingerprint(model) if width == 32 else "unknown"
    return st.SteeringVector(
        directions,
        hidden_size=width,
        num_layers=3,
        model="tiny-llama",
        model_fingerprint=fingerprint,
        site=site,
        method="random",
        extra={"purpose": "tests"},
    )


SMOL_NAME = "smollm2-135m-instruct"


def start_smol_server(folder: Path, layers: list[int]) -> BackgroundServer:
    """A SmolLM2 server (greedy by default) with a sentiment vector at ``layers`` in ``folder``.

    Without the weights it skips, or fails under CI (`real_resources.load_real_model`).
    """
    from real_resources import load_real_model

    model, tok = load_real_model(SMOL_NAME)  # its own instance: the engine owns the model it serves
    st.extract(model, tok, st.load_pairs("sentiment")[:48], layers=layers).save(folder / "sentiment.safetensors")
    config = ServerConfig(model_name=SMOL_NAME, vectors_dir=folder, default_temperature=0.0)
    return BackgroundServer(create_app(model, tok, config)).start()


def start_server(vectors_dir: Path | None, **limits: object) -> BackgroundServer:
    """A tiny-Llama server on a free 127.0.0.1 port (call ``.stop()`` when done)."""
    model, tok = make_tiny("llama")
    config = ServerConfig(model_name=MODEL_NAME, vectors_dir=vectors_dir, **{"api_key": "", "default_temperature": 0.0, **limits})  # type: ignore[arg-type]
    return BackgroundServer(create_app(model, tok, config)).start()
