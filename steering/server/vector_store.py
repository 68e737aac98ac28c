"""`VectorStore`: vector names resolved inside one directory, and nowhere else.

A request names a vector by its file stem (``"sentiment"`` for
``<dir>/sentiment.safetensors``). Names are checked against a strict pattern
(no separators, no leading dot, so no ``..``), and the resolved file must sit
directly in the directory after symlinks are followed; anything else is
"not found", so a client learns nothing about files outside it.

Files are loaded on first use and validated against the served model (hidden
size, layer range, fingerprint); a file that changes on disk is loaded again,
so vectors can be added or replaced while the server runs. A change is seen
by its stat stamp (size, mtime, inode, ctime) and, while a file was modified
so recently that a same-size rewrite within the clock's resolution could
share that stamp (``cp -p`` keeps the mtime), by a hash of its bytes, the way
git treats "racily clean" index entries.

Loading happens outside the store-wide lock, under a lock per name: a slow
file delays only the requests that name it.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from steering.vectors import SteeringVector, VectorFileError, load_vector

SUFFIX = ".safetensors"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


class VectorNameError(ValueError):
    """A vector name that is not a plain file stem (a path, say)."""


class VectorNotFound(LookupError):
    """No vector of that name in the vectors directory."""


# A file modified less than this before it was read may be rewritten without
# a stamp change (coarse file-system clocks); such entries are checked by hash.
RACY_NS = 2_000_000_000

Stamp = tuple[int, int, int, int]  # (size, mtime_ns, inode, ctime_ns)


def file_stamp(stat: os.stat_result) -> Stamp:
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


def file_digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class _Entry:
    stamp: Stamp  # of the file when it was read
    digest: str | None  # of its bytes, kept only while the stamp is racy
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
        self._lock = threading.Lock()  # guards _cache and _loading only, never held while reading files
        self._loading: dict[str, threading.Lock] = {}

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
        entry = self._fresh(path)
        if entry is not None:
            return entry
        with self._lock:
            loading = self._loading.setdefault(path.name, threading.Lock())
        with loading:  # one load per name at a time; other names go on meanwhile
            entry = self._fresh(path)  # another thread may have loaded it while we waited
            if entry is None:
                entry = self._load(name, path)
                with self._lock:
                    self._cache[path.name] = entry
            return entry

    def _fresh(self, path: Path) -> _Entry | None:
        """The cached entry of ``path`` if the file is unchanged since it was read."""
        with self._lock:
            entry = self._cache.get(path.name)
        if entry is None or entry.stamp != file_stamp(path.stat()):
            return None
        if entry.digest is not None and entry.digest != file_digest(path):
            return None
        return entry

    def _load(self, name: str, path: Path) -> _Entry:
        read_at = time.time_ns()
        stat = path.stat()
        stamp = file_stamp(stat)
        # Racy: modified so recently that a rewrite could keep the stamp; remember the bytes' hash.
        racy = read_at - max(stat.st_mtime_ns, stat.st_ctime_ns) < RACY_NS
        digest = file_digest(path) if racy else None
        try:
            return _Entry(stamp, digest, load_vector(path, self._model, allow_model_mismatch=self._allow), None)
        except VectorFileError as exc:
            # Report the name, not the server's path to the file.
            return _Entry(stamp, digest, None, str(exc).replace(f"{path}: ", "").replace(str(path), repr(name)))

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
