"""HTML pages from Jinja2 templates (``experiments/templates``, shipped as package data).

Both reports (``steering run``'s and ``steering compare``'s) extend
``base.html.j2`` and are rendered here with autoescaping on: every value a
template prints is escaped unless it is marked safe, so a vector, prompt or
generation holding ``<script>`` shows as text. Numbers go through one filter,
``num``.
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steering.vectors import atomic_write


def num(value: Any, digits: int = 3) -> str:
    """A number as the reports show it: ``–`` for missing or non-finite, ``yes``/``no`` for bools, lists joined."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:`` URI (the page then needs no other file)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def layers_text(layers: Sequence[int]) -> str:
    """``[1,2,3,5]`` -> ``1-3, 5``."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("steering.experiments", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,  # a misspelt name fails the render instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = num
    env.filters["layers_text"] = layers_text
    env.globals["nan"] = math.nan
    return env


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context`` (autoescaped)."""
    return _environment().get_template(template).render(**context)


def write_page(path: Path, template: str, **context: Any) -> Path:
    """Render ``template`` and write it to ``path`` atomically; returns the path."""
    text = render(template, **context)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=".html")
