"""`VectorStore`: vector names resolved inside one directory, and nowhere else.

A request names a vector by its file stem (``"sentiment"`` for
``<dir>/sentiment.safetensors``). Names are checked against a strict pattern
(no separators, no leading dot, so no ``..``), and the resolved file must sit
directly in the directory after symlinks are followed; anything else is
"not found", so a client learns nothing about files outside it.

Files are loaded on first use and validated against the served model (hidden
size, layer range, fingerprint); a file that changes on disk (size or mtime)
is loaded again, so vectors can be added or replaced while the server runs.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vectors import SteeringVector, VectorFileError, load_vector

SUFFIX = ".safetensors"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


class VectorNameError(ValueError):
    """A vector name that is not a plain file stem (a path, say)."""


class VectorNotFound(LookupError):
    """No vector of that name in the vectors directory."""


@dataclass(frozen=True)
class _Entry:
    stamp: tuple[int, int]  # (size, mtime_ns) of the file when it was read
    vector: SteeringVector | None
    error: str | None


class VectorStore:
    """Load, validate and cache the vectors of one directory.

    Args:
        root: the vectors directory (``None``: a store with no vectors).
        model: the served model; every vector is checked against it.
        allow_model_mismatch: accept vectors made on another checkpoint of the
            same shape (see `vectors.load_vector`).

    Example:
        >>> store = VectorStore(Path("vectors"), model)  # doctest: +SKIP
        >>> store.get("sentiment").layers  # doctest: +SKIP
        [12]
    """

    def __init__(self, root: Path | None, model: nn.Module, *, allow_model_mismatch: bool = False) -> None:
        if root is not None and not Path(root).is_dir():
            raise VectorFileError(f"vectors={root}: not a directory")
        self.root = Path(root).resolve() if root is not None else None
        self._model = model
        self._allow = allow_model_mismatch
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Stems of the ``.safetensors`` files directly in the directory, sorted."""
        if self.root is None:
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.root.iterdir() if p.name.endswith(SUFFIX) and self._inside(p))

    def get(self, name: str) -> SteeringVector:
        """The vector called ``name``.

        Raises:
            VectorNameError: ``name`` is not a plain file stem.
            VectorNotFound: no such file in the directory.
            VectorFileError: the file is unreadable or does not fit the model.
        """
        entry = self._entry(name)
        if entry.vector is None:
            raise VectorFileError(f"vector {name!r} cannot be used: {entry.error}")
        return entry.vector

    def describe(self) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """``(vectors, errors)``: name, layers, norms and metadata of each loadable file, and why the others fail."""
        good: list[dict[str, Any]] = []
        bad: list[dict[str, str]] = []
        for name in self.names():
            try:
                entry = self._entry(name)
            except VectorNotFound:  # removed since listing
                continue
            if entry.vector is None:
                bad.append({"name": name, "error": entry.error or "unreadable"})
                continue
            vec = entry.vector
            good.append(
                {
                    "id": name,
                    "object": "steering.vector",
                    "layers": vec.layers,
                    "norms": {str(i): round(n, 6) for i, n in vec.norms().items()},
                    "site": vec.site,
                    "hidden_size": vec.hidden_size,
                    "metadata": vec.metadata(),
                }
            )
        return good, bad

    # ----------------------------------------------------------------- internals
    def _entry(self, name: str) -> _Entry:
        path = self.path_of(name)
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            entry = self._cache.get(path.name)
            if entry is not None and entry.stamp == stamp:
                return entry
            try:
                entry = _Entry(stamp, load_vector(path, self._model, allow_model_mismatch=self._allow), None)
            except VectorFileError as exc:
                # Report the name, not the server's path to the file.
                entry = _Entry(stamp, None, str(exc).replace(f"{path}: ", "").replace(str(path), repr(name)))
            self._cache[path.name] = entry
            return entry

    def path_of(self, name: str) -> Path:
        """The file behind ``name``, checked to lie in the directory.

        Raises:
            VectorNameError, VectorNotFound: as in `get`.
        """
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise VectorNameError(
                f"vector name {name!r} is not valid: use the file stem of a vector in the server's "
                "vectors directory (letters, digits, '.', '_', '-'; no paths)"
            )
        stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
        if self.root is None:
            raise VectorNotFound(f"unknown vector {name!r}: this server has no vectors directory")
        path = self.root / f"{stem}{SUFFIX}"
        if not (path.is_file() and self._inside(path)):
            known = ", ".join(self.names()[:20]) or "none"
            raise VectorNotFound(f"unknown vector {name!r}; available: {known}")
        return path

    def _inside(self, path: Path) -> bool:
        # A symlink pointing out of the directory does not count as inside it.
        try:
            return path.resolve().parent == self.root
        except OSError:
            return False
