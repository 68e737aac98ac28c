"""lm-evaluation-harness (the real one, from PyPI) runs our exported vector in its ``steered`` model:
per-item log-likelihoods on a local two-choice MMLU task equal `st.steer`'s within 1e-4, for
``add`` (its ``add`` action) and ``ablate`` (its ``clamp`` action to 0)."""

from __future__ import annotations

import os

import pytest
import torch
from real_resources import REPO_ROOT, missing, shared_data
from tiny_models import make_tiny

import steering as st
from steering.interop import export_lm_eval, lm_eval_hookpoint
from steering.vectors import VectorFileError

N_ITEMS = 12
COEF = 4.0

TASK_FOLDER = REPO_ROOT / "docs" / "lm_eval"  # steering_mmlu2.yaml, the README's task: data path relative to the repo root


def loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log P(continuation | context), split into tokens the way the harness' HFLM does (no BOS)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok.encode(context + continuation, add_special_tokens=False)
    n_context = len(tok.encode(context, add_special_tokens=False))
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
    targets = ids[0, n_context:]
    return float(logprobs[n_context - 1 :].gather(1, targets[:, None]).sum())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["add", "ablate"])
def test_lm_eval_steered_model_matches_st_steer(tmp_path, monkeypatch, smollm2, mode):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        missing("lm-eval is not installed: pip install lm-eval==0.4.13 (a dev dependency)")
    from steering.models import model_cache_dir

    model, tok = smollm2
    folder = model_cache_dir() / "smollm2-135m-instruct"  # the float32 safetensors folder st.load_model reads
    assert (folder / "config.json").is_file()
    vector = st.extract(model, tok, st.load_pairs("sentiment")[:16], layers=[8, 12])
    steer_file = export_lm_eval(vector, tmp_path / "happy.pt", model, coef=COEF, mode=mode)
    shared_data("caa", "test", "mmlu", "mmlu.json")  # the task's data, missing: skip, or fail under CI=true
    monkeypatch.chdir(REPO_ROOT)

    results = lm_eval.simple_evaluate(
        model="steered",
        model_args={"pretrained": str(folder), "steer_path": str(steer_file), "dtype": "float32", "add_bos_token": False},
        tasks=["steering_mmlu2"],
        task_manager=TaskManager(include_path=str(TASK_FOLDER)),
        device="cpu",
        batch_size=1,
        limit=N_ITEMS,
        log_samples=True,
    )
    samples = results["samples"]["steering_mmlu2"]
    assert len(samples) == N_ITEMS
    requests = [(args, response[0][0]) for sample in samples for args, response in zip(sample["arguments"], sample["resps"])]
    theirs = [loglik for _, loglik in requests]
    unsteered = [loglikelihood(model, tok, *args) for args, _ in requests]
    with st.steer(model, vector, COEF, mode=mode):
        ours = [loglikelihood(model, tok, *args) for args, _ in requests]
    assert len(theirs) == 2 * N_ITEMS
    gap = max(abs(a - b) for a, b in zip(theirs, ours))
    moved = max(abs(a - b) for a, b in zip(theirs, unsteered))
    print(f"{mode}: lm-eval vs st.steer: max |dlogp| {gap:.2e}; steered vs unsteered: max {moved:.3f}")
    assert gap < 1e-4
    assert moved > 0.01


def test_lm_eval_file_layout(tmp_path):
    """The file holds what hf_steered.py reads: hookpoints under base_model, add / clamp, one vector each."""
    model, _ = make_tiny("llama")
    from helpers import random_vector

    vector = random_vector(model, [0, 2])
    config = torch.load(export_lm_eval(vector, tmp_path / "v.pt", model, coef=2.5), weights_only=True)
    assert sorted(config) == ["layers.0", "layers.2"]
    assert all(dict(model.base_model.named_modules())[name] is st.decoder_layers(model)[int(name[7:])] for name in config)
    assert config["layers.2"]["action"] == "add" and config["layers.2"]["steering_coefficient"] == 2.5
    assert torch.equal(config["layers.2"]["steering_vector"], vector.directions[2])
    ablate = torch.load(export_lm_eval(vector, tmp_path / "a.pt", model, mode="ablate"), weights_only=True)
    assert {(c["action"], c["steering_coefficient"]) for c in ablate.values()} == {("clamp", 0.0)}
    assert lm_eval_hookpoint(model, 1, "mlp_output") == "layers.1.mlp"
    assert lm_eval_hookpoint(model, 2, "block_input") == "layers.1"
    with pytest.raises(VectorFileError, match="block_input of layer 0"):
        lm_eval_hookpoint(model, 0, "block_input")
    with pytest.raises(VectorFileError, match=r"\.pt or \.pth"):
        export_lm_eval(vector, tmp_path / "v.safetensors", model)


def test_convert_command_writes_lm_eval(tmp_path, capsys):
    from helpers import random_vector
    from tiny_models import save_tiny

    from steering.experiments.cli import main

    source = save_tiny(tmp_path / "tiny")
    model, _ = st.load_model(str(source))
    path = random_vector(model, [1, 2]).save(tmp_path / "v.safetensors")
    out = tmp_path / "v.pt"
    args = ["convert", f"input={path}", f"out={out}", "format=lm-eval", f"model={source}", "coef=3", "layers=[2]"]
    assert main(args) == 0, capsys.readouterr().err
    config = torch.load(out, weights_only=True)
    assert list(config) == ["layers.2"] and config["layers.2"]["steering_coefficient"] == 3.0
    assert main([*args[:-3], "format=caa"]) == 1
    assert "unknown format" in capsys.readouterr().err
    assert os.path.exists(out)
