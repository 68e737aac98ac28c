"""``steering serve`` end to end: the command in a subprocess, a tiny model folder, a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from tiny_models import save_tiny

import steering as st

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_serve_model"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(tiny_folder: Path, vecs: Path, *settings: str) -> tuple[subprocess.Popen[str], str]:
    """``steering serve`` on a free loopback port, once ``/health`` answers."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "steering.experiments.cli",
        "serve",
        f"model={tiny_folder}",
        f"vectors={vecs}",
        f"port={port}",
        "served_model_name=tiny",
        "log_level=warning",
        "default_temperature=0",
        *settings,
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, f"steering serve exited: {process.stdout.read() if process.stdout else ''}"
        assert time.monotonic() < deadline, "steering serve did not come up"
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)


def _stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM, then the output (kill only if it hangs)."""
    process.terminate()
    try:
        out, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


def test_steering_serve_command_serves_steered_chat(tiny_folder: Path, vecs: Path) -> None:
    process, url = _serve(tiny_folder, vecs, "api_key=sk-cli", "torch_threads=1")
    try:
        client = OpenAI(base_url=url + "/v1", api_key="sk-cli", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "Hello"}]
        plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
        steered = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=8, extra_body={"steering": [{"vector": "up", "coef": 4.0}]}
        )
        assert plain.choices[0].message.content != steered.choices[0].message.content
        model, tok = st.load_model(str(tiny_folder))  # the library on the same checkpoint
        up = st.SteeringVector.load(vecs / "up.safetensors")
        assert steered.choices[0].message.content == st.generate(model, tok, "Hello", up, 4.0, max_new_tokens=8)
        assert plain.choices[0].message.content == st.generate(model, tok, "Hello", max_new_tokens=8)
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
    finally:
        out = _stop(process)
    assert f"serving tiny on http://127.0.0.1:{url.rsplit(':', 1)[1]}/v1" in out
    assert "api key required" in out and "torch threads: 1 (torch_threads)" in out


def test_sigterm_ends_every_open_stream_and_exits_0(tiny_folder: Path, vecs: Path) -> None:
    """Eight streams in flight at SIGTERM: each ends with a finish or a shutting_down error event, then [DONE]."""
    process, url = _serve(tiny_folder, vecs, "drain_timeout_s=0.2")
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 400, "stream": True, "steering": [{"vector": "up", "coef": 2.0}]}
    started = threading.Semaphore(0)

    def stream() -> list[str]:
        events = []
        with httpx.Client(timeout=60) as http, http.stream("POST", url + "/v1/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: ") :])
                    if len(events) == 1:
                        started.release()
        return events

    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(stream) for _ in range(8)]
            for _ in futures:
                assert started.acquire(timeout=60), "a stream did not start"
            process.send_signal(signal.SIGTERM)
            results = [f.result(timeout=60) for f in futures]
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, out
    assert "Traceback" not in out and "CancelledError" not in out, out
    for events in results:
        assert events[-1] == "[DONE]", events[-3:]
        last = json.loads(events[-2])
        ended = "error" in last and last["error"]["code"] == "shutting_down"
        assert ended or last["choices"][0]["finish_reason"] in ("stop", "length"), last
