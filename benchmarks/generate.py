"""What does steering cost during generation? Steered / plain tokens per second, with the peers.

Workloads, each timed side by side with plain ``model.generate`` in one
process (greedy, every call forced to the same number of new tokens):

* ``batch 1``: one prompt at a time, a fixed vector on the chosen layers;
* ``batch 8``: eight left-padded prompts, the same fixed vector;
* ``mixed 8``: eight prompts, a different vector for each row (per-row hooks);
* ``decode step``: single-token forward passes on a cached prompt, no
  ``generate`` around them: the closest look at what a method adds per token
  (also printed as paired microseconds per token).

Methods with a fixed vector: ``bare hook`` (a minimal ``output + delta``
forward hook: the reference whose tokens every other method must reproduce),
``steering`` (``st.steer``, default backend: the bias is folded where the
architecture allows), ``steering hook`` (``backend="hook"``), and the peers
``repeng`` and ``steering-vectors`` where they import (run this script with
``benchmarks/.venv-peers/bin/python``; see ``setup_peers.sh``).

Prints a table of tokens/s and paired steered/plain ratios (median of the
per-repeat ratios), whether each method produced the reference tokens, and
how busy the machine was; writes the full record to ``benchmarks/results/``.

Example:
    flock /tmp/steering-heavy.lock benchmarks/.venv-peers/bin/python benchmarks/generate.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from _common import Timed, contention_summary, interleave, machine_info, paired_ratio, parse_layers, setup_torch, sync, table, write_results

TARGETS = {"fixed": 0.99, "mixed": 0.90}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1]
    )
    p.add_argument("--quick", action="store_true", help="short run for development: 2 prompts x 16 tokens, 3 repeats")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name or model folder")
    p.add_argument("--layers", default="10-20", help="layers to steer, e.g. 10-20 or 4,8,12 (default 10-20)")
    p.add_argument("--coef", type=float, default=2.0, help="steering coefficient (default 2.0)")
    p.add_argument("--prompts", type=int, default=None, help="prompts per batch-1 sample (default 2; quick 2)")
    p.add_argument("--tokens", type=int, default=None, help="new tokens per call (default 32; quick 16)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per workload (default 12; quick 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: stable on a shared machine)")
    p.add_argument("--workloads", default="batch1,batch8,mixed8,step", help="comma list of batch1, batch8, mixed8, step (default all)")
    p.add_argument("--steps", type=int, default=None, help="decode steps per 'step' sample (default 20; quick 10)")
    p.add_argument("--out", default=None, help="results JSON path (default benchmarks/results/generate-<device>-<time>.json)")
    p.add_argument("--no-save", action="store_true", help="print only, write no results file")
    args = p.parse_args(argv)
    args.prompts = args.prompts or 2
    args.tokens = args.tokens or (16 if args.quick else 32)
    args.repeats = args.repeats or (3 if args.quick else 12)
    args.steps = args.steps or (10 if args.quick else 20)
    return args


# ----------------------------------------------------------------------------- steering methods
# Each is a context manager factory: enter it, call generate, leave it.


def bare_hook(model: Any, deltas: dict[int, Any]) -> contextlib.AbstractContextManager[Any]:
    """The least any hook-based method can do: ``output + delta`` on each layer."""
    from steering import hooks

    @contextlib.contextmanager
    def ctx() -> Iterator[None]:
        layers = hooks.decoder_layers(model)
        handles = []
        try:
            for i, d in deltas.items():
                handles.append(layers[i].register_forward_hook(lambda m, a, o, d=d: o + d))
            yield
        finally:
            for h in handles:
                h.remove()

    return ctx()


def repeng_method(model: Any, deltas: dict[int, Any]) -> contextlib.AbstractContextManager[Any] | None:
    try:
        from repeng import ControlModel
    except ImportError:
        return None

    @contextlib.contextmanager
    def ctx() -> Iterator[None]:
        wrapped = ControlModel(model, list(deltas))  # wraps the decoder layers in place
        try:
            wrapped.set_raw_control({i: d for i, d in deltas.items()})
            yield
        finally:
            wrapped.reset()
            wrapped.unwrap()

    return ctx()


def steering_vectors_method(model: Any, deltas: dict[int, Any]) -> contextlib.AbstractContextManager[Any] | None:
    try:
        from steering_vectors import SteeringVector as SVVector
    except ImportError:
        return None
    return SVVector(layer_activations=dict(deltas), layer_type="decoder_block").apply(model)


def peer_status() -> dict[str, str]:
    out = {}
    for name, module in (("repeng", "repeng"), ("steering-vectors", "steering_vectors")):
        try:
            __import__(module)
            out[name] = "ok"
        except Exception as exc:  # ImportError, or numpy-2 AttributeError inside repeng
            out[name] = f"not importable here ({type(exc).__name__}: {exc}); use benchmarks/.venv-peers/bin/python"
    return out


# ----------------------------------------------------------------------------- workloads


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = args.device.startswith("cuda")
    setup_torch(args.device, args.threads)
    import time

    import torch

    import steering as st
    from steering import hooks
    from steering.apply import build_deltas
    from steering.vectors.text import encode_prompt, pad_batch

    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    model, tok = st.load_model(args.model, device=args.device)
    load_s = time.perf_counter() - t0
    layers = parse_layers(args.layers)
    log(f"loaded {args.model} in {load_s:.2f}s; layers {layers}, coef {args.coef}, {args.tokens} tokens/call, threads {args.threads}")

    # A real direction: mean difference of the bundled sentiment pairs.
    pairs = st.load_pairs("sentiment")[:32]
    vec = st.extract(model, tok, pairs, layers=layers, progress=False)
    deltas, _ = build_deltas(model, vec, args.coef)
    deltas = {i: d.to(model.device, model.dtype) for i, d in deltas.items()}
    gen = torch.Generator().manual_seed(0)
    # Four different vectors for the mixed batch: +v, -v, and two random directions of v's size.
    mixed_rows = []
    for k in range(4):
        if k < 2:
            mixed_rows.append({i: d * (1 if k == 0 else -1) for i, d in deltas.items()})
        else:
            rand = {i: torch.randn(d.shape, generator=gen).to(d) for i, d in deltas.items()}
            mixed_rows.append({i: r / r.norm() * deltas[i].norm() for i, r in rand.items()})

    prompts = st.load_lines("sentiment_eval_prompts.txt")
    prompt_ids = [encode_prompt(tok, p) for p in prompts]
    pad_id = tok.pad_token_id

    def encode(batch: list[list[int]]) -> dict[str, Any]:
        return {k: v.to(model.device) for k, v in pad_batch(tok, batch, "left").items()}

    gen_kwargs = dict(
        max_new_tokens=args.tokens,
        min_new_tokens=args.tokens,
        do_sample=False,
        pad_token_id=pad_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )

    def run(batches: list[dict[str, Any]]) -> list[Any]:
        outs = []
        with torch.inference_mode():
            for b in batches:
                outs.append(model.generate(**b, **gen_kwargs)[:, b["input_ids"].shape[1] :].cpu())
        sync(args.device)
        return outs

    def steered(
        factory: Callable[[], contextlib.AbstractContextManager[Any] | None],
        batches: list[dict[str, Any]],
        runner: Callable[[list[dict[str, Any]]], Any] | None = None,
    ) -> Callable[[], Any]:
        def call() -> Any:
            ctx = factory()
            assert ctx is not None
            with ctx:
                return (runner or run)(batches)

        return call

    def decode_steps(batches: list[dict[str, Any]]) -> list[Any]:
        """``args.steps`` single-token forward passes on the cached prompt (the cache is cropped back)."""
        state = batches[0]
        last = None
        sync(args.device)
        c0, t0 = time.process_time(), time.perf_counter()  # the steering context's setup is not timed here
        with torch.inference_mode():
            for _ in range(args.steps):
                out = model(input_ids=state["next"], past_key_values=state["cache"], use_cache=True)
                state["cache"].crop(-1)
                last = out.logits[:, -1].argmax(-1)
        sync(args.device)
        return Timed([last.cpu()], time.perf_counter() - t0, time.process_time() - c0)

    peers = peer_status()
    threads_check = 0 if cuda else args.threads
    results: dict[str, Any] = {"workloads": {}}
    wanted = args.workloads.split(",")

    def fixed_methods(batches: list[dict[str, Any]], runner: Callable[[list[dict[str, Any]]], Any] = run) -> dict[str, Callable[[], Any]]:
        methods: dict[str, Callable[[], Any]] = {
            "plain": lambda: runner(batches),
            "bare hook": steered(lambda: bare_hook(model, deltas), batches, runner),
            "steering": steered(lambda: st.steer(model, vec, coef=args.coef, layers=layers), batches, runner),
            "steering hook": steered(lambda: st.steer(model, vec, coef=args.coef, layers=layers, backend="hook"), batches, runner),
        }
        if peers["repeng"] == "ok":
            methods["repeng"] = steered(lambda: repeng_method(model, deltas), batches, runner)
        if peers["steering-vectors"] == "ok":
            methods["steering-vectors"] = steered(lambda: steering_vectors_method(model, deltas), batches, runner)
        return methods

    with st.steer(model, vec, coef=args.coef, layers=layers) as group:
        backend = "fold" if "backend=fold" in repr(group) else "hook"
    log(f"st.steer chose backend={backend} for this model")

    workloads: list[tuple[str, list[dict[str, Any]], Callable[[list[dict[str, Any]]], dict[str, Callable[[], Any]]], str]] = []
    if "batch1" in wanted:
        workloads.append(("batch 1", [encode([t]) for t in prompt_ids[: args.prompts]], fixed_methods, "fixed"))
    if "batch8" in wanted:
        workloads.append(("batch 8", [encode(prompt_ids[:8])], fixed_methods, "fixed"))
    if "step" in wanted:
        prompt = encode([prompt_ids[0]])
        with torch.inference_mode():
            first_out = model(**prompt, use_cache=True)
        state = {"cache": first_out.past_key_values, "next": first_out.logits[:, -1:].argmax(-1)}
        workloads.append(("decode step", [state], lambda b: fixed_methods(b, decode_steps), "fixed"))
    if "mixed8" in wanted:
        batch8 = [encode(prompt_ids[:8])]
        rows = torch.arange(8) % len(mixed_rows)
        per_row = {i: torch.stack([mixed_rows[int(k)][i] for k in rows]) for i in layers}

        def mixed_methods(batches: list[dict[str, Any]]) -> dict[str, Callable[[], Any]]:
            ops = lambda: hooks.patch(model, {i: hooks.AddOp(d) for i, d in per_row.items()}, label="mixed")  # noqa: E731
            return {"plain": lambda: run(batches), "steering per-row": steered(ops, batches)}

        workloads.append(("mixed 8", batch8, mixed_methods, "mixed"))

    rows_out = []
    overhead_notes: list[str] = []
    for name, batches, make, kind in workloads:
        shape = (
            f"{args.steps} single-token forward passes (batch 1, cached prompt)"
            if name == "decode step"
            else f"{len(batches)} call(s) x {batches[0]['input_ids'].shape[0]} row(s) x {args.tokens} tokens"
        )
        log(f"\n{name}: {shape}, {args.repeats} repeats")
        methods = make(batches)
        series, first = interleave(methods, args.repeats, threads=threads_check, log=log)
        # Every steered method must reproduce the reference tokens.
        if kind == "fixed":
            reference = first["bare hook"]
        else:  # row r of the mixed batch == the batch steered uniformly with row r's vector
            ref_rows = [steered(lambda k=k: bare_hook(model, mixed_rows[k]), batches)()[0] for k in range(len(mixed_rows))]
            reference = [torch.stack([ref_rows[int(k)][r] for r, k in enumerate(rows)])]
        tokens_per_sample = args.steps if name == "decode step" else sum(b["input_ids"].shape[0] for b in batches) * args.tokens
        entry: dict[str, Any] = {"tokens_per_sample": tokens_per_sample, "methods": {}, "contention": contention_summary(series)}
        plain_same_as_ref = all(torch.equal(a, b) for a, b in zip(first["plain"], reference))
        for method, ser in series.items():
            same = None if method == "plain" else all(torch.equal(a, b) for a, b in zip(first[method], reference))
            ratio = None if method == "plain" else paired_ratio(ser, series["plain"])
            tps = tokens_per_sample / ser.median()
            entry["methods"][method] = {"tok_per_s": tps, "ratio": ratio, "same_tokens_as_reference": same, "samples": ser.samples}
            if name == "decode step" and method != "plain":
                # Paired difference per token, in microseconds: what the method adds to one decode step.
                diffs = sorted((a.wall - b.wall) / args.steps * 1e6 for a, b in zip(ser.samples, series["plain"].samples))
                entry["methods"][method]["added_us_per_token_median"] = diffs[len(diffs) // 2]
                overhead_notes.append(f"{method}: {diffs[len(diffs) // 2]:+.0f} us per token (median paired difference)")
            target = TARGETS[kind]
            verdict = ""
            if ratio is not None:
                gap = ratio["median"] - target
                verdict = "met" if gap >= 0 else f"missed by {-gap:.3f}"
            rows_out.append(
                [
                    name,
                    method + (f" ({backend})" if method == "steering" else ""),
                    f"{tps:.2f}",
                    "" if ratio is None else f"{ratio['median']:.3f} [{ratio['q1']:.3f}-{ratio['q3']:.3f}] n={ratio['n']}",
                    "" if same is None else ("yes" if same else "NO"),
                    "" if ratio is None else f">= {target}: {verdict}",
                ]
            )
        entry["vector_changes_tokens"] = not plain_same_as_ref
        c = entry["contention"]
        rows_out.append(
            [name, f"(load {c['load_min']}-{c['load_max']}, {c['reruns']} re-runs, {c['contended_kept']} contended kept)", "", "", "", ""]
        )
        results["workloads"][name] = entry

    print()
    print(table(rows_out, ["workload", "method", "tok/s", "steered/plain (median [q1-q3])", "same tokens", "target"]))
    if overhead_notes:
        print("decode step, time added per token vs plain:")
        for note in overhead_notes:
            print(f"  {note}")
    for peer, status in peers.items():
        if status != "ok":
            print(f"note: {peer} {status}")
    if cuda:
        print("note: GPU run")
    payload = {
        "benchmark": "generate",
        "machine": machine_info(args.device, args.threads),
        "config": {k: v for k, v in vars(args).items()},
        "model_load_s": load_s,
        "steer_backend": backend,
        "peers": peers,
        **results,
    }
    payload["machine"]["loadavg_end"] = list(__import__("os").getloadavg())
    if not args.no_save:
        path = write_results("generate" + ("-quick" if args.quick else ""), payload, args.out)
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
