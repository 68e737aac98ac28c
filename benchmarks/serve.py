"""Benchmark the steering server: N concurrent clients with a mix of vectors.

Starts ``steering serve`` in a subprocess on a free 127.0.0.1 port, with
vectors extracted from the bundled datasets, and drives it with the ``openai``
client. For each N in ``--clients`` (default 1, 4, 8), N closed-loop clients
send ``--requests`` requests each; every request carries a steering setting
from a fixed mix (none, single vectors at +/- coefs, a per-position term, two
vectors at once). The same requests are then sent

(a) unsteered, with the same concurrency, and
(b) steered, one at a time (sequential serving),

and the script prints completion tokens/s, p50/p95 request latency, the mean
decode batch size (from ``/metrics``), and the ratios to (a) and (b). It
writes a Markdown report (machine, date, command, table) under
``benchmarks/results/``.

Usage:
    flock /tmp/steering-heavy.lock .venv/bin/python benchmarks/serve.py --quick
    flock /tmp/steering-heavy.lock .venv/bin/python benchmarks/serve.py            # the recorded run
    .venv/bin/python benchmarks/serve.py --model path/to/hf-folder --clients 1 4 8 --requests 4 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (name, steering terms); vector names refer to the files `make_vectors` writes.
MIX: list[tuple[str, list[dict[str, Any]] | None]] = [
    ("none", None),
    ("sentiment +4", [{"vector": "sentiment", "coef": 4.0}]),
    ("sentiment -4", [{"vector": "sentiment", "coef": -4.0}]),
    ("formality +3 generated", [{"vector": "formality", "coef": 3.0, "positions": "generated"}]),
    ("refusal -2 + sentiment +2", [{"vector": "refusal", "coef": -2.0}, {"vector": "sentiment", "coef": 2.0}]),
]


@dataclass
class RunResult:
    label: str
    clients: int
    requests: int
    completion_tokens: int
    seconds: float
    latencies: list[float]
    mean_batch: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run it under `flock /tmp/steering-heavy.lock` on shared machines.",
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registry name or HF folder (default: %(default)s)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], help="concurrency levels (default: 1 4 8)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client at each level (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=32, help="contrastive pairs per extracted vector (default: %(default)s)")
    parser.add_argument("--layers", type=int, nargs="+", default=[12], help="layers of the vectors (default: 12)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of the server; 0 = torch's default (default: 1, see benchmarks/README.md)",
    )
    parser.add_argument("--quick", action="store_true", help="2 requests per client, max_tokens 32, 16 pairs")
    parser.add_argument("--device", default="cpu", help="device of the served model, e.g. cuda (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", help="dtype of the served model, e.g. bfloat16 (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="report file (default: benchmarks/results/serve-<date>[-quick].md)")
    parser.add_argument("--no-report", action="store_true", help="print only; write no file")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.max_tokens, args.pairs = 2, 32, 16
    return args


def make_vectors(model_name: str, folder: Path, pairs: int, layers: list[int]) -> dict[str, float]:
    """Extract sentiment, formality and refusal vectors into ``folder``; return seconds per vector."""
    import steering as st

    model, tok = st.load_model(model_name)
    took = {}
    for name in ("sentiment", "formality", "refusal"):
        start = time.perf_counter()
        st.extract(model, tok, st.load_pairs(name)[:pairs], layers=layers).save(folder / f"{name}.safetensors")
        took[name] = time.perf_counter() - start
    return took


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    model: str, vectors: Path, port: int, max_batch: int, threads: int | None, device: str = "cpu", dtype: str = "float32"
) -> subprocess.Popen[bytes]:
    """This script again, as the server process (see `run_server`)."""
    command = [
        sys.executable,
        __file__,
        "--server-process",
        model,
        str(vectors),
        str(port),
        str(max_batch),
        str(threads or 0),
        device,
        dtype,
    ]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def run_server(model_name: str, vectors: str, port: str, max_batch: str, threads: str, device: str = "cpu", dtype: str = "float32") -> int:
    """The server process: what ``steering serve`` runs, with the benchmark's limits, on 127.0.0.1."""
    import torch

    import steering as st
    from steering.server import ServerConfig, serve

    if int(threads):
        torch.set_num_threads(int(threads))
    model, tok = st.load_model(model_name, device=device, dtype=dtype)
    config = ServerConfig(
        model_name=model_name,
        vectors_dir=Path(vectors),
        api_key="",
        max_batch_size=int(max_batch),
        default_temperature=0.0,
        max_queue=256,
        max_concurrent_requests=256,
    )
    serve(model, tok, config, host="127.0.0.1", port=int(port), log_level="warning")
    return 0


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} during startup")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the server did not answer /health within {timeout} s")


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the server's decode batch-size histogram."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for sample in family.samples:
            values[sample.name] = sample.value
    return values.get("steering_batch_size_sum", 0.0), values.get("steering_batch_size_count", 0.0)


Job = tuple[str, list[dict[str, Any]] | None]  # (prompt, steering terms)


def drive(url: str, model: str, jobs: list[Job], clients: int, max_tokens: int, label: str) -> RunResult:
    """Send ``jobs`` from ``clients`` closed-loop clients; return throughput and latencies."""
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=900)
    per_client = [jobs[i::clients] for i in range(clients)]

    def one(prompt: str, steering: list[dict[str, Any]] | None) -> tuple[float, int]:
        start = time.perf_counter()
        out = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            extra_body={"steering": steering} if steering else None,
        )
        return time.perf_counter() - start, out.usage.completion_tokens

    def loop(mine: list[Job]) -> list[tuple[float, int]]:
        return [one(p, s) for p, s in mine]

    before = batch_stats(url)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(loop, per_client) for r in rs]
    seconds = time.perf_counter() - start
    after = batch_stats(url)
    steps = after[1] - before[1]
    mean_batch = (after[0] - before[0]) / steps if steps else 0.0
    return RunResult(label, clients, len(jobs), sum(t for _, t in results), seconds, [lat for lat, _ in results], mean_batch)


