"""Does extraction memory stay flat up to 10,000 pairs? Peak memory and pairs/s per method and pair count.

Pairs: every bundled data set's pairs (prompt and completion joined, as in
``benchmarks/extract.py``) under a dozen framings ("Honestly, ...", "In one
line: ...", ...), so 10,000 pairs are 10,000 different texts, not one set cycled.

Each (method, count) runs in a fresh process: load the model, extract 4 pairs
(warms the allocator), read every weight once, note the resident memory,
reset the peak counter (Linux ``clear_refs``), extract ``count`` pairs and
report the peak resident memory (CPU) or peak allocated GPU memory above that
point, and the pairs/s. The goal: at most 64 MiB above the loaded model at
every count, and flat.

Why every weight is read first: transformers maps safetensors weights from the
file, so a weight page joins the resident set only when first read. Without
this, the embedding rows of tokens not seen before are paged in during the
run, and the peak grows with the vocabulary the pairs cover (the +99 MiB at
1,000 pairs of the first run: file-backed model pages, while anonymous memory
stayed flat). ``anon_*``/``file_*`` split each figure (``/proc/self/smaps_rollup``).

Why ``--mmap-threshold``: with glibc's default the threshold above which
``malloc`` maps a block of its own (and unmaps it on ``free``) rises to the
largest block freed so far, so after the first batches a forward pass's
activations come from the heap, and how much of the freed heap is still
resident at the peak varies from run to run: the plain forward pass of the
same batches measured +39, +73 and +76 MiB in three runs (2026-12-01). A fixed
threshold (65536: every tensor over 64 KiB mapped and returned when freed)
makes the resident peak what the tensors hold, reproducibly; the option sets
``MALLOC_MMAP_THRESHOLD_`` for the runs and is recorded with the results.

Example:
    .venv/bin/python benchmarks/extract_memory.py --counts 100,1000,10000 --layers 0-2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from _common import RESULTS, ROOT, machine_info, parse_layers, setup_torch, table, write_results
from extract import peak_rss_mib, reset_peak_rss, rss_mib

TARGET_ABOVE_MODEL_MIB = 64
FRAMES = (
    "",
    "Honestly, ",
    "In one line: ",
    "Quick note. ",
    "As I said before, ",
    "Well... ",
    "Reply: ",
    "To be clear, ",
    "(overheard) ",
    "Story time. ",
    "For the record, ",
    "Answer: ",
)


def make_pairs(n: int) -> list[Any]:
    """``n`` distinct pairs: the bundled sets' pairs under each framing in turn (ValueError past the pool)."""
    import steering as st

    base = []
    for name in st.bundled_datasets():
        for p in st.load_pairs(name):
            prefix = f"{p.prompt} " if p.prompt else ""
            base.append((prefix + p.positive, prefix + p.negative))
    pool = [st.ContrastPair(frame + pos, frame + neg) for frame in FRAMES for pos, neg in base]
    if n > len(pool):
        raise ValueError(f"{n} pairs asked, {len(pool)} distinct ones can be made")
    return pool[:n]


