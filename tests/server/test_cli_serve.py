"""``steering serve`` end to end: the command in a subprocess, a tiny model folder, a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from tiny_models import save_tiny

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_serve_model"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_steering_serve_command_serves_steered_chat(tiny_folder: Path, vecs: Path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "experiments.cli", "serve", f"model={tiny_folder}", f"vectors={vecs}", f"port={port}",
               "api_key=sk-cli", "served_model_name=tiny", "log_level=warning", "default_temperature=0"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"steering serve exited: {process.stdout.read() if process.stdout else ''}"
            assert time.monotonic() < deadline, "steering serve did not come up"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        client = OpenAI(base_url=url + "/v1", api_key="sk-cli", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "Hello"}]
        plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
        steered = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8,
                                                 extra_body={"steering": [{"vector": "up", "coef": 4.0}]})
        assert plain.choices[0].message.content != steered.choices[0].message.content
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
    finally:
        process.terminate()
        try:
            out, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
    assert f"serving tiny on http://127.0.0.1:{port}/v1" in out
    assert "api key required" in out
