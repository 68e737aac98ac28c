"""Sweep cells on Ray: ``sweep.backend=ray`` measures the steered cells on Ray actors.

Each actor holds one model (loaded from ``model.name`` on its node, or the
driver's own model object when `experiments.run.run` was handed one) and a
`Context` like the driver's, and measures cells with `experiments.sweep.measure`,
the function the serial sweep calls. The driver keeps everything else: it
extracts the vector, measures the baseline, writes ``metrics.csv`` and
``generations.jsonl`` as each cell comes back (so an interrupted sweep keeps
every finished cell, as the serial one does), the row aggregates, the summary
and the report. Cells are seeded by their index, so a cell gives the same
values on any worker.

Where Ray runs: ``sweep.ray_address`` (or ``$RAY_ADDRESS``) names a running
cluster (``ray start --head`` on one machine, ``ray start --address=...`` on
the others, the project installed on every node); without one, a local cluster
of ``sweep.workers`` CPUs is started for the run and stopped after it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import OmegaConf

import steering as st

from .config import load_kwargs
from .metrics import Cell, Context, EvalData
from .results import CellResult
from .schema import ConfigError
from .sweep import CellRunner, measure

log = logging.getLogger(__name__)


class CellWorker:
    """A Ray actor: one model and one `Context`, measuring cells sent to it."""

    def __init__(self, cfg: dict[str, Any], data: EvalData, loaded: tuple[Any, Any] | None, threads: int) -> None:
        torch.set_num_threads(threads)
        config = OmegaConf.create(cfg)
        if loaded is None:
            model_cfg = config.model
            loaded = st.load_model(str(model_cfg.name), **load_kwargs(model_cfg))
        self.ctx = Context(loaded[0], loaded[1], config, data)

    def measure(self, cell: Cell) -> tuple[Cell, CellResult]:
        """Measure ``cell``; return it (with the cache its metrics filled) and its values."""
        result = measure(self.ctx, cell)
        return cell, result


def ray_runner(workers: int, address: str | None, cpus: int, shipped: tuple[Any, Any] | None) -> CellRunner:
    """A `experiments.sweep.CellRunner` on ``workers`` Ray actors of ``cpus`` CPUs each.

    Args:
        workers: actors, each with one model.
        address: a running cluster (``None``: ``$RAY_ADDRESS``, else a local one).
        cpus: CPUs per actor (its torch threads).
        shipped: a ``(model, tokenizer)`` to send to the actors instead of
            loading ``model.name`` on each.

    Raises:
        ConfigError: Ray is not installed, or ``workers`` / ``cpus`` below 1.
    """
    if workers < 1 or cpus < 1:
        raise ConfigError(f"sweep.workers={workers} and sweep.cpus_per_worker={cpus} must be >= 1")
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise ConfigError("sweep.backend=ray needs Ray: pip install 'steering[ray]'") from None

    def run_cells(ctx: Context, cells: list[Cell]) -> Iterator[tuple[Cell, CellResult]]:
        started = not ray.is_initialized()
        if started:
            target = address or os.environ.get("RAY_ADDRESS") or None
            if target is None:
                # "local": a new cluster for this run, even where `ray start` left one running
                # on this machine (a bare ray.init() would join that one instead).
                ray.init(address="local", num_cpus=workers * cpus, include_dashboard=False, logging_level=logging.WARNING)
            else:
                ray.init(address=target, logging_level=logging.WARNING)
        actors: list[Any] = []
        try:
            cfg = OmegaConf.to_container(ctx.cfg, resolve=True)
            loaded = ray.put(shipped) if shipped is not None else None
            remote = ray.remote(num_cpus=cpus)(CellWorker)
            actors = [remote.remote(cfg, ctx.data, loaded, cpus) for _ in range(workers)]
            log.info("measuring %d cells on %d Ray workers", len(cells), workers)
            pool = ActorPool(actors)
            yield from pool.map_unordered(lambda actor, cell: actor.measure.remote(cell), cells)
        finally:
            for actor in actors:
                ray.kill(actor)
            if started:
                ray.shutdown()

    return run_cells