def rss_split_mib() -> dict[str, float]:
    """Resident memory split into anonymous (allocations) and file-backed (mapped weights) MiB; empty off Linux."""
    keys = {"Anonymous:": "anon", "Rss:": "rss"}
    out: dict[str, float] = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in keys:
                    out[keys[parts[0]]] = int(parts[1]) / 1024
    except OSError:
        return {}
    if "rss" in out and "anon" in out:
        out["file"] = out.pop("rss") - out["anon"]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="100,1000,10000", help="pair counts (default 100,1000,10000)")
    p.add_argument(
        "--methods",
        default="mean_diff,pca_diff",
        help="methods (default mean_diff,pca_diff); 'plain' runs the same batches through the model without extraction (the baseline)",
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name or model folder")
    p.add_argument("--layers", default="10-20", help="layers to extract, e.g. 0-2 (default 10-20)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass (default 16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument(
        "--mmap-threshold",
        type=int,
        default=None,
        help="glibc M_MMAP_THRESHOLD for the runs, in bytes (MALLOC_MMAP_THRESHOLD_); default: glibc's own, dynamic (see module docs)",
    )
    p.add_argument("--out", default=None, help="results JSON path")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


class _Stop(Exception):
    """Ends a plain forward pass after the deepest layer extraction would read."""


def plain_forward(model: Any, tok: Any, pairs: list[Any], layers: list[int], batch_size: int) -> None:
    """The model's own working set: the pairs' texts, ``batch_size`` pairs per pass, through the
    decoder blocks up to the deepest of ``layers``, with no steering code (a torch hook stops it)."""
    import torch

    from steering.hooks import decoder_layers, decoder_stack

    stack, last = decoder_stack(model), decoder_layers(model)[max(layers)]

    def stop(*_: Any) -> None:
        raise _Stop

    handle = last.register_forward_hook(stop)
    try:
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                batch = tok([p.positive for p in chunk] + [p.negative for p in chunk], padding=True, return_tensors="pt")
                try:
                    stack(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()


def child(args: argparse.Namespace) -> int:
    """One extraction of ``--child METHOD:COUNT`` (``plain``: the model's own forward passes of the
    same batches, the baseline); print its memory and speed as JSON."""
    setup_torch(args.device, args.threads)
    import torch

    import steering as st

    method, count = args.child.split(":")
    model, tok = st.load_model(args.model, device=args.device)
    model_mib = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    pairs = make_pairs(int(count))
    layers = parse_layers(args.layers)

    def run(some: list[Any]) -> None:
        if method == "plain":
            plain_forward(model, tok, some, layers, args.batch_size)
        else:
            st.extract(model, tok, some, layers=layers, method=method, batch_size=args.batch_size, progress=False)

    run(pairs[:4])
    with torch.no_grad():  # page in every weight: a file-mapped weight counts once it is read (see module docs)
        for t in [*model.parameters(), *model.buffers()]:
            t.sum()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mib()
    split_before = rss_split_mib()
    was_reset = reset_peak_rss()
    start = time.perf_counter()
    run(pairs)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    split_after = rss_split_mib()
    out = {
        "method": method,
        "pairs": int(count),
        "model_mib": model_mib,
        "after_load_mib": base,
        "peak_mib": peak,
        "above_after_load_mib": peak - base,
        "peak_reset_after_load": was_reset,
        **{f"{kind}_at_start_mib": v for kind, v in split_before.items()},
        **{f"{kind}_at_end_mib": v for kind, v in split_after.items()},
        "seconds": seconds,
        "pairs_per_s": int(count) / seconds,
    }
    print("MEMORY " + json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child(args)
    setup_torch(args.device, args.threads)
    counts = [int(c) for c in args.counts.split(",") if c]
    methods = [m for m in args.methods.split(",") if m]
    rows: list[dict[str, Any]] = []
    payload = {"benchmark": "extract-memory-pairs", "machine": machine_info(args.device, args.threads), "config": vars(args), "runs": rows}
    out = args.out or str(RESULTS / f"extract-memory-pairs-{args.device.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    for method in methods:
        for count in counts:
            cmd = [sys.executable, __file__, "--child", f"{method}:{count}", "--model", args.model, "--layers", args.layers]
            cmd += ["--batch-size", str(args.batch_size), "--device", args.device, "--threads", str(args.threads)]
            env = dict(os.environ)
            if args.mmap_threshold is not None:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("MEMORY ")), None)
            if line is None:
                raise SystemExit(f"{method} with {count} pairs failed:\n{proc.stderr[-2000:]}")
            rows.append(json.loads(line[len("MEMORY ") :]))
            r = rows[-1]
            print(f"  {method} {count} pairs: +{r['above_after_load_mib']:.0f} MiB, {r['pairs_per_s']:.1f} pairs/s", flush=True)
            if not args.no_save:  # after every run: a long run stopped early keeps what it measured
                write_results("extract-memory-pairs", {**payload, "complete": False}, out)
    print(
        table(
            [
                [
                    r["method"],
                    str(r["pairs"]),
                    f"{r['model_mib']:.0f}",
                    f"{r['peak_mib']:.0f}",
                    f"{r['above_after_load_mib']:.0f}",
                    f"{r['pairs_per_s']:.1f}",
                ]
                for r in rows
            ],
            ["method", "pairs", "model MiB", "peak MiB", "above loaded MiB", "pairs/s"],
        )
    )
    verdicts = {}
    for method in methods:
        above = [r["above_after_load_mib"] for r in rows if r["method"] == method]
        worst, spread = max(above), max(above) - min(above)
        verdicts[method] = {"worst_above_mib": worst, "spread_mib": spread, "met": worst <= TARGET_ABOVE_MODEL_MIB}
        print(f"{method}: at most +{worst:.0f} MiB above the loaded model, spread {spread:.0f} MiB (target <= {TARGET_ABOVE_MODEL_MIB})")
    # What extraction adds to the model's own forward passes of the same batches (same count).
    plain = {r["pairs"]: r["above_after_load_mib"] for r in rows if r["method"] == "plain"}
    for method in methods:
        extra = [r["above_after_load_mib"] - plain[r["pairs"]] for r in rows if r["method"] == method and r["pairs"] in plain]
        if method != "plain" and extra:
            verdicts[method]["worst_above_plain_forward_mib"] = max(extra)
            print(f"{method}: at most {max(extra):+.0f} MiB above the plain forward passes of the same batches")
    if not args.no_save:
        print(f"results: {write_results('extract-memory-pairs', {**payload, 'verdicts': verdicts, 'complete': True}, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