def machine(threads: int | None) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import torch
    import transformers

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} logical cores (load average {load} when the report was written), "
        f"torch {torch.__version__} with {threads or torch.get_num_threads()} intra-op threads in the server, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}; {gpu}"
    )


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["--server-process"]:
        return run_server(*raw[1:8])
    args = parse_args(argv)
    # SIGTERM ends the run through the `finally` below, which stops the server process.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    import steering as st

    prompts = st.load_lines("sentiment_eval_prompts.txt")
    rows: list[tuple[RunResult, RunResult, RunResult]] = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        folder = Path(tmp)
        print(f"extracting 3 vectors ({args.pairs} pairs, layers {args.layers}) on {args.model} ...", flush=True)
        make_vectors(args.model, folder, args.pairs, args.layers)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_server(args.model, folder, port, max(args.clients), args.threads, args.device, args.dtype)
        try:
            wait_healthy(url, process)
            drive(url, args.model, [(prompts[0], None), (prompts[1], MIX[1][1])], 2, 4, "warm-up")
            for n in args.clients:
                jobs = [(prompts[i % len(prompts)], MIX[i % len(MIX)][1]) for i in range(n * args.requests)]
                unsteered = [(p, None) for p, _ in jobs]
                steered = drive(url, args.model, jobs, n, args.max_tokens, "steered mix")
                plain = drive(url, args.model, unsteered, n, args.max_tokens, "unsteered")
                sequential = drive(url, args.model, jobs, 1, args.max_tokens, "sequential")
                rows.append((steered, plain, sequential))
                print(
                    f"N={n}: {steered.tokens_per_s:6.1f} tok/s  p50 {steered.pct(0.5):5.2f}s  p95 {steered.pct(0.95):5.2f}s  "
                    f"batch {steered.mean_batch:4.2f}  | unsteered {plain.tokens_per_s:6.1f} tok/s  "
                    f"| sequential {sequential.tokens_per_s:6.1f} tok/s",
                    flush=True,
                )
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    report = render(args, rows, argv if argv is not None else sys.argv[1:])
    print()
    print(report)
    if not args.no_report:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d")
        out = args.out or ROOT / "benchmarks" / "results" / f"serve-{stamp}{'-quick' if args.quick else ''}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        records = [
            {"clients": s.clients, "requests": s.requests, **summary(s, "steered"), **summary(p, "unsteered"), **summary(q, "sequential")}
            for s, p, q in rows
        ]
        out.with_suffix(".json").write_text(json.dumps(records, indent=2) + "\n")
        print(f"wrote {out} and {out.with_suffix('.json').name}")
    return 0


def summary(run: RunResult, prefix: str) -> dict[str, float]:
    """One run's figures, keys prefixed (``steered_tokens_per_s``...)."""
    figures = {
        "tokens": run.completion_tokens,
        "seconds": round(run.seconds, 3),
        "tokens_per_s": round(run.tokens_per_s, 2),
        "p50_s": round(run.pct(0.5), 3),
        "p95_s": round(run.pct(0.95), 3),
        "mean_batch": round(run.mean_batch, 2),
    }
    return {f"{prefix}_{key}": value for key, value in figures.items()}


def render(args: argparse.Namespace, rows: list[tuple[RunResult, RunResult, RunResult]], argv: list[str]) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mix = "; ".join(name for name, _ in MIX)
    lines = [
        f"# Serving benchmark ({'quick' if args.quick else 'full'}), {when}",
        "",
        f"- Machine: {machine(args.threads)}",
        f"- Model: `{args.model}` ({args.dtype}, {args.device}); vectors: sentiment, formality, refusal at layers {args.layers} "
        f"({args.pairs} pairs each, mean_diff)",
        f"- Workload: N closed-loop clients x {args.requests} chat requests each, max_tokens {args.max_tokens}, greedy; "
        f"steering mix, round robin: {mix}",
        f"- Command: `python benchmarks/serve.py {' '.join(argv)}`",
        "- Server: `steering.server.serve` (what `steering serve` runs) in its own process on 127.0.0.1, "
        "max_batch_size = largest N; clients: the `openai` package, one thread each, in the benchmark process",
        "",
        "| N | requests | steered tok/s | p50 s | p95 s | mean batch | unsteered tok/s | vs unsteered | sequential tok/s | vs sequential |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for steered, plain, sequential in rows:
        lines.append(
            f"| {steered.clients} | {steered.requests} | {steered.tokens_per_s:.1f} | {steered.pct(0.5):.2f} | {steered.pct(0.95):.2f} "
            f"| {steered.mean_batch:.2f} | {plain.tokens_per_s:.1f} | {steered.tokens_per_s / plain.tokens_per_s:.2f}x "
            f"| {sequential.tokens_per_s:.1f} | {steered.tokens_per_s / sequential.tokens_per_s:.2f}x |"
        )
    lines += [
        "",
        'tok/s = completion tokens of all requests / wall time of the run. "vs unsteered": the same requests without',
        'steering, same concurrency. "vs sequential": the same steered requests sent one at a time. p50/p95: request',
        "latency (non-streamed) of the steered run. Mean batch: rows per decode pass, from the server's /metrics.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
