"""Check the values of a composed command config before any model loads.

Hydra parses ``key=value`` into whatever type the text looks like, and the
commands' configs are plain YAML (no schema), so without these checks
``layers=[12.5]`` became layer 12, ``chat=maybe`` was true, ``coef=[]``
printed nothing and ``coef=abc`` failed deep inside with a bare ``float()``
message. Here every key a command reads as a number, bool or layer list is
checked, and a bad value raises `ValueCheckError` naming the key and the value
(``layers=[12.5]: 12.5 is not an integer layer index``); the CLI prints that one line.
A key the command does not know (``+layer=12``) is refused the same way, with
the closest known key as a hint. Coefficients go through the library's own
policy, `vectors.check_coef`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from steering.hooks import SteeringError

Check = Callable[[str, Any], None]


class ValueCheckError(SteeringError, ValueError):
    """A command-line value of the wrong type or range, or a key the command does not have."""


def shown(value: Any) -> str:
    """``value`` as it would be typed on the command line (``[12.5]``, ``abc``, ``null``)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(shown(v) for v in value) + "]"
    return str(value)


def _fail(key: str, value: Any, why: str) -> ValueCheckError:
    return ValueCheckError(f"{key}={shown(value)}: {why}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(minimum: int | None = None, *, optional: bool = False) -> Check:
    """A whole number (not ``5.0``, not ``true``), at least ``minimum``; ``null`` if ``optional``."""

    def check(key: str, value: Any) -> None:
        if value is None and optional:
            return
        if not _is_int(value):
            raise _fail(key, value, "expected an integer" + (" or null" if optional else ""))
        if minimum is not None and value < minimum:
            raise _fail(key, value, f"must be >= {minimum}")

    return check


def number(minimum: float | None = None, maximum: float | None = None) -> Check:
    """A finite int or float within ``[minimum, maximum]``."""

    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(key, value, "expected a finite number")
        if minimum is not None and maximum is not None and not minimum <= value <= maximum:
            raise _fail(key, value, f"must be between {minimum:g} and {maximum:g}")
        if minimum is not None and value < minimum:
            raise _fail(key, value, f"must be >= {minimum:g}")
        if maximum is not None and value > maximum:
            raise _fail(key, value, f"must be <= {maximum:g}")

    return check


def boolean(*, optional: bool = False) -> Check:
    """``true`` or ``false`` (``null`` too if ``optional``); never a string such as ``maybe``."""

    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or (value is None and optional):
            return
        raise _fail(key, value, "expected true or false" + (" (or null for automatic)" if optional else ""))

    return check


def mapping(key: str, value: Any) -> None:
    """``{name:value,...}`` or ``null`` (a key the schema leaves open: ``vllm_args``)."""
    if value is not None and not isinstance(value, DictConfig):
        raise _fail(key, value, "expected {name:value,...} (e.g. {enforce_eager:true}) or null")


def layers(*, optional: bool = True) -> Check:
    """A layer index or a non-empty list of them (integers; negative counts from the end)."""

    def check(key: str, value: Any) -> None:
        if value is None and optional:
            return
        items = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if _is_int(items):
            return
        if not isinstance(items, list):
            raise _fail(key, value, "expected a layer index or a list of them, e.g. [12] or [10,12,14]")
        if not items:
            raise _fail(key, value, "the list of layers is empty" + ("; leave it out (null) for all layers" if optional else ""))
        for item in items:
            if not _is_int(item):
                raise _fail(key, value, f"{shown(item)} is not an integer layer index")

    return check


def coefs(key: str, value: Any) -> None:
    """A coefficient or a non-empty list of them, each under `vectors.check_coef`."""
    from steering.vectors import CoefError, check_coef

    items = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    if not isinstance(items, list):
        items, names = [items], [key]
    elif not items:
        raise _fail(key, value, "the list of coefficients is empty; give a number or a list such as [-4,0,4]")
    else:
        names = [f"{key}[{i}]" for i in range(len(items))]
    for item, name in zip(items, names):
        try:
            check_coef(item, name=name)
        except CoefError as exc:
            raise ValueCheckError(str(exc)) from None


def _torch_threads(key: str, value: Any) -> None:
    """``auto``, null or an integer >= 1 (serve's default is ``auto``: an integer-only check refused it)."""
    if value != "auto":
        integer(1, optional=True)(key, value)


_MODEL = {"allow_model_mismatch": boolean()}
CHECKS: dict[str, dict[str, Check]] = {
    "extract": {"layers": layers(), "batch_size": integer(1), "reference": boolean()},
    "generate": {
        **_MODEL,
        "coef": coefs,
        "layers": layers(),
        "max_new_tokens": integer(1),
        "compare": boolean(),
        "chat": boolean(optional=True),
        "do_sample": boolean(),
        "temperature": number(0.0),
        "top_p": number(0.0, 1.0),
        "seed": integer(),
    },
    "bake": {**_MODEL, "coef": number(), "layers": layers()},
    "convert": {
        **_MODEL,
        "layers": layers(),
        "num_layers": integer(1, optional=True),
        "layer": integer(0, optional=True),
        "llama_cpp": boolean(),
        "coef": number(),
    },
    "compare": {
        "layers": layers(),
        "plot_layers": layers(),
        "plots": boolean(),
        "embed_images": boolean(),
        "batch_size": integer(1),
        "seed": integer(),
        "interpolate.coef": coefs,
        "interpolate.n_prompts": integer(1),
        "interpolate.max_new_tokens": integer(1),
        "interpolate.layers": layers(),
        "interpolate.layer": integer(optional=True),
        "foreign.num_layers": integer(1, optional=True),
        "foreign.allow_model_mismatch": boolean(),
    },
    "serve": {**_MODEL, "port": integer(0), "torch_threads": _torch_threads, "max_coef": number(0.0), "vllm_args": mapping},
}


def check_values(command: str, cfg: DictConfig, base: DictConfig) -> None:
    """Refuse keys ``base`` (the command's YAML) lacks, then check each typed key of ``command``.

    Raises:
        ValueCheckError: one line naming the key and the value.
    """
    _check_keys(command, cfg, base)
    for key, check in CHECKS.get(command, {}).items():
        check(key, OmegaConf.select(cfg, key))


def unknown_key(command: str, key: str, base: DictConfig) -> ValueCheckError:
    """The error for a key (dotted) that ``command``'s config ``base`` does not have."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(base, parent) if parent else base
    known = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    prefix = f"{parent}." if parent else ""
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f"; did you mean {prefix}{close[0]}=...?" if close else ""
    return ValueCheckError(f"unknown key '{key}' for steering {command}{hint} (see conf/{command}.yaml for the keys)")


def _check_keys(command: str, cfg: DictConfig, root: DictConfig, prefix: str = "") -> None:
    base = OmegaConf.select(root, prefix.rstrip(".")) if prefix else root
    for key in cfg.keys():
        if key not in base.keys():  # not `in base`: that is False for a ??? value
            raise unknown_key(command, f"{prefix}{key!s}", root)
        if isinstance(cfg[key], DictConfig) and isinstance(base[key], DictConfig):
            _check_keys(command, cfg[key], root, f"{prefix}{key!s}.")
