"""The distribution: one top-level name (`steering`), every package listed, a wheel that works on its own.

The repository keeps hooks/, vectors/, experiments/ and conf/ beside steering/; pyproject's
``package-dir`` installs them as ``steering.hooks`` and so on. These tests check the list is
complete and that a non-editable install, run from another folder with the repository out of
sight, has its configs and datasets and runs the README's example.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"steering": "steering", "hooks": "steering.hooks", "vectors": "steering.vectors", "experiments": "steering.experiments"}


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed() -> None:
    listed = set(_setuptools()["packages"])
    found = {"steering.conf"}
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join([name, *init.parent.relative_to(ROOT / folder).parts]))
    assert listed == found


def test_installed_names_live_under_steering() -> None:
    mapping = _setuptools()["package-dir"]
    assert all(name == "steering" or name.startswith("steering.") for name in mapping)
    assert {Path(path).name for path in mapping.values()} == {"steering", "hooks", "vectors", "experiments", "conf"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install .`` (not editable, no dependencies) into a folder of its own."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work), str(ROOT)],
        check=True,
        cwd=work,
    )
    (wheel,) = work.glob("steering-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"steering"}, top
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return target


def _run_installed(target: Path, cwd: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    # -S: no site-packages processing, so the editable install's import finder (which maps the
    # repository) is not loaded; the dependencies come from this venv's site-packages by path.
    path = os.pathsep.join([str(target), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {**os.environ, "PYTHONPATH": path, "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_wheel_runs_an_experiment_from_another_folder(installed: Path, tmp_path: Path) -> None:
    probe = "import steering, steering.hooks, steering.conf; print(steering.__file__); print(steering.hooks.__file__)"
    out = _run_installed(installed, tmp_path, "-c", probe).stdout
    assert all(line.startswith(str(installed)) for line in out.split()), out
    for name in ("hooks", "vectors", "experiments", "conf"):  # no generic top-level names
        _run_installed(installed, tmp_path, "-c", f"import importlib.util as u, sys; sys.exit(u.find_spec({name!r}) is not None)")
    _run_installed(
        installed, tmp_path, "-m", "steering.experiments.cli", "run", "experiment=sentiment_sweep", "debug=default", "hydra.run.dir=out"
    )
    assert (tmp_path / "out" / "metrics.csv").is_file()


@pytest.mark.slow
def test_wheel_runs_the_readme_python_example(installed: Path, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"^## Python\n.*?^```python\n(.*?)^```", readme, re.S | re.M)
    assert example, "README has no Python example under '## Python'"
    (tmp_path / "example.py").write_text(example.group(1))
    _run_installed(installed, tmp_path, "example.py")
    assert (tmp_path / "sentiment.safetensors").is_file()
