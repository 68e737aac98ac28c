"""Data-parallel extraction on torch.distributed: split the pairs, add up the running sums.

Under ``torchrun --nproc-per-node N`` (or ``accelerate launch``), every
process runs the same `extract` call. Each one reads every ``N``-th pair of
the length-sorted list, keeps its running `LayerStats`, and one
``all_reduce`` per layer adds them up; the methods then see the statistics of
all pairs, so every process returns the vector one process would (float64
sums in another order: cosine >= 0.99999). The process group is the default
one: an initialised one is used as it is; else, when the environment torchrun
sets says ``WORLD_SIZE > 1``, one is initialised here (NCCL for a CUDA model,
gloo otherwise), with torchrun's rendezvous variables.

Methods that keep the activations themselves (``probe``, plain pair methods)
get them gathered from every process, in the pairs' own order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .methods import LayerStats


@dataclass(frozen=True)
class Shard:
    """This process's part of a data-parallel run: ``rank`` of ``world`` processes."""

    rank: int
    world: int
    device: torch.device  # where collectives run: the CUDA device under NCCL, else the CPU


def data_parallel(device: torch.device, enabled: bool | None = None) -> Shard | None:
    """The shard this process extracts, or ``None`` when it runs alone.

    Args:
        device: the model's device; picks the backend if a group must be started.
        enabled: ``None`` detects torch.distributed (an initialised group, or
            torchrun's ``WORLD_SIZE > 1``); ``False`` extracts every pair here.

    Example:
        >>> data_parallel(torch.device("cpu"))  # a plain process: no group, no WORLD_SIZE
    """
    if enabled is False or not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's object collectives run on the current device
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() <= 1:
        return None
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    return Shard(dist.get_rank(), dist.get_world_size(), on)


def is_main_process() -> bool:
    """False on every process of an initialised group but rank 0 (the one that writes files)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def local_device(device: str | None) -> str | None:
    """``cuda`` as this process's own GPU under torchrun (``cuda:$LOCAL_RANK``); anything else unchanged."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def reduce_stats(stats: dict[int, LayerStats], shard: Shard) -> None:
    """Sum every layer's running statistics over the processes, in place."""
    for layer in sorted(stats):
        s = stats[layer]
        parts = [s.pos_sum, s.neg_sum, torch.tensor([float(s.n)], dtype=torch.float64)]
        if s.diff_sketch is not None:
            parts.append(s.diff_sketch.flatten())
        flat = torch.cat(parts).to(shard.device)
        dist.all_reduce(flat)
        flat = flat.cpu()
        width = s.hidden_size
        s.pos_sum, s.neg_sum = flat[:width].clone(), flat[width : 2 * width].clone()
        s.n = int(round(float(flat[2 * width])))
        if s.diff_sketch is not None:
            s.diff_sketch = flat[2 * width + 1 :].reshape(s.diff_sketch.shape).clone()


def gather_samples(stats: dict[int, LayerStats], rows: Tensor) -> None:
    """Gather every process's samples, in pair order, in place.

    ``rows`` holds the pair index of each local sample row (the order they
    were collected in); afterwards row ``k`` of every layer's samples is pair ``k``.
    """
    local = {
        layer: (_rows(s.pos_samples, s.hidden_size), _rows(s.neg_samples, s.hidden_size)) for layer, s in stats.items() if s.keep_samples
    }
    everyone: list[tuple[Tensor, dict[int, tuple[Tensor, Tensor]]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (rows, local))
    parts = [p for p in everyone if p is not None]
    back = torch.cat([p[0] for p in parts]).argsort()
    for layer, s in stats.items():
        if layer in local:
            s.pos_samples = [torch.cat([p[1][layer][0] for p in parts])[back]]
            s.neg_samples = [torch.cat([p[1][layer][1] for p in parts])[back]]


def _rows(samples: list[Tensor], width: int) -> Tensor:
    """The sample batches as one ``[rows, width]`` tensor (none: zero rows, for a process given no pairs)."""
    return torch.cat(samples) if samples else torch.zeros(0, width)
