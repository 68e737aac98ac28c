"""Reliability figures of the steering server, kept as regression checks.

Each check starts ``steering serve`` in its own process on a free 127.0.0.1
port (loopback only, always) and prints what it saw:

* load: ``--requests`` greedy chat requests from ``--concurrency`` clients over
  the five steering settings of ``benchmarks/serve.py`` (``MIX``): errors, how
  many differ from the same request served alone, the load gauges once idle,
  and the server's RSS growth;
* disconnects: streaming clients that leave after the first event and
  non-streamed ones that hang up while tokens flow: how many rows were
  cancelled, and whether any ran to its end;
* bad requests: malformed, hostile and out-of-range HTTP requests: each must
  be a 4xx with the OpenAI error body, and the server healthy afterwards;
* fuzz: property-based requests generated from the served ``/openapi.json``
  (schemathesis), bounded in count and time: no 5xx, every 4xx an OpenAI body;
* SIGTERM: eight open streams, then SIGTERM: each client must get a terminal
  event (a finish or a ``shutting_down`` error) and ``[DONE]``, the exit code
  0; the seconds to exit are a figure (target: under 10);
* kill -9 during ``steering extract`` over an existing vector: the old file
  must be intact and loadable.

Figures go to stdout and to ``reliability-<date>.json`` / ``.md`` (date,
machine, command) under ``--out`` (default ``benchmarks/results``). The exit
status is 1 if a correctness check failed (timings never fail it).

Usage:
    .venv/bin/python benchmarks/reliability.py --quick --out /tmp/rel    # tiny model, small counts (a test runs this)
    flock /tmp/steering-heavy.lock .venv/bin/python benchmarks/reliability.py   # SmolLM2, the recorded run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import ROOT, machine_info, table
from serve import MIX, free_port, make_vectors, wait_healthy

HOST = "127.0.0.1"
PROMPTS = ("Tell me about your day.", "Why is the sky blue?", "Write one sentence about the sea.", "What is a good breakfast?")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random model and small counts (seconds, for CI)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model served in the full run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON and Markdown results")
    p.add_argument("--seed", type=int, default=0, help="fuzz seed")
    args = p.parse_args(argv)
    full = {
        "requests": 200,
        "concurrency": 32,
        "max_tokens": 24,
        "stream_leaves": 20,
        "plain_leaves": 4,
        "long_tokens": 256,
        "fuzz_examples": 100,
        "fuzz_seconds": 180.0,
        "kills": 4,
    }
    quick = {
        "requests": 40,
        "concurrency": 8,
        "max_tokens": 12,
        "stream_leaves": 4,
        "plain_leaves": 2,
        "long_tokens": 400,
        "fuzz_examples": 15,
        "fuzz_seconds": 20.0,
        "kills": 2,
    }
    for key, value in (quick if args.quick else full).items():
        setattr(args, key, value)
    return args


# ----------------------------------------------------------------------------- the server process


class Served:
    """``steering serve`` in a subprocess on a free loopback port."""

    def __init__(self, model: str, vectors: Path, *settings: str) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "STEERING_API_KEY"}
        command = [
            sys.executable,
            "-m",
            "steering.experiments.cli",
            "serve",
            f"model={model}",
            f"vectors={vectors}",
            f"host={HOST}",
            f"port={self.port}",
            "log_level=warning",
            "default_temperature=0",
            "torch_threads=auto",
            *settings,
        ]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, cwd=ROOT, env={**env, "HF_HUB_OFFLINE": "1"}, stdout=self.log, stderr=subprocess.STDOUT)
        wait_healthy(self.url, self.process)  # type: ignore[arg-type]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def served(model: str, vectors: Path, *settings: str) -> Iterator[Served]:
    server = Served(model, vectors, *settings)
    try:
        yield server
    finally:
        server.stop()


def metrics(url: str) -> dict[str, float]:
    """``/metrics`` samples by name and labels (``name{k=v}``)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def idle(url: str) -> bool:
    import httpx

    body = httpx.get(url + "/health", timeout=30).json()
    return (body["running"], body["waiting"]) == (0, 0)


