"""Shared benchmark machinery: interleaved timing, contention checks, machine facts, output.

Timing rules (see benchmarks/README.md): every method runs once per repeat, in
an order rotated per repeat; one warm-up pass is not timed; each sample records
wall time, this process's CPU time and the 1-minute load average. A sample
whose CPU time is below 90 % of ``wall x threads`` lost the CPU to another
process (a "contended" sample) and is re-run, up to ``retries`` times; it is
kept, flagged, if the machine never quietens. Ratios are paired: each steered
sample is divided by the plain sample of the same repeat, and the median of
those ratios is reported.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout, also from the peers venv
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Sample:
    """One timed call: wall and CPU seconds, load average, and whether it was contended."""

    wall: float
    cpu: float
    load: float
    contended: bool
    attempts: int


@dataclass
class Series:
    """All samples of one method, in repeat order."""

    name: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def walls(self) -> list[float]:
        return [s.wall for s in self.samples]

    def median(self) -> float:
        return statistics.median(self.walls)


@dataclass
class Timed:
    """A result that timed itself (to leave setup out of the sample): value, wall and CPU seconds."""

    value: Any
    wall: float
    cpu: float


def parse_layers(text: str) -> list[int]:
    """``"10-20"`` (inclusive range) or ``"10,12,14"`` -> layer indices."""
    if "-" in text and "," not in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def cpu_time() -> float:
    """CPU seconds of this process, all threads."""
    return time.process_time()


def timed(fn: Callable[[], Any], threads: int, retries: int) -> tuple[Sample, Any]:
    """Run ``fn`` and time it; re-run while the CPU was taken by other processes."""
    result = None
    sample = None
    for attempt in range(1, retries + 2):
        load = os.getloadavg()[0]
        c0, t0 = cpu_time(), time.perf_counter()
        result = fn()
        wall = time.perf_counter() - t0
        cpu = cpu_time() - c0
        if isinstance(result, Timed):
            wall, cpu, result = result.wall, result.cpu, result.value
        contended = threads > 0 and cpu < 0.9 * wall * threads  # threads=0: no check (GPU)
        sample = Sample(wall=wall, cpu=cpu, load=load, contended=contended, attempts=attempt)
        if not contended:
            break
    assert sample is not None
    return sample, result


def interleave(
    methods: dict[str, Callable[[], Any]],
    repeats: int,
    *,
    threads: int,
    retries: int = 3,
    warmup: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Series], dict[str, Any]]:
    """Time every method ``repeats`` times, rotating the order each repeat.

    Returns the series per method and the first result of each method (for
    checking that they all did the same work).
    """
    names = list(methods)
    first: dict[str, Any] = {}
    if warmup:
        for name in names:
            result = methods[name]()
            first[name] = result.value if isinstance(result, Timed) else result
    series = {name: Series(name) for name in names}
    for r in range(repeats):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            sample, result = timed(methods[name], threads, retries)
            series[name].samples.append(sample)
            first.setdefault(name, result)
        done = ", ".join(f"{n} {series[n].samples[-1].wall:.2f}s" for n in order)
        log(f"  repeat {r + 1}/{repeats} (load {os.getloadavg()[0]:.2f}): {done}")
    return series, first


def paired_ratio(steered: Series, plain: Series, work_ratio: float = 1.0) -> dict[str, float]:
    """Median of per-repeat ``plain_time / steered_time`` (a throughput ratio), with its spread.

    ``work_ratio`` scales for unequal work (steered tokens / plain tokens).
    """
    ratios = sorted(p.wall / s.wall * work_ratio for s, p in zip(steered.samples, plain.samples))
    n = len(ratios)
    return {
        "median": statistics.median(ratios),
        "min": ratios[0],
        "max": ratios[-1],
        "q1": ratios[n // 4],
        "q3": ratios[(3 * n) // 4 if n > 1 else 0],
        "n": n,
    }


def machine_info(device: str, threads: int) -> dict[str, Any]:
    """CPU model, cores, load, memory, versions and the accelerator, for the results file."""
    import torch
    import transformers

    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "loadavg_start": list(os.getloadavg()),
        "torch_threads": threads,
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_commit": _git_commit(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for peer in ("numpy", "repeng", "steering_vectors"):
        info[peer] = _version(peer)
    return info


def _version(module: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(module.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def setup_torch(device: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch sees no CUDA device")


def sync(device: str) -> None:
    """Wait for queued GPU work, so wall time covers it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def contention_summary(series: dict[str, Series]) -> dict[str, Any]:
    """How many samples were contended / re-run, and the load they saw."""
    samples = [s for ser in series.values() for s in ser.samples]
    return {
        "samples": len(samples),
        "contended_kept": sum(s.contended for s in samples),
        "reruns": sum(s.attempts - 1 for s in samples),
        "load_min": round(min(s.load for s in samples), 2),
        "load_median": round(statistics.median(s.load for s in samples), 2),
        "load_max": round(max(s.load for s in samples), 2),
    }


def write_results(name: str, payload: dict[str, Any], out: str | None) -> Path:
    """Write ``payload`` as JSON to ``out`` (default: results/<name>-<device>-<date>.json)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if out:
        path = Path(out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = RESULTS / f"{name}-{payload['machine']['device'].split(':')[0]}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table, columns padded."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
