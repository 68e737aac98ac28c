"""One of each part: no import cycles dodged by imports inside functions, one version, one ConfigError."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _local_imports_in_functions(path: Path) -> list[str]:
    """Relative or same-package imports made inside a function body (the usual cycle dodge)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.level > 0:
                    found.append(f"{path.name}:{inner.lineno} from {'.' * inner.level}{inner.module or ''}")
    return found


@pytest.mark.parametrize(
    "module", ["vectors/vector.py", "vectors/io.py", "vectors/model_info.py", "experiments/schema.py", "experiments/metrics/data.py"]
)
def test_no_cycle_dodging_imports(module: str) -> None:
    assert _local_imports_in_functions(ROOT / module) == []


def test_one_version_string() -> None:
    import steering
    from steering.server.app import create_app  # noqa: F401  (imports cleanly)

    assert steering.__version__ == importlib.metadata.version("steering")
    for path in (ROOT / "steering" / "__init__.py", ROOT / "steering" / "server" / "app.py"):
        assert steering.__version__ not in path.read_text(encoding="utf-8"), path  # read from pyproject, not written again


def test_one_config_error() -> None:
    from steering import hooks
    from steering.experiments.schema import ConfigError as RunConfigError
    from steering.server import ConfigError as ServerConfigError

    assert RunConfigError is ServerConfigError is hooks.ConfigError
    assert issubclass(hooks.ConfigError, hooks.SteeringError)


# Which installed packages each source folder may import (hooks -> vectors -> steering -> experiments).
_ALLOWED = {
    "hooks": {"steering.hooks"},
    "vectors": {"steering.hooks", "steering.vectors"},
    "steering": {"steering"},  # the facade, its subpackages, hooks and vectors; not experiments
    "experiments": {"steering"},
}


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)] + [
                (node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "steering"
            ]
    return found


@pytest.mark.parametrize("folder", sorted(_ALLOWED))
def test_imports_point_one_way(folder: str) -> None:
    """No layer imports one above it, and nothing imports the old top-level names."""
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, name in _imported_modules(path):
            ours = name == "steering" or name.startswith("steering.")
            if name.split(".")[0] in {"hooks", "vectors", "experiments", "conf"}:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} (installed as steering.{name})")
            elif ours and folder != "experiments" and (name == "steering.experiments" or name.startswith("steering.experiments.")):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} (experiments is the top layer)")
            elif ours and folder in ("hooks", "vectors") and not any(name == a or name.startswith(a + ".") for a in _ALLOWED[folder]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} (above {folder})")
    assert bad == []
