"""``sweep.backend=ray``: the steered cells on a local Ray cluster of 2 workers give the serial run's files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from real_resources import missing

import steering as st
from steering.experiments import ray_sweep
from steering.experiments.results import read_metrics
from steering.experiments.run import compose_run, run


@pytest.fixture
def ray() -> Any:
    """The ``ray`` module (a dev dependency: skipped where it is missing, failed under CI=true)."""
    try:
        import ray
    except ImportError:
        missing("Ray is not installed: pip install 'steering[ray]'")
    return ray


def _sweep(tiny_dir: Path, out: Path, *extra: str) -> list[str]:
    """A 2 x 3 sentiment grid on the tiny model, every metric of the sentiment experiment."""
    return ["experiment=sentiment_sweep", "debug=default", f"model.name={tiny_dir}", f"out_dir={out}", "select.min_delta=0", *extra]


def _rows(out: Path) -> list[tuple]:
    return sorted(tuple(r.values()) for r in read_metrics(out / "metrics.csv"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The serial run with the workers' thread count (1 CPU each), so float sums run in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ray_sweep_gives_the_serial_rows_and_choices(ray: Any, tiny_dir: Path, tmp_path: Path, one_thread: None) -> None:
    serial = run(compose_run(_sweep(tiny_dir, tmp_path / "serial")))
    spread = run(compose_run(_sweep(tiny_dir, tmp_path / "ray", "sweep.backend=ray", "sweep.workers=2")))
    assert not ray.is_initialized()  # the local cluster the run started is gone
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "serial")  # same values, any order
    assert len(_rows(tmp_path / "ray")) > 20
    assert spread["directions"] == serial["directions"]
    assert (spread["best_layer"], spread["best_coef"]) == (serial["best_layer"], serial["best_coef"])
    texts = [sorted((tmp_path / name / "generations.jsonl").read_text().splitlines()) for name in ("serial", "ray")]
    assert texts[0] == texts[1] and texts[0]


def test_interrupted_ray_sweep_keeps_every_finished_cell(ray: Any, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ray_sweep.ray_runner

    def stopped_after_two(*args, **kwargs):  # Ctrl-C in the driver while it waits for the third cell
        inner = real(*args, **kwargs)

        def cells(ctx, planned):
            results = inner(ctx, planned)
            try:
                for k, item in enumerate(results):
                    if k == 2:
                        raise KeyboardInterrupt
                    yield item
            finally:
                results.close()

        return cells

    monkeypatch.setattr(ray_sweep, "ray_runner", stopped_after_two)
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):  # a model handed to run() goes to the workers as it is
        run(compose_run(_sweep(tiny_dir, out, "sweep.backend=ray")), loaded=st.load_model(tiny_dir))
    assert not ray.is_initialized()  # actors killed, cluster stopped
    measured = {r["cell"] for r in read_metrics(out / "metrics.csv") if r["cell"] is not None}
    # The baseline and the two prompting cells (measured in the driver), and the two grid cells that came back.
    assert {0, 1, 2} <= measured and len(measured) == 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["grid"]["measured"] == 5 and summary["grid"]["planned"] == 7
