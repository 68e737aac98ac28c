"""What the vLLM plugin adds to one decode step, measured without vLLM: CPU time per step.

`benchmarks/vllm_steering.py` times whole generations, whose spread on a shared
machine is far larger than the plugin's cost. This script times only the work
the plugin adds to a step, on the worker's own code (`steering.vllm.tables.
StepTables`): ``prepare`` (the token-to-slot map, from per-request payloads
built as the front end builds them) and the layer hooks, on stand-in layers
that return ``(hidden, residual)`` as vLLM's do, minus the same layers without
hooks. Decode steps (one token per request), every request steered by its own
vector at ``--layers`` of a ``--num-layers`` model of width ``--width``. CPU time
of this process (one torch thread), so other processes' load does not count.

Example:
    .venv/bin/python benchmarks/vllm_op_cost.py            # writes results/vllm-op-cost-cpu-<date>.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from _common import machine_info, parse_layers, table, write_results


def per_step_us(fn: Callable[[], None], steps: int, repeats: int) -> float:
    """Median over ``repeats`` of the CPU microseconds per call of ``fn`` (``steps`` calls each)."""
    fn()
    samples = []
    for _ in range(repeats):
        c0 = time.process_time()
        for _ in range(steps):
            fn()
        samples.append((time.process_time() - c0) / steps * 1e6)
    return statistics.median(samples)


def measure(batch: int, width: int, num_layers: int, layers: list[int], steps: int, repeats: int) -> dict[str, float]:
    """Microseconds of CPU per decode step of ``batch`` requests: ``prepare``, the hooks, and their sum."""
    import torch
    from torch import Tensor, nn

    from steering.server.row_steering import Term, build_row_deltas
    from steering.vectors import SteeringVector
    from steering.vllm.payload import encode
    from steering.vllm.tables import StepTables

    class PairLayer(nn.Module):
        def forward(self, hidden: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
            return hidden, residual

    gen = torch.Generator().manual_seed(batch)
    model = [PairLayer() for _ in range(num_layers)]
    tables = StepTables(
        dict(enumerate(model)),
        width=width,
        max_requests=batch,
        max_tokens=max(batch, 256),
        rank=4,
        device=torch.device("cpu"),
        dtype=torch.float32,
        static=False,
    )
    payloads = []
    for _ in range(batch):  # every request its own vector, folded as the front end folds it
        vec = SteeringVector({i: torch.randn(width, generator=gen) for i in layers}, hidden_size=width, num_layers=num_layers)
        payloads.append(encode(build_row_deltas([Term(vec, 4.0, tuple(layers), "all")]), width))
    req, pos, num_prompt = torch.arange(batch), torch.full((batch,), 100), [50] * batch
    hidden, residual = torch.randn(batch, width), torch.randn(batch, width)

    def forward() -> None:
        for layer in model:
            layer(hidden, residual)

    def prepare() -> None:
        tables.prepare(payloads, num_prompt, req, pos, batch)

    prep = per_step_us(prepare, steps, repeats)
    hooked = per_step_us(forward, steps, repeats)
    tables.remove()
    bare = per_step_us(forward, steps, repeats)
    return {"prepare_us": prep, "hooks_us": hooked - bare, "added_us_per_step": prep + hooked - bare}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=576, help="hidden size (SmolLM2-135M: 576)")
    parser.add_argument("--num-layers", type=int, default=30)
    parser.add_argument("--layers", default="10-13")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    layers = parse_layers(args.layers)
    rows, record = [], {}
    for batch in (int(b) for b in args.batches.split(",")):
        got = record[f"batch_{batch}"] = measure(batch, args.width, args.num_layers, layers, args.steps, args.repeats)
        rows.append([str(batch), f"{got['prepare_us']:.0f}", f"{got['hooks_us']:.0f}", f"{got['added_us_per_step']:.0f}"])
    print(table(rows, ["batch", "prepare us", "hooks us", "added us / decode step"]))
    payload = {
        "benchmark": "vllm-op-cost",
        "machine": machine_info("cpu", 1),
        "settings": {"width": args.width, "num_layers": args.num_layers, "layers": layers, "steps": args.steps, "repeats": args.repeats},
        "results": record,
    }
    print(f"wrote {write_results('vllm-op-cost', payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