def rss_mib(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def error_body_ok(response: Any) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"} and bool(error["message"])


# ----------------------------------------------------------------------------- checks


def check_load(server: Served, model: str, args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    def ask(job: tuple[str, list[dict[str, Any]] | None]) -> str | None:
        prompt, steering = job
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": args.max_tokens}
        if steering:
            body["steering"] = steering
        try:
            response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=600)
        except httpx.HTTPError:
            return None
        return response.json()["choices"][0]["message"]["content"] if response.status_code == 200 else None

    jobs = [(PROMPTS[i % len(PROMPTS)], MIX[i % len(MIX)][1]) for i in range(args.requests)]
    distinct = list(dict.fromkeys((p, json.dumps(s)) for p, s in jobs))
    solo = {key: ask((key[0], json.loads(key[1]))) for key in distinct}  # one at a time; also the warm-up
    rss_before = rss_mib(server.process.pid)
    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        answers = list(pool.map(ask, jobs))
    seconds = time.perf_counter() - start
    wait_for(lambda: idle(server.url), 30)
    m = metrics(server.url)
    errors = sum(a is None for a in answers)
    differ = sum(a is not None and a != solo[(p, json.dumps(s))] for a, (p, s) in zip(answers, jobs, strict=True))
    gauges = {"waiting": m["steering_queue_waiting"], "running": m["steering_batch_running"]}
    return {
        "requests": len(jobs),
        "concurrency": args.concurrency,
        "settings": len(MIX),
        "errors": errors,
        "differ_from_solo": differ,
        "solo_failed": sum(v is None for v in solo.values()),
        "gauges_after": gauges,
        "seconds": round(seconds, 2),
        "rss_mib_before": round(rss_before, 1),
        "rss_mib_after": round(rss_mib(server.process.pid), 1),
        "ok": errors == 0 and differ == 0 and not any(v is None for v in solo.values()) and not any(gauges.values()),
    }


def check_disconnects(server: Served, model: str, args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    before = metrics(server.url)
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": args.long_tokens, "steering": MIX[1][1]}

    def leave_stream(_: int) -> None:
        with httpx.Client(timeout=120) as http, http.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}) as r:
            next(line for line in r.iter_lines() if line.startswith("data: "))  # one event, then hang up

    with ThreadPoolExecutor(min(args.stream_leaves, 8)) as pool:
        list(pool.map(leave_stream, range(args.stream_leaves)))
    raw = json.dumps(body).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw
    for _ in range(args.plain_leaves):
        tokens = metrics(server.url)["steering_completion_tokens_total"]
        with socket.create_connection((HOST, server.port)) as sock:
            sock.sendall(request)
            wait_for(lambda tokens=tokens: metrics(server.url)["steering_completion_tokens_total"] > tokens + 2, 120)  # tokens flow
    settled = wait_for(lambda: idle(server.url), 60)
    after = metrics(server.url)

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    leaves = args.stream_leaves + args.plain_leaves
    cancelled = grew("steering_generations_total{finish_reason=cancelled}")
    ran_out = grew("steering_generations_total{finish_reason=length}") + grew("steering_generations_total{finish_reason=stop}")
    tokens = grew("steering_completion_tokens_total")
    return {
        "streams_left": args.stream_leaves,
        "plain_left": args.plain_leaves,
        "cancelled": cancelled,
        "ran_to_the_end": ran_out,
        "tokens_generated": tokens,
        "tokens_if_not_stopped": leaves * args.long_tokens,
        "idle_after": settled,
        "ok": settled and cancelled == leaves and ran_out == 0,
    }


