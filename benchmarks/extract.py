"""How fast is extraction? Pairs/s against the floor and the peers, and peak memory vs pair count.

The floor is the least work a plain extractor must do: the pairs batched by
token length (two texts per pair, the least padding), one forward pass per
batch stopped after the deepest requested layer, reading nothing;
tokenisation is not timed there. ``steering`` can beat it: the tokens a
pair's texts share run once (``vectors/prefix.py``).
Methods, on the same pairs (plain positive / negative strings, no template)
and layers:

* ``steering``: ``st.extract(..., method="mean_diff")``, everything included;
* ``steering pca``: ``method="pca_diff"`` (keeps every difference vector);
* ``repeng``: ``ControlVector.train`` (PCA of differences; full forward with
  ``output_hidden_states``);
* ``steering-vectors``: ``train_steering_vector`` (mean difference; positives
  and negatives in separate forwards), with the same batch size.

Peak memory: one fresh process per pair count loads the model, resets its
peak-RSS counter (Linux ``clear_refs``, so loading does not count), runs
``st.extract`` and reports the peak resident memory (CPU) or the peak
allocated GPU memory.

Example:
    flock /tmp/steering-heavy.lock benchmarks/.venv-peers/bin/python benchmarks/extract.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # repeng shows progress bars it cannot be told to hide

from _common import ROOT, contention_summary, interleave, machine_info, paired_ratio, parse_layers, setup_torch, sync, table, write_results

TARGET_FLOOR = 0.90
TARGET_PEERS = 2.0
TARGET_MEMORY_MIB = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1]
    )
    p.add_argument("--quick", action="store_true", help="short run: 64 pairs, 3 repeats (memory check still 64 vs 1024)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name or model folder")
    p.add_argument("--layers", default="10-20", help="layers to extract, e.g. 10-20 (default 10-20)")
    p.add_argument("--pairs", type=int, default=None, help="pairs per timed run (default 128; quick 64)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass, for every method (default 16)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; quick 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument(
        "--memory", default="64,1024,1024x64", help="pair counts for the peak-memory check; NxK = N pairs cycling the first K ('' to skip)"
    )
    p.add_argument("--memory-only", action="store_true", help="skip the timing, run only the memory check")
    p.add_argument("--out", default=None, help="results JSON path")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.pairs = args.pairs or (64 if args.quick else 128)
    args.repeats = args.repeats or (3 if args.quick else 5)
    return args


def make_pairs(n: int) -> list[Any]:
    """``n`` plain-text pairs cycled from every bundled data set (prompt and completion joined)."""
    import steering as st

    pool = []
    for name in st.bundled_datasets():
        for p in st.load_pairs(name):
            prefix = f"{p.prompt} " if p.prompt else ""
            pool.append(st.ContrastPair(positive=prefix + p.positive, negative=prefix + p.negative))
    return [pool[k % len(pool)] for k in range(n)]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs``), so loading the model does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak RSS since the last reset (``VmHWM``), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_child(args: argparse.Namespace) -> int:
    """Run one extraction of ``--memory-child`` pairs and print its memory as JSON."""
    setup_torch(args.device, args.threads)
    import torch

    import steering as st

    model, tok = st.load_model(args.model, device=args.device)
    count, _, distinct = args.memory_child.partition("x")
    pairs = make_pairs(int(count))
    if distinct:  # the same K pairs over and over: isolates the count from the lengths
        pairs = [pairs[k % int(distinct)] for k in range(int(count))]
    layers = parse_layers(args.layers)
    st.extract(model, tok, pairs[:4], layers=layers, batch_size=args.batch_size, progress=False)  # warm allocator
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    longest = max(len(tok(t)["input_ids"]) for p in pairs for t in (p.positive, p.negative))
    base_rss = rss_mib()
    was_reset = reset_peak_rss()
    st.extract(model, tok, pairs, layers=layers, batch_size=args.batch_size, progress=False)
    out = {
        "pairs": args.memory_child,
        "longest_text_tokens": longest,
        "rss_after_load_mib": base_rss,
        "peak_rss_mib": peak_rss_mib(),
        "peak_reset_after_load": was_reset,
    }
    if cuda:
        torch.cuda.synchronize()
        out["gpu_base_mib"] = base
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("MEMORY " + json.dumps(out))
    return 0


def measure_memory(args: argparse.Namespace, counts: list[str]) -> list[dict[str, Any]]:
    out = []
    for n in counts:
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            str(n),
            "--device",
            args.device,
            "--model",
            args.model,
            "--layers",
            args.layers,
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("MEMORY ")), None)
        if line is None:
            raise SystemExit(f"memory run for {n} pairs failed:\n{proc.stderr[-2000:]}")
        out.append(json.loads(line[len("MEMORY ") :]))
        print(f"  {n} pairs: peak RSS {out[-1]['peak_rss_mib']:.0f} MiB", flush=True)
    return out


def memory_section(args: argparse.Namespace, cuda: bool) -> list[dict[str, Any]]:
    """Run and print the peak-memory check; the target compares the plain counts (not NxK)."""
    counts = [x for x in args.memory.split(",") if x]
    if not counts:
        return []
    print("\npeak memory (fresh process per count):", flush=True)
    memory = measure_memory(args, counts)
    key = "gpu_peak_mib" if cuda else "peak_rss_mib"
    print(
        table(
            [[str(m["pairs"]), f"{m[key]:.0f}", f"{m[key] - m.get('gpu_base_mib', m['rss_after_load_mib']):.0f}"] for m in memory],
            ["pairs", "peak MiB", "above after-load MiB"],
        )
    )
    plain = [m[key] for m in memory if "x" not in str(m["pairs"])]
    if len(plain) > 1:
        spread = max(plain) - min(plain)
        verdict = "met" if spread <= TARGET_MEMORY_MIB else f"missed by {spread - TARGET_MEMORY_MIB:.0f} MiB"
        print(
            f"peak spread over {', '.join(str(m['pairs']) for m in memory if 'x' not in str(m['pairs']))} pairs: {spread:.0f} MiB (target <= {TARGET_MEMORY_MIB} MiB: {verdict})"
        )
    return memory


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child is not None:
        return memory_child(args)
    cuda = args.device.startswith("cuda")
    if args.memory_only:
        setup_torch(args.device, args.threads)
        payload = {
            "benchmark": "extract-memory",
            "machine": machine_info(args.device, args.threads),
            "config": vars(args),
            "memory": memory_section(args, cuda),
        }
        if not args.no_save:
            print(f"results: {write_results('extract-memory', payload, args.out)}")
        return 0
    setup_torch(args.device, args.threads)
    import torch

    import steering as st
    from steering import hooks
    from steering.vectors.extract import _encode
    from steering.vectors.text import pair_texts, tokenize

    model, tok = st.load_model(args.model, device=args.device)
    layers = parse_layers(args.layers)
    pairs = make_pairs(args.pairs)
    bs = args.batch_size
    print(f"{args.pairs} pairs, layers {layers}, batch {bs} pairs, threads {args.threads}", flush=True)

    # The floor: one plain pass per batch over the same pairs, batched by token length (the
    # least padding a plain pass can have), pre-tokenised, stopped after the deepest layer.
    texts = [pair_texts(tok, p) for p in pairs]
    lengths = [max(len(tokenize(tok, t[0], t[3])), len(tokenize(tok, t[1], t[3]))) for t in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    floor_batches = []
    for k in range(0, len(order), bs):
        rows = [texts[j] for j in order[k : k + bs]]
        enc = _encode(
            tok, [r[0] for r in rows] + [r[1] for r in rows], [""] * 2 * len(rows), [r[3] for r in rows] * 2, "last", model.device
        )
        floor_batches.append({key: v for key, v in enc.items() if not key.startswith("_")})
    deepest = max(layers)

    def floor() -> None:
        with torch.inference_mode(), hooks.capture(model, [deepest], lambda i, h: None, stop_after_last=True):
            for b in floor_batches:
                hooks.run_until_stopped(model, **b, use_cache=False)
        sync(args.device)

    def ours(method: str):
        def call() -> Any:
            vec = st.extract(model, tok, pairs, layers=layers, method=method, batch_size=bs, progress=False)
            sync(args.device)
            return vec

        return call

    methods: dict[str, Any] = {"floor": floor, "steering": ours("mean_diff"), "steering pca": ours("pca_diff")}
    peers: dict[str, str] = {}
    try:
        from repeng import ControlVector, DatasetEntry

        dataset = [DatasetEntry(positive=p.positive, negative=p.negative) for p in pairs]
        methods["repeng"] = lambda: ControlVector.train(model, tok, dataset, hidden_layers=layers, batch_size=2 * bs, method="pca_diff")
        peers["repeng"] = "ok"
    except Exception as exc:
        peers["repeng"] = f"not importable here ({type(exc).__name__}); use benchmarks/.venv-peers/bin/python"
    try:
        from steering_vectors import train_steering_vector

        samples = [(p.positive, p.negative) for p in pairs]
        methods["steering-vectors"] = lambda: train_steering_vector(model, tok, samples, layers=layers, batch_size=bs, show_progress=False)
        peers["steering-vectors"] = "ok"
    except Exception as exc:
        peers["steering-vectors"] = f"not importable here ({type(exc).__name__}); use benchmarks/.venv-peers/bin/python"

    series, first = interleave(methods, args.repeats, threads=0 if cuda else args.threads)
    # Same work check: our vector vs the peers' mean / PCA directions (cosine).
    checks = _agreement(first, layers)

    rows = []
    peer_best = max((args.pairs / series[m].median() for m in ("repeng", "steering-vectors") if m in series), default=None)
    results: dict[str, Any] = {}
    for name, ser in series.items():
        rate = args.pairs / ser.median()
        vs_floor = None if name == "floor" else paired_ratio(ser, series["floor"])
        entry = {"pairs_per_s": rate, "vs_floor": vs_floor, "samples": ser.samples}
        target = ""
        if name == "steering" and vs_floor is not None:
            gap = vs_floor["median"] - TARGET_FLOOR
            target = f"floor >= {TARGET_FLOOR}: " + ("met" if gap >= 0 else f"missed by {-gap:.3f}")
            if peer_best:
                speedup = rate / peer_best
                entry["vs_fastest_peer"] = speedup
                target += f"; {speedup:.1f}x fastest peer (>= {TARGET_PEERS}: " + ("met)" if speedup >= TARGET_PEERS else "missed)")
        results[name] = entry
        rows.append(
            [
                name,
                f"{rate:.1f}",
                "" if vs_floor is None else f"{vs_floor['median']:.3f} [{vs_floor['q1']:.3f}-{vs_floor['q3']:.3f}] n={vs_floor['n']}",
                target,
            ]
        )
    print()
    print(table(rows, ["method", "pairs/s", "of floor (median [q1-q3])", "target"]))
    c = contention_summary(series)
    print(f"load {c['load_min']}-{c['load_max']}, {c['reruns']} re-runs, {c['contended_kept']} contended samples kept")
    print("agreement with steering (cosine per layer, min):", {k: round(v, 4) for k, v in checks.items()})
    for peer, status in peers.items():
        if status != "ok":
            print(f"note: {peer} {status}")

    memory = memory_section(args, cuda)

    payload = {
        "benchmark": "extract",
        "machine": machine_info(args.device, args.threads),
        "config": vars(args),
        "peers": peers,
        "methods": results,
        "contention": c,
        "agreement_min_cosine": checks,
        "memory": memory,
    }
    payload["machine"]["loadavg_end"] = list(os.getloadavg())
    if not args.no_save:
        print(f"results: {write_results('extract' + ('-quick' if args.quick else ''), payload, args.out)}")
    return 0


def _agreement(first: dict[str, Any], layers: list[int]) -> dict[str, float]:
    """Smallest |cosine| over layers between our direction and each other method's."""
    import numpy as np
    import torch

    ours = first["steering"].directions
    out = {}
    for name, result in first.items():
        if name in ("floor", "steering") or result is None:
            continue
        dirs = getattr(result, "directions", None) or getattr(result, "layer_activations", None)
        if dirs is None:
            continue
        cos = []
        for i in layers:
            a = ours[i].double()
            b = torch.as_tensor(np.asarray(dirs[i].cpu() if hasattr(dirs[i], "cpu") else dirs[i])).double().flatten()
            cos.append(abs(float(a @ b / (a.norm() * b.norm()))))
        out[name] = min(cos)
    return out


if __name__ == "__main__":
    sys.exit(main())
