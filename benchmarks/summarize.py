"""Render recorded benchmark JSON files as Markdown tables (for results/README.md).

Example:
    .venv/bin/python benchmarks/summarize.py benchmarks/results/generate-cpu.json benchmarks/results/extract-cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _machine(m: dict[str, Any]) -> str:
    load = m.get("loadavg_start", [None])[0]
    return (
        f"{m['date']}, {m['cpu']} ({m['cores']} cores, {m.get('memory_gib')} GiB), device {m['device']}, "
        f"torch threads {m['torch_threads']}, load at start {load:.2f}; torch {m['torch']}, transformers "
        f"{m['transformers']}, numpy {m.get('numpy')}, repeng {m.get('repeng')}, steering-vectors "
        f"{m.get('steering_vectors')}, commit {m.get('git_commit')}"
    )


def generate(data: dict[str, Any]) -> str:
    cfg = data["config"]
    out = [
        f"**generate** ({_machine(data['machine'])}); model {cfg['model']}, layers {cfg['layers']}, coef {cfg['coef']}, "
        f"{cfg['tokens']} new tokens per call ({cfg.get('steps')} single-token passes per decode-step sample), {cfg['repeats']} repeats, st.steer backend: {data['steer_backend']}",
        "",
        "| workload | method | tok/s | steered/plain, median [q1-q3] (n) | same tokens as reference |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, w in data["workloads"].items():
        for method, r in w["methods"].items():
            ratio = r["ratio"]
            cell = "" if ratio is None else f"{ratio['median']:.3f} [{ratio['q1']:.3f}-{ratio['q3']:.3f}] ({ratio['n']})"
            same = "" if r["same_tokens_as_reference"] is None else ("yes" if r["same_tokens_as_reference"] else "**no**")
            added = r.get("added_us_per_token_median")
            extra = "" if added is None else f"; adds {added:+.0f} us/token"
            out.append(f"| {name} | {method} | {r['tok_per_s']:.2f} | {cell}{extra} | {same} |")
        c = w["contention"]
        out.append(
            f"| {name} | *load {c['load_min']}-{c['load_max']} (median {c['load_median']}), {c['samples']} samples, {c['reruns']} re-run, {c['contended_kept']} contended kept* | | | |"
        )
    return "\n".join(out)


def extract(data: dict[str, Any]) -> str:
    cfg = data["config"]
    out = [
        f"**extract** ({_machine(data['machine'])}); model {cfg['model']}, layers {cfg['layers']}, {cfg['pairs']} pairs, "
        f"batch {cfg['batch_size']} pairs, {cfg['repeats']} repeats",
        "",
        "| method | pairs/s | of floor, median [q1-q3] (n) |",
        "| --- | --- | --- |",
    ]
    for name, r in data["methods"].items():
        f = r["vs_floor"]
        cell = "" if f is None else f"{f['median']:.3f} [{f['q1']:.3f}-{f['q3']:.3f}] ({f['n']})"
        out.append(f"| {name} | {r['pairs_per_s']:.1f} | {cell} |")
    c = data["contention"]
    out.append(
        f"\nLoad {c['load_min']}-{c['load_max']}, {c['samples']} samples, {c['reruns']} re-run, {c['contended_kept']} contended kept. "
        f"Agreement with `steering` (min |cosine| over layers): {data['agreement_min_cosine']}."
    )
    if data.get("memory"):
        out += ["", memory_table(data["memory"])]
    return "\n".join(out)


def memory_table(memory: list[dict[str, Any]]) -> str:
    rows = ["| pairs | longest text (tokens) | peak RSS MiB (reset after load) | RSS after model load MiB |", "| --- | --- | --- | --- |"]
    for m in memory:
        rows.append(f"| {m['pairs']} | {m.get('longest_text_tokens', '')} | {m['peak_rss_mib']:.0f} | {m['rss_after_load_mib']:.0f} |")
    return "\n".join(rows)


def extract_memory(data: dict[str, Any]) -> str:
    return f"**extract memory** ({_machine(data['machine'])})\n\n" + memory_table(data["memory"])


def load(data: dict[str, Any]) -> str:
    return (
        f"**load** ({_machine(data['machine'])}): `st.load_model` median {data['load_s_median']:.2f} s "
        f"(+ {data['import_s_median']:.2f} s importing torch/transformers/steering), {len(data['samples'])} fresh processes; "
        f"the one-time GGUF conversion that built the cache took {data['gguf_conversion_s']} s."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)
    for path in args.files:
        data = json.loads(path.read_text())
        print({"generate": generate, "extract": extract, "extract-memory": extract_memory, "load": load}[data["benchmark"]](data))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
