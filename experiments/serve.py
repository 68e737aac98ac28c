"""The ``serve`` command: load a model and serve it with per-request steering.

``conf/serve.yaml`` holds the settings; every key but the model-loading ones
and ``host``/``port``/``log_level`` is a field of `steering.server.ServerConfig`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

_NOT_LIMITS = {"model", "device", "dtype", "vectors", "served_model_name", "host", "port", "api_key", "log_level", "torch_threads"}


def server_config(cfg: DictConfig):  # -> steering.server.ServerConfig
    """The `ServerConfig` described by a composed ``serve`` config."""
    from steering.server import ServerConfig

    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    limits = {k: v for k, v in cfg.items() if k not in _NOT_LIMITS}
    unknown = sorted(set(limits) - fields)
    if unknown:
        raise ValueError(f"unknown serve settings {unknown}; see conf/serve.yaml")
    if cfg.vectors is not None and not Path(str(cfg.vectors)).expanduser().is_dir():
        raise ValueError(f"vectors={cfg.vectors}: not a directory")
    api_key = None if cfg.api_key is None else str(cfg.api_key)
    return ServerConfig(
        model_name=str(cfg.served_model_name or cfg.model),
        vectors_dir=Path(str(cfg.vectors)) if cfg.vectors is not None else None,
        api_key=api_key,
        **limits,
    )


def choose_torch_threads(setting: object) -> tuple[int, str]:
    """The intra-op thread count to serve with, and why.

    ``auto`` (the default) takes the cores this process may use (at most
    torch's own default, which counts physical cores) less the 1-minute load
    average, and at least 1: on a busy machine, threads that wait for a core
    cost more than they bring (2 threads on a loaded 2-core machine ran 32
    rows at ~1 token/s where 1 thread was far faster). An integer is used as
    given; ``null`` keeps torch's default.
    """
    import torch

    if setting is None:
        return torch.get_num_threads(), "torch's default"
    if str(setting) != "auto":
        if isinstance(setting, bool) or not str(setting).isdigit() or int(str(setting)) < 1:
            raise ValueError(f"torch_threads={setting}: must be auto, an integer >= 1, or null")
        return int(str(setting)), "torch_threads"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores = max(1, min(usable, torch.get_num_threads()))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = max(1, min(cores, int(cores - load)))
    return threads, f"auto: {cores} cores, 1-minute load {load:.1f}; set torch_threads=N to override"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(cfg: DictConfig) -> None:
    """Load ``cfg.model`` and serve it on ``cfg.host:cfg.port`` until interrupted."""
    import steering as st
    from steering.server import serve

    port = int(cfg.port)
    if not 0 < port < 65536:
        raise ValueError(f"port={cfg.port}: must be between 1 and 65535")
    config = server_config(cfg)
    key = config.resolved_api_key()
    host = str(cfg.host)
    if not _is_loopback(host) and key is None:
        print(f"steering serve: warning: host={host} is reachable from other machines and no api_key is set", file=sys.stderr)
    import torch

    threads, why = choose_torch_threads(cfg.torch_threads)
    torch.set_num_threads(threads)
    print(f"torch threads: {threads} ({why})", flush=True)
    model, tok = st.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    vectors = f"vectors from {config.vectors_dir}" if config.vectors_dir else "no vectors directory (unsteered only)"
    print(f"serving {config.model_name} on http://{host}:{port}/v1 ({vectors}; api key {'required' if key else 'off'})", flush=True)
    serve(model, tok, config, host=host, port=port, log_level=str(cfg.log_level))
