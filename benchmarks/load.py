"""How long does loading a model take once its float32 cache exists? (Fresh process per run.)

Each run is a new Python process that imports ``steering`` and calls
``st.load_model`` on a registry name whose cache is built, timing the import
and the load separately. The one-time GGUF dequantisation that built the
cache is read back from the cache's marker file for comparison.

Example:
    flock /tmp/steering-heavy.lock .venv/bin/python benchmarks/load.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from _common import ROOT, machine_info, table, write_results

CHILD = """
import json, os, time
t0 = time.perf_counter()
import torch
torch.set_num_threads({threads})
import steering as st
t1 = time.perf_counter()
model, tok = st.load_model({model!r}, device={device!r})
t2 = time.perf_counter()
print("LOAD " + json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "loadavg": os.getloadavg()[0]}}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1]
    )
    p.add_argument("--quick", action="store_true", help="3 runs instead of 7")
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name (its cache must be built)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    runs = args.runs or (3 if args.quick else 7)
    sys.path.insert(0, str(ROOT))
    from steering.models import model_cache_dir

    marker = model_cache_dir() / args.model / "steering_cache.json"
    conversion = json.loads(marker.read_text()).get("conversion_seconds") if marker.is_file() else None
    code = CHILD.format(threads=args.threads, model=args.model, device=args.device)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    samples = []
    for k in range(runs + 1):  # the first run warms the page cache and is not counted
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("LOAD ")), None)
        if line is None:
            raise SystemExit(f"load run failed:\n{proc.stderr[-2000:]}")
        if k:
            samples.append(json.loads(line[5:]))
    load = statistics.median(s["load_s"] for s in samples)
    imp = statistics.median(s["import_s"] for s in samples)
    print(
        table(
            [[args.model, f"{imp:.2f}", f"{load:.2f}", str(len(samples)), "" if conversion is None else f"{conversion:.1f}"]],
            ["model", "import s (median)", "load_model s (median)", "runs", "one-time GGUF conversion s"],
        )
    )
    payload = {
        "benchmark": "load",
        "machine": machine_info(args.device, args.threads),
        "config": vars(args),
        "import_s_median": imp,
        "load_s_median": load,
        "samples": samples,
        "gguf_conversion_s": conversion,
    }
    if not args.no_save:
        print(f"results: {write_results('load' + ('-quick' if args.quick else ''), payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
