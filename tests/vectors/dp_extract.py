"""Run by ``torchrun --nproc-per-node 2`` in test_distributed.py: data-parallel extraction, CLI and library.

Usage: dp_extract.py MODEL_DIR PAIRS_JSONL OUT_DIR. Writes the CLI's vectors
(rank 0 only), the library's vector of one pair (one process gets none), and
each rank's pair count before the reduction (``rank<r>.json``).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

import steering as st
from steering.experiments.cli import main

model_dir, pairs_file, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
seen: list[int] = []
extract = importlib.import_module("steering.vectors.extract")  # the module; the package exports the function by that name
reduce = extract.reduce_stats


def counting(stats, shard):  # the pairs this process ran, before the sums are added up
    seen.append(next(iter(stats.values())).n)
    reduce(stats, shard)


extract.reduce_stats = counting
for method, read in (("mean_diff", "last"), ("pca_diff", "mean"), ("probe", "last")):
    args = [f"model={model_dir}", f"data={pairs_file}", "layers=[0,1]", f"method={method}", f"read={read}", "batch_size=2"]
    code = main(["extract", *args, f"out={out / f'{method}.safetensors'}"])
    assert code == 0, code
model, tok = st.load_model(model_dir)
one = st.extract(model, tok, st.load_pairs(pairs_file)[:1], [1], method="mean_diff")
if dist.get_rank() == 0:
    one.save(out / "one.safetensors")
(out / f"rank{dist.get_rank()}.json").write_text(json.dumps({"seen": seen, "world": dist.get_world_size()}))
dist.destroy_process_group()