def bad_requests(model: str) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    """(method, path, body, headers) of requests that must each get a 4xx OpenAI error."""
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    bodies: list[Any] = [
        {**chat, "steering": [{"vector": "nope"}]},
        {**chat, "steering": [{"vector": "../sentiment"}]},
        {**chat, "steering": [{"vector": "/etc/passwd"}]},
        {**chat, "steering": [{"vector": "sentiment", "coef": 1e9}]},
        {**chat, "steering": [{"vector": "sentiment", "layers": [999]}]},
        {**chat, "steering": [{"vector": "sentiment", "layers": []}]},
        {**chat, "steering": [{"vector": "sentiment", "positions": "middle"}]},
        {**chat, "steering": [{"vector": "sentiment"}] * 50},
        {**chat, "steering": {"vector": "sentiment"}},
        {**chat, "steering": [{"vector": "sentiment", "mode": "ablate", "coef": 2}]},
        {**chat, "max_tokens": 0},
        {**chat, "max_tokens": 10**9},
        {**chat, "max_tokens": "many"},
        {**chat, "temperature": 9},
        {**chat, "top_p": 0},
        {**chat, "n": 1000},
        {**chat, "stop": [""]},
        {**chat, "stop": ["a", "b", "c", "d", "e"]},
        {**chat, "presence_penalty": 1},
        {**chat, "steer": []},
        {**chat, "model": "gpt-4o"},
        {**chat, "messages": []},
        {**chat, "messages": [{"role": "robot", "content": "hi"}]},
        {**chat, "messages": [{"role": "user", "content": "w " * 100_000}]},
        {k: v for k, v in chat.items() if k != "model"},
        [1, 2, 3],
        "a string",
        None,
    ]
    json_headers = {"Content-Type": "application/json"}
    out = [("POST", "/v1/chat/completions", json.dumps(b).encode(), json_headers) for b in bodies]
    raw = [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00",
        b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "steering": [{"vector": "x", "coef": NaN}]}',
        b"x" * (2 << 20),
    ]
    out += [("POST", "/v1/completions", body, json_headers) for body in raw]
    out += [
        ("GET", "/v1/chat/completions", None, {}),
        ("DELETE", "/v1/models", None, {}),
        ("GET", "/v1/nothing", None, {}),
        ("GET", "/v1/models/other-model", None, {}),
        ("PUT", "/health", None, {}),
    ]
    return out


