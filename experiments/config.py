"""Compose the Hydra configs in ``conf/`` from ``key=value`` command-line overrides."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from steering.hooks.renamed import RENAMED

# Keys whose values are free text or paths: quoted before Hydra parses them, so
# a prompt may hold commas, colons or brackets without tripping its grammar.
FREE_TEXT_KEYS = ("prompt", "out", "data", "vector", "model", "file")
_NOT_IN_CONFIG = re.compile(r"^Could not override '(?P<key>[\w.]+)'")
_OVERRIDE = re.compile(r"^(?P<key>[+~]{0,2}[\w.]+)=(?P<value>.*)$", re.S)


def conf_dir() -> Path:
    """The ``conf/`` folder that sits beside the ``experiments`` package."""
    return Path(__file__).resolve().parent.parent / "conf"


def quote_free_text(overrides: Sequence[str]) -> list[str]:
    """Quote the values of free-text keys (see `FREE_TEXT_KEYS`) unless already quoted."""
    out = []
    for item in overrides:
        match = _OVERRIDE.match(item)
        if match and match["key"].lstrip("+~").split(".")[-1] in FREE_TEXT_KEYS:
            value = match["value"]
            if not (len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"") and value != "null":
                escaped = value.replace("\\", "\\\\").replace('"', '\\"')
                item = f'{match["key"]}="{escaped}"'
        out.append(item)
    return out


def rename_old_keys(overrides: Sequence[str], base: DictConfig) -> list[str]:
    """Rewrite overrides of renamed keys (``position=`` -> ``read=``, ``positions=`` -> ``apply_to=``), with a warning.

    Only where ``base`` (the command's YAML) has the new key and not the old one,
    so ``steering extract position=mean`` keeps working.
    """
    out = []
    for item in overrides:
        match = _OVERRIDE.match(item)
        if match:
            key = match["key"]
            parent, _, leaf = key.rpartition(".")
            prefix = key[: len(key) - len(key.lstrip("+~"))]
            parent = parent.lstrip("+~")
            node = base.get(parent) if parent else base
            new = RENAMED.get(leaf)
            if new is not None and isinstance(node, DictConfig) and new in node and leaf not in node:
                new_key = f"{parent}.{new}" if parent else new
                warnings.warn(f"{key.lstrip('+~')}= is deprecated; use {new_key}= (same values)", DeprecationWarning, stacklevel=3)
                item = f"{prefix}{new_key}={match['value']}"
        out.append(item)
    return out


def compose_config(name: str, overrides: Sequence[str]) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with ``overrides``, and check the values (`experiments.values`).

    Raises:
        ValueCheckError: a key the command does not have (``colour=blue``, and
            ``+layer=12``, which Hydra would add and the command ignore), or a
            value of the wrong type or range, naming key and value.
        hydra.errors.HydraException: other override syntax errors, as Hydra words them.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from .values import check_values, unknown_key

    if name == "serve":
        from .serve import register_schema  # the serve schema imports steering.server: only for serve

        register_schema()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name=f"steering_{name}"):
        base = compose(config_name=name)
        try:
            cfg = compose(config_name=name, overrides=quote_free_text(rename_old_keys(overrides, base)))
        except ConfigCompositionException as exc:
            # Hydra's hint ("To append to your config use +colour=blue") recommends a key the command ignores.
            missing = _NOT_IN_CONFIG.match(str(exc))
            if missing is None:
                raise
            raise unknown_key(name, missing["key"], base) from None
    check_values(name, cfg, base)
    return cfg


PLACEMENT_KEYS = ("device", "dtype", "device_map", "max_memory", "offload_folder")


def load_kwargs(node: DictConfig, **override: Any) -> dict[str, Any]:
    """``steering.load_model`` keywords from a config node's `PLACEMENT_KEYS` (those it has), as plain values.

    ``device_map`` is a strategy (``auto``) or ``{module: device}``; a
    ``max_memory`` key of digits is a GPU index (``{0: 20GiB, cpu: 64GiB}``
    on the command line may arrive as ``"0"``). ``override`` replaces keys.

    Example:
        >>> load_kwargs(OmegaConf.create({"dtype": "bfloat16", "max_memory": {"0": "20GiB"}}))
        {'device': None, 'dtype': 'bfloat16', 'max_memory': {0: '20GiB'}}
    """
    out: dict[str, Any] = {}
    for key in PLACEMENT_KEYS:
        value = node.get(key)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        if key == "max_memory" and isinstance(value, dict):
            value = {int(k) if str(k).isdigit() else k: v for k, v in value.items()}
        if value is not None or key in ("device", "dtype"):
            out[key] = value
    return {**out, **override}


def config_yaml(cfg: DictConfig) -> str:
    """The config as YAML with interpolations resolved (for run folders and reports)."""
    return OmegaConf.to_yaml(cfg, resolve=True)
