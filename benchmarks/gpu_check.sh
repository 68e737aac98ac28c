#!/usr/bin/env bash
# The GPU check (issue 13), for a machine with one CUDA GPU; about 5-9 minutes, stopped at 9.
#
#   bash benchmarks/gpu_check.sh                  # SmolLM2 in bfloat16 on cuda:0
#   MODEL=path/to/hf-folder bash benchmarks/gpu_check.sh --dtype float16
#
# It needs a Python whose torch sees the GPU: `make install` pins the CPU wheel, so on the
# GPU machine install the CUDA build of the same torch version into the venv first, e.g.
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
# (or point PYTHON at an interpreter that has it, with this project installed: pip install -e .).
# Results: benchmarks/results/gpu-check-cuda-<time>.json (date, machine, GPU, versions), plus
# the generate-cuda-*.json and serve-<date>*.md files of the two benchmarks it runs.
# Extra arguments go to benchmarks/gpu_check.py (see --help), e.g. --parts parity,split.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device; install a CUDA build of torch (see the comment at the top)")
print(f"gpu_check: torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
PY
exec timeout --signal=INT 540 "$PY" benchmarks/gpu_check.py --device cuda --model "${MODEL:-smollm2-135m-instruct}" "$@"
