"""Datasets by name or path: the bundled contrastive sets and text files.

Bundled sets live in ``steering/datasets/<name>.jsonl`` (see its README);
`load_pairs` takes such a name or a path to a JSONL / CAA-style JSON file.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from steering.vectors import ContrastPair, DatasetError, read_pairs


def _bundled_dir() -> Path:
    return Path(str(resources.files("steering") / "datasets"))


def bundled_datasets() -> list[str]:
    """Names of the bundled contrastive-pair sets."""
    return sorted(p.stem for p in _bundled_dir().glob("*.jsonl"))


def bundled_path(filename: str) -> Path:
    """Path of a file shipped in ``steering/datasets`` (e.g. ``neutral.txt``)."""
    path = _bundled_dir() / filename
    if not path.is_file():
        raise DatasetError(f"no bundled file {filename!r} in {_bundled_dir()}")
    return path


def load_pairs(name_or_path: str | Path) -> list[ContrastPair]:
    """Load contrastive pairs from a bundled set name or a file path.

    Raises:
        DatasetError: unknown name (listing the bundled ones), or a malformed
            file, reported as ``file:line: reason``.

    Example:
        >>> pairs = load_pairs("sentiment")  # doctest: +SKIP
        >>> pairs[0].positive  # doctest: +SKIP
    """
    text = str(name_or_path)
    path = Path(text)
    if path.suffix or path.exists() or "/" in text:
        return read_pairs(path)
    bundled = _bundled_dir() / f"{text}.jsonl"
    if bundled.is_file():
        return read_pairs(bundled)
    raise DatasetError(f"{text!r} is neither a dataset file nor a bundled set ({', '.join(bundled_datasets())})")


def load_lines(name_or_path: str | Path) -> list[str]:
    """Non-empty lines of a text file (bundled file name or path)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = bundled_path(str(name_or_path))
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DatasetError(f"{path}: file has no non-empty lines")
    return lines


def load_prompts(name_or_path: str | Path) -> list[str]:
    """Prompts from a text file (one per line, as `load_lines`) or a ``.json`` list.

    A JSON list may hold strings or objects with an ``instruction`` or
    ``prompt`` field (e.g. the harmful / harmless splits of Arditi et al.).

    Raises:
        DatasetError: naming the file and the first item that is neither.
    """
    path = Path(name_or_path)
    if path.suffix != ".json":
        return load_lines(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(items, list) or not items:
        raise DatasetError(f"{path}: expected a non-empty JSON list of prompts")
    prompts: list[str] = []
    for k, item in enumerate(items):
        text = item if isinstance(item, str) else item.get("instruction", item.get("prompt")) if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{path}: item {k} is not a prompt (a string, or an object with 'instruction' or 'prompt')")
        prompts.append(text)
    return prompts
