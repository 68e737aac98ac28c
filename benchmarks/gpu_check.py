"""The GPU check: half precision and device placement against float32 CPU references, plus the speed benchmarks.

One command for the day a GPU is available (``benchmarks/gpu_check.sh`` wraps it
with a time limit). Parts, each recorded in one results file:

* ``parity``: the model on ``--device`` in ``--dtype`` against the same model in
  float32 on the CPU. Extraction (``read`` last and mean): cosine per layer.
  Steering (fold and hook backends) and ablation: next-token KL(reference ||
  device) over the prompts' positions, greedy tokens identical to the
  reference, fold vs hook tokens on the device, and the ablated direction's
  remaining share of the hidden state.
* ``compile``: ``torch.compile`` with a static cache: plain and steered (fold)
  tokens/s, their ratio (goal >= 0.98) and the graph breaks (goal 0).
* ``split``: a ``device_map`` with the first half of the blocks on the device
  and the rest on the CPU (``--device cpu``: the rest on disk): the vector and
  the steered tokens of the whole model on the device.
* ``generate`` and ``serve``: ``benchmarks/generate.py`` and ``benchmarks/serve.py``
  on the device, in their own processes (their own results files).

``--device cpu`` runs every part on the CPU (the dry run that
``tests/test_gpu_check.py`` does on a tiny model): the benchmarks in
subprocesses are then only asked for ``--help``, so their flags are checked
without spending minutes.

Example:
    python benchmarks/gpu_check.py --device cuda --dtype bfloat16
    python benchmarks/gpu_check.py --device cpu --model path/to/tiny --parts parity,split
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import ROOT, machine_info, write_results

PARTS = ("parity", "compile", "split", "generate", "serve")
GOALS = {
    "extract_cos_float32": 0.99999,
    "extract_cos_half": 0.99,
    "compile_ratio": 0.98,
    "graph_breaks": 0,
}
PROMPTS = ["Tell me about your weekend.", "What is the capital of France?", "Write a short poem about the sea."]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1]
    )
    p.add_argument("--device", default="cuda", help="device under test (default cuda; cpu is the dry run)")
    p.add_argument("--dtype", default="bfloat16", help="dtype under test (default bfloat16)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name or model folder")
    p.add_argument("--layers", default="10,12,14", help="layers to extract and steer (default 10,12,14)")
    p.add_argument("--pairs", type=int, default=32, help="sentiment pairs to extract from (default 32)")
    p.add_argument("--tokens", type=int, default=24, help="greedy tokens per prompt (default 24)")
    p.add_argument("--coef", type=float, default=4.0, help="steering coefficient (default 4)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)} (default all)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor; eager: dynamo only)")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/gpu-check-<device>-<time>.json)")
    args = p.parse_args(argv)
    args.layers = [int(x) for x in args.layers.split(",")]
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    return args


# ----------------------------------------------------------------------------- measurements


def _kl(reference: Any, other: Any) -> float:
    """Mean KL(reference || other) per position, from ``[..., vocab]`` logits, in float64 on the CPU."""
    import torch

    ref = torch.log_softmax(reference.double().cpu(), -1)
    oth = torch.log_softmax(other.double().cpu(), -1)
    return float((ref.exp() * (ref - oth)).sum(-1).mean())


def _logits(model: Any, tok: Any, prompts: list[str]) -> list[Any]:
    import torch

    from steering.hooks import input_device
    from steering.vectors.text import encode_prompt

    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([encode_prompt(tok, prompt, None)], device=input_device(model))
            out.append(model(input_ids=ids).logits[0].float().cpu())
    return out


def _tokens(model: Any, tok: Any, args: argparse.Namespace) -> list[str]:
    import steering as st

    return st.generate(model, tok, PROMPTS, max_new_tokens=args.tokens)


def _steered(model: Any, tok: Any, vec: Any, args: argparse.Namespace, **steer: Any) -> tuple[list[Any], list[str]]:
    import steering as st

    with st.steer(model, vec, coef=args.coef, **steer):
        return _logits(model, tok, PROMPTS), _tokens(model, tok, args)


def _same(a: list[str], b: list[str]) -> int:
    return sum(x == y for x, y in zip(a, b))


def _shared_chars(a: list[str], b: list[str]) -> float:
    """Mean length of the common start of two lists of completions, in characters (where they part)."""
    import os.path

    return sum(len(os.path.commonprefix([x, y])) for x, y in zip(a, b)) / len(a)


def parity(args: argparse.Namespace, pairs: list[Any]) -> dict[str, Any]:
    """Extraction, steering (fold, hook) and ablation on the device against float32 on the CPU."""
    import torch

    import steering as st
    from steering.hooks import decoder_layers

    ref, tok = st.load_model(args.model)
    dev, _ = st.load_model(args.model, device=args.device, dtype=args.dtype)
    half = dev.dtype != torch.float32
    out: dict[str, Any] = {"extract": {}, "steer": {}, "ablate": {}}
    vectors = {}
    for read in ("last", "mean"):
        vec_ref = st.extract(ref, tok, pairs, layers=args.layers, read=read)
        vec_dev = st.extract(dev, tok, pairs, layers=args.layers, read=read)
        cos = vec_dev.cosine(vec_ref)
        goal = GOALS["extract_cos_half" if half else "extract_cos_float32"]
        out["extract"][read] = {"min_cos": round(min(cos.values()), 7), "per_layer": cos, "goal": goal, "met": min(cos.values()) >= goal}
        vectors[read] = vec_ref
    vec = vectors["last"]
    plain_ref = _logits(ref, tok, PROMPTS)
    plain_dev = _logits(dev, tok, PROMPTS)
    baseline_kl = sum(_kl(r, d) for r, d in zip(plain_ref, plain_dev)) / len(PROMPTS)
    ref_logits, ref_tokens = _steered(ref, tok, vec, args, backend="hook")
    tokens_by_backend = {}
    for backend in ("fold", "hook"):
        logits, tokens = _steered(dev, tok, vec, args, backend=backend)
        tokens_by_backend[backend] = tokens
        out["steer"][backend] = {
            "kl_to_reference": sum(_kl(r, d) for r, d in zip(ref_logits, logits)) / len(PROMPTS),
            "unsteered_kl_to_reference": baseline_kl,
            "prompts_with_reference_tokens": f"{_same(tokens, ref_tokens)}/{len(PROMPTS)}",
            "mean_shared_chars_with_reference": _shared_chars(tokens, ref_tokens),
        }
    fold, hook = tokens_by_backend["fold"], tokens_by_backend["hook"]
    out["steer"]["fold_vs_hook_same_tokens"] = f"{_same(fold, hook)}/{len(PROMPTS)}"
    out["steer"]["fold_vs_hook_mean_shared_chars"] = _shared_chars(fold, hook)
    out["steer"]["mean_completion_chars"] = sum(map(len, hook)) / len(hook)
    # Ablation: what share of the hidden state is left along the direction after the ablated layer.
    layer = args.layers[0]
    unit = vec.directions[layer] / vec.directions[layer].norm()
    shares = {}
    for name, model in (("reference", ref), ("device", dev)):
        with st.steer(model, vec.select([layer]), mode="ablate"), st.record(model, [layer]) as rec, torch.no_grad():
            model(**tok(PROMPTS[:1], return_tensors="pt").to(st.hooks.input_device(model)))
        hidden = rec[layer][0].double().cpu()
        shares[name] = float(((hidden @ unit.double()).abs() / hidden.norm(dim=-1)).max())
    abl_ref_logits, abl_ref_tokens = _steered(ref, tok, vec, args, mode="ablate")
    abl_logits, abl_tokens = _steered(dev, tok, vec, args, mode="ablate")
    out["ablate"] = {
        "layer": layer,
        "max_share_left_reference": shares["reference"],
        "max_share_left_device": shares["device"],
        "kl_to_reference": sum(_kl(r, d) for r, d in zip(abl_ref_logits, abl_logits)) / len(PROMPTS),
        "prompts_with_reference_tokens": f"{_same(abl_tokens, abl_ref_tokens)}/{len(PROMPTS)}",
    }
    out["blocks"] = len(decoder_layers(dev))
    return out


def compiled(args: argparse.Namespace, pairs: list[Any]) -> dict[str, Any]:
    """Plain vs fold-steered generation under torch.compile with a static cache: ratio and graph breaks."""
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    import steering as st
    from steering.hooks import input_device
    from steering.vectors.text import encode_prompt, pad_batch

    model, tok = st.load_model(args.model, device=args.device, dtype=args.dtype)
    vec = st.extract(model, tok, pairs[:8], layers=args.layers)
    batch = {k: v.to(input_device(model)) for k, v in pad_batch(tok, [encode_prompt(tok, PROMPTS[0], None)], "left").items()}
    torch._dynamo.reset()
    counters.clear()
    model.forward = torch.compile(model.forward, backend=args.compile_backend)
    # disable_compile: transformers would compile the forward itself for a static cache on a GPU;
    # here the one compiled forward is ours, so what is measured is known.
    kwargs = dict(
        max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, cache_implementation="static", disable_compile=True
    )

    def run() -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(**batch, **kwargs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return args.tokens / (time.perf_counter() - start)

    def steered() -> float:
        with st.steer(model, vec, coef=args.coef, backend="fold"):
            return run()

    run(), steered()  # compile both states (a bias that appears recompiles once)
    plain_rates, steered_rates = [], []
    for _ in range(5):  # interleaved
        plain_rates.append(run())
        steered_rates.append(steered())
    ratios = sorted(s / p for s, p in zip(steered_rates, plain_rates))
    breaks = sum(counters["graph_break"].values())
    ratio = ratios[len(ratios) // 2]
    return {
        "backend": args.compile_backend,
        "plain_tokens_per_s": round(sorted(plain_rates)[2], 2),
        "steered_tokens_per_s": round(sorted(steered_rates)[2], 2),
        "ratio_median": round(ratio, 4),
        "ratio_goal": GOALS["compile_ratio"],
        "ratio_met": ratio >= GOALS["compile_ratio"],
        "graph_breaks": breaks,
        "graph_breaks_goal": GOALS["graph_breaks"],
        "unique_graphs": counters["stats"]["unique_graphs"],
    }


def split(args: argparse.Namespace, pairs: list[Any]) -> dict[str, Any]:
    """A device_map with half the blocks on the device and half on the CPU (or disk): same vector and tokens."""
    import steering as st
    from steering.hooks import num_layers
    from steering.models import block_device_map

    whole, tok = st.load_model(args.model, device=args.device)
    depth = num_layers(whole)
    device: int | str = 0 if args.device.startswith("cuda") else "cpu"
    other = "cpu" if args.device.startswith("cuda") else "disk"
    device_map = block_device_map(whole, {i: other for i in range(depth // 2, depth)}, rest=device)
    with tempfile.TemporaryDirectory() as offload:
        placed, _ = st.load_model(args.model, device_map=device_map, offload_folder=offload)
        layers = sorted({args.layers[0], depth - 1})  # one block on each side of the split
        vec_whole = st.extract(whole, tok, pairs[:8], layers=layers)
        vec_placed = st.extract(placed, tok, pairs[:8], layers=layers)
        cos = min(vec_placed.cosine(vec_whole).values())
        out: dict[str, Any] = {"device_map": {k: str(v) for k, v in placed.hf_device_map.items()}, "min_cos": cos}
        out["min_cos_met"] = cos >= GOALS["extract_cos_float32"]
        for backend, steer_layers in (("hook", layers), ("fold", layers)):  # the fold too at the offloaded block
            with st.steer(whole, vec_whole.select(steer_layers), coef=args.coef, backend=backend):
                expected = _tokens(whole, tok, args)
            with st.steer(placed, vec_whole.select(steer_layers), coef=args.coef, backend=backend):
                got = _tokens(placed, tok, args)
            out[f"{backend}_same_tokens"] = f"{_same(got, expected)}/{len(PROMPTS)}"
    return out


def benchmark(script: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Run ``benchmarks/<script>`` on the device in its own process (on the CPU dry run: only ``--help``)."""
    command = [sys.executable, str(ROOT / "benchmarks" / script), *extra]
    if not args.device.startswith("cuda"):
        command.append("--help")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    return {
        "command": " ".join(command[1:]),
        "returncode": done.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "output_tail": (done.stdout + done.stderr)[-3000:],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    import steering as st

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    torch.manual_seed(0)
    pairs = st.load_pairs("sentiment")[: args.pairs]
    results: dict[str, Any] = {"machine": machine_info(args.device, torch.get_num_threads()), "args": vars(args), "goals": GOALS}
    results["machine"]["dtype"] = args.dtype
    parts = {
        "parity": lambda: parity(args, pairs),
        "compile": lambda: compiled(args, pairs),
        "split": lambda: split(args, pairs),
        "generate": lambda: benchmark("generate.py", args, ["--device", args.device, "--quick", "--model", args.model]),
        "serve": lambda: benchmark(
            "serve.py", args, ["--device", args.device, "--dtype", args.dtype, "--quick", "--model", args.model, "--clients", "1", "8"]
        ),
    }
    failed = []
    out = args.out
    for name in args.parts:
        start = time.perf_counter()
        try:
            results[name] = parts[name]()
        except Exception as exc:  # record and go on: one broken part must not hide the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"== {name} ({results[name]['seconds']} s)\n{json.dumps(results[name], indent=2, default=_short)}", flush=True)
        out = str(write_results("gpu-check", results, out))  # after every part: a time limit keeps what was measured
    print(f"wrote {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _short(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) and math.isfinite(value) else str(value)


if __name__ == "__main__":
    sys.exit(main())