def check_bad_requests(server: Served, model: str) -> dict[str, Any]:
    import httpx

    failures = []
    cases = bad_requests(model)
    with httpx.Client(timeout=120) as http:
        for method, path, body, headers in cases:
            response = http.request(method, server.url + path, content=body, headers=headers)
            if not (400 <= response.status_code < 500 and error_body_ok(response)):
                failures.append(f"{method} {path} {body[:60]!r}: {response.status_code} {response.text[:120]}")
        healthy = http.get(server.url + "/health").status_code == 200
        good = http.post(server.url + "/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 2}).status_code == 200
    return {"requests": len(cases), "failures": failures, "healthy_after": healthy and good, "ok": not failures and healthy and good}


def check_fuzz(server: Served, args: argparse.Namespace) -> dict[str, Any]:
    try:
        import schemathesis
        from hypothesis import HealthCheck, Phase, given, seed, settings
    except ImportError as exc:
        return {"skipped": f"schemathesis is not installed ({exc}); pip install schemathesis", "ok": False}
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    deadline = time.monotonic() + args.fuzz_seconds
    counts = {"cases": 0, "2xx": 0, "4xx": 0}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @seed(args.seed)
        @settings(
            max_examples=args.fuzz_examples, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            if time.monotonic() > deadline:
                return
            response = case.call(base_url=server.url, timeout=120)
            counts["cases"] += 1
            status = response.status_code
            if status >= 500 or (status >= 400 and not error_body_ok(response)):
                failures.append(f"{case.method} {case.path} {str(case.body)[:80]}: {status} {response.text[:120]}")
            counts["2xx" if status < 300 else "4xx"] += status < 500

        run()
    return {
        **counts,
        "operations": len(list(schema.get_all_operations())),
        "failures": failures[:20],
        "failures_total": len(failures),
        "seconds_cap": args.fuzz_seconds,
        "ok": not failures and counts["cases"] > 0,
    }


def check_sigterm(model_path: str, vectors: Path, model: str, args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    # --quick: the tiny model would finish its streams within the default drain time; a short one ends them with an error.
    drain = ("drain_timeout_s=0.5",) if args.quick else ()
    server = Served(model_path, vectors, f"served_model_name={model}", f"max_tokens_limit={args.long_tokens}", *drain)
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": args.long_tokens, "stream": True, "steering": MIX[1][1]}
    started = threading.Semaphore(0)

    def stream(_: int) -> list[str]:
        events: list[str] = []
        try:
            with httpx.Client(timeout=120) as http, http.stream("POST", server.url + "/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[len("data: ") :])
                        if len(events) == 1:
                            started.release()
        except httpx.HTTPError as exc:
            events.append(f"transport error: {exc}")
        return events

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(stream, i) for i in range(8)]
        all_started = all(started.acquire(timeout=120) for _ in futures)
        signalled = time.perf_counter()
        server.process.send_signal(signal.SIGTERM)
        results = [f.result(timeout=120) for f in futures]
        try:
            code = server.process.wait(60)
        except subprocess.TimeoutExpired:
            server.stop()
            code = None
    seconds = time.perf_counter() - signalled

    def ending(events: list[str]) -> str:
        if len(events) < 2 or events[-1] != "[DONE]":
            return "incomplete"
        last = json.loads(events[-2])
        return "error" if last.get("error", {}).get("code") == "shutting_down" else "finished"

    endings = [ending(e) for e in results]
    output = server.output()
    tracebacks = output.count("Traceback")
    return {
        "streams": 8,
        "all_started": all_started,
        "finished": endings.count("finished"),
        "ended_with_error": endings.count("error"),
        "incomplete": endings.count("incomplete"),
        "exit_code": code,
        "seconds_to_exit": round(seconds, 2),
        "within_10_s": seconds < 10,
        "tracebacks": tracebacks,
        "ok": all_started and endings.count("incomplete") == 0 and code == 0 and tracebacks == 0,
    }


def check_extract_kill(model_path: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """kill -9 ``steering extract`` at spread-out moments while it rewrites an existing vector file."""
    out = folder / "kept.safetensors"
    command = [
        sys.executable,
        "-m",
        "steering.experiments.cli",
        "extract",
        f"model={model_path}",
        "data=sentiment",
        "layers=[1]",
        f"out={out}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    full = time.perf_counter() - start
    if first.returncode != 0:
        return {"error": f"steering extract failed: {first.stdout[-400:]} {first.stderr[-400:]}", "ok": False}
    trials = []
    for k in range(args.kills):
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if k == args.kills - 1:  # the last trial waits for the temp file of the atomic write and kills then
            moment = "at the write"
            caught = wait_for(
                lambda process=process: process.poll() is not None or any(folder.glob(".kept.safetensors.*")),
                10 * full + 60,
                interval=0.001,
            )
            caught = caught and process.poll() is None
        else:  # the others at spread-out fractions of the first (cold, so slowest) run: loading, reading pairs, extracting
            when = full * (0.1 + 0.45 * k / max(1, args.kills - 2))
            moment = f"after {when:.1f} s"
            time.sleep(when)
            caught = process.poll() is None
        process.kill()
        process.wait()
        intact = hashlib.sha256(out.read_bytes()).hexdigest() == digest
        # A kill that lands just after the atomic replace (the process is still exiting) finds
        # the new file, whole; what must never be seen is a partial one.
        whole = intact or _loads(out)
        trials.append({"killed": moment, "was_running": caught, "old_file_intact": intact, "file_whole": whole})
    import steering as st

    loads = st.SteeringVector.load(out).layers == [1]
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".kept.safetensors.")]
    return {
        "extract_seconds": round(full, 2),
        "trials": trials,
        "loads_after": loads,
        "temp_files_left": leftovers,
        "killed_while_running": sum(t["was_running"] for t in trials),
        "ok": loads and all(t["file_whole"] for t in trials if t["was_running"]),
    }


def _loads(path: Path) -> bool:
    import steering as st

    try:
        st.SteeringVector.load(path)
    except st.SteeringError:
        return False
    return True


# ----------------------------------------------------------------------------- setup and report


def tiny_setup(folder: Path) -> tuple[str, Path]:
    """A tiny random Llama folder and random vectors named as in ``MIX``."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from tiny_models import make_tiny, save_tiny

    import steering as st
    from steering.vectors import model_fingerprint

    model_dir = save_tiny(folder / "tiny-llama")
    model, _ = make_tiny("llama")
    vectors = folder / "vectors"
    vectors.mkdir()
    width = model.config.hidden_size
    for i, name in enumerate(("sentiment", "formality", "refusal")):
        g = torch.Generator().manual_seed(i)
        directions = {layer: (d := torch.randn(width, generator=g)) / d.norm() * 4 for layer in (1, 2)}
        st.SteeringVector(
            directions, hidden_size=width, num_layers=3, model="tiny-llama", model_fingerprint=model_fingerprint(model), method="random"
        ).save(vectors / f"{name}.safetensors")
    return str(model_dir), vectors


def render(payload: dict[str, Any]) -> str:
    rows = []
    for name, result in payload["checks"].items():
        shown = {k: v for k, v in result.items() if k not in ("ok", "failures", "trials")}
        rows.append([name, "ok" if result["ok"] else "FAILED", json.dumps(shown)[:160]])
    return table(rows, ["check", "result", "figures"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    date = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="steering-reliability-") as tmp:
        folder = Path(tmp)
        if args.quick:
            model_path, vectors = tiny_setup(folder)
            model = "tiny-llama"
        else:
            model_path, model, vectors = args.model, args.model, folder / "vectors"
            vectors.mkdir()
            make_vectors(args.model, vectors, pairs=32, layers=[12])
        checks: dict[str, dict[str, Any]] = {}
        limits = ("max_batch_size=32", "max_queue=256", "max_concurrent_requests=256", f"max_tokens_limit={args.long_tokens}")
        with served(model_path, vectors, f"served_model_name={model}", *limits) as server:
            checks["load"] = check_load(server, model, args)
            checks["disconnects"] = check_disconnects(server, model, args)
            checks["bad_requests"] = check_bad_requests(server, model)
        with served(model_path, vectors, f"served_model_name={model}", "max_tokens_limit=4", "max_body_bytes=65536") as server:
            checks["fuzz"] = check_fuzz(server, args)
        checks["sigterm"] = check_sigterm(model_path, vectors, model, args)
        checks["extract_kill"] = check_extract_kill(model_path, folder, args)
    payload = {
        "date": date.isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "quick": args.quick,
        "model": model,
        "machine": machine_info("cpu", 0),
        "checks": checks,
    }
    text = render(payload)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"reliability{'-quick' if args.quick else ''}-{date:%Y-%m-%d}"
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    machine = payload["machine"]
    (out / f"{stem}.md").write_text(
        f"# Server reliability checks, {payload['date']}\n\n`{payload['command']}`\n\n"
        f"Machine: {machine['cpu']}, {machine['cores']} cores, load {machine['loadavg_start']}, torch {machine['torch']}, "
        f"transformers {machine['transformers']}, commit {machine['git_commit']}. Model: {model}.\n\n```\n{text}\n```\n"
    )
    print(f"wrote {out / stem}.json and .md")
    return 0 if all(c["ok"] for c in checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
