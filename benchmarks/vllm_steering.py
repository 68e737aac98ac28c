"""What does per-request steering cost inside vLLM? Steered / plain output tokens per second.

Workloads: batches of 1, 8 and 32 requests (greedy, ``ignore_eos``, every
request forced to ``--tokens`` new tokens), each request steered by *its own*
vector (a distinct random direction per request, scaled to the norm of a real
sentiment vector, at ``--layers`` with coef 4), timed side by side with the
same requests unsteered, in one ``LLM``. Each request's prompt differs too, so
the prefix cache (off here anyway) cannot help either side.

``--eager`` (the default on CPU) runs vLLM without CUDA graphs; on a GPU leave
it off: graphs and compilation stay on and the plugin's op runs inside them
(``benchmarks/gpu_vllm.sh`` runs that). The engine core runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the CPU-time contention check of
`_common.timed` sees its work.

Prints a table of tokens/s and paired steered/plain ratios (median of the
per-repeat ratios) and writes the full record to ``benchmarks/results/``.

Example:
    flock /tmp/steering-heavy.lock .venv/bin/python benchmarks/vllm_steering.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

from _common import contention_summary, interleave, machine_info, paired_ratio, parse_layers, table, write_results  # noqa: E402

GOAL = 0.95  # steered / plain at batch 32 (issue #12)


def make_vectors(folder: Path, count: int, layers: list[int], width: int, num_layers: int, norm: float, model: str) -> list[str]:
    """``count`` vectors with random directions of norm ``norm`` at ``layers``; their names."""
    import torch

    import steering as st

    gen = torch.Generator().manual_seed(0)
    names = []
    for i in range(count):
        dirs = {}
        for layer in layers:
            d = torch.randn(width, generator=gen)
            dirs[layer] = d / d.norm() * norm
        st.SteeringVector(dirs, hidden_size=width, num_layers=num_layers, model=model).save(folder / f"v{i}.safetensors")
        names.append(f"v{i}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--layers", default="10-13")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (vLLM's platform decides; this is recorded)")
    parser.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--eager", action=argparse.BooleanOptionalAction, default=None, help="default: on for cpu, off for cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads vLLM uses, for the contention check (0: none)")
    parser.add_argument("--quick", action="store_true", help="batches 1,8, 16 tokens, 2 repeats")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.tokens, args.repeats = "1,8", 16, 2
    cuda = args.device.startswith("cuda")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    eager = (not cuda) if args.eager is None else args.eager
    threads = args.threads if args.threads is not None else (0 if cuda else len(os.sched_getaffinity(0)))
    layers = parse_layers(args.layers)
    batches = [int(b) for b in args.batches.split(",")]

    import steering as st
    from steering.models import hf_folder
    from steering.server import ServerConfig
    from steering.vllm.frontend import Frontend, install_frontend

    folder, _ = hf_folder(args.model)
    model, tok = st.load_model(args.model)
    vec = st.extract(model, tok, st.load_pairs("sentiment")[:32], layers=layers)
    norm = max(vec.norms().values())
    vectors = Path(tempfile.mkdtemp(prefix="vllm-bench-vectors-"))
    names = make_vectors(vectors, max(batches), layers, vec.hidden_size, vec.num_layers, norm, vec.model)
    install_frontend(str(folder), Frontend.for_model(model, ServerConfig(vectors_dir=vectors, allow_model_mismatch=True)))

    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(folder),
        dtype=dtype,
        enforce_eager=eager,
        max_num_seqs=max(batches),
        max_model_len=512,
        enable_prefix_caching=False,
        gpu_memory_utilization=0.5,
    )
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": f"Tell me a story about the number {i}."}], tokenize=False)
        for i in range(max(batches))
    ]

    def job(batch: int, steered: bool) -> Any:
        def run() -> int:
            params = [
                SamplingParams(
                    temperature=0.0,
                    max_tokens=args.tokens,
                    ignore_eos=True,
                    extra_args={"steering": [{"vector": names[i], "coef": 4.0}]} if steered else None,
                )
                for i in range(batch)
            ]
            outs = llm.generate(prompts[:batch], params, use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs)

        return run

    rows, record = [], {}
    for batch in batches:
        print(f"batch {batch}:", flush=True)
        series, first = interleave({"plain": job(batch, False), "steered": job(batch, True)}, args.repeats, threads=threads)
        tokens = first["plain"]
        assert first["steered"] == tokens == batch * args.tokens, first
        ratio = paired_ratio(series["steered"], series["plain"])
        plain_tps, steered_tps = tokens / series["plain"].median(), tokens / series["steered"].median()
        rows.append(
            [str(batch), f"{plain_tps:.1f}", f"{steered_tps:.1f}", f"{ratio['median']:.3f}", f"[{ratio['q1']:.3f}, {ratio['q3']:.3f}]"]
        )
        record[f"batch_{batch}"] = {
            "tokens": tokens,
            "plain_tok_s": plain_tps,
            "steered_tok_s": steered_tps,
            "ratio": ratio,
            "plain_walls": series["plain"].walls,
            "steered_walls": series["steered"].walls,
            "contention": contention_summary(series),
        }
    print(table(rows, ["batch", "plain tok/s", "steered tok/s", "steered/plain", "IQR"]))
    last = record.get("batch_32")
    if last is not None:
        print(f"batch 32 ratio {last['ratio']['median']:.3f} (goal >= {GOAL})")
    import vllm

    machine = machine_info(args.device, threads)
    machine.update(vllm=vllm.__version__, dtype=dtype, eager=eager)
    payload = {
        "benchmark": "vllm",
        "machine": machine,
        "settings": {
            "model": args.model,
            "layers": layers,
            "tokens": args.tokens,
            "repeats": args.repeats,
            "coef": 4.0,
            "vector_norm": norm,
        },
        "goal_batch_32": GOAL,
        "results": record,
    }
    path = write_results("vllm", payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
