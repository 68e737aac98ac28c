"""Vectors between repeng and us, each side run by the real repeng 0.4.0.

repeng needs NumPy < 2, so it runs in the peers venv (``make peers``, i.e.
``benchmarks/setup_peers.sh``: the same torch and transformers as ours) through
``tests/repeng_peer.py``; without that venv these tests skip locally and fail under ``CI=true``.

- repeng trains a vector (``ControlVector.train``, layer ids with a negative one) and writes
  it (``export_gguf``); we import the file and `st.steer` at the same coefficient gives the
  greedy tokens repeng's ``ControlModel`` gives (fp32), and the same next-token logits.
- ours, written by `export_gguf`, loads in repeng (``ControlVector.import_gguf``) and its
  ``ControlModel`` gives the tokens of `st.steer`, layer 0 included (``llama_cpp=False``).

repeng's conventions, checked here rather than assumed: its layer id ``L`` reads
``hidden_states[L + 1]`` and wraps ``model.layers[L]``, adding ``coeff * direction`` to that
block's output (our layer ``L``); negative ids count from the end; its PCA directions are
unit vectors and its ``coeff`` multiplies them as our ``coef`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from real_resources import REPO_ROOT, missing
from tiny_models import NUM_LAYERS, make_tiny

import steering as st
from steering.interop import export_gguf, import_gguf
from steering.vectors.text import encode_prompt

PEERS_PYTHON = REPO_ROOT / "benchmarks" / ".venv-peers" / "bin" / "python"
PEER_SCRIPT = Path(__file__).resolve().parents[1] / "repeng_peer.py"

TINY_PAIRS = [
    ("I love sunny days at the beach", "I hate the cold and rainy winter mornings"),
    ("This movie was wonderful, happy and full of joy!", "That film was terrible, sad and boring."),
    ("Great job! Thanks for the help.", "Sorry, I don't know the answer to that question."),
    ("The weather is nice and warm", "The weather is cold and dark"),
    ("love, peace, friend, truth, light, good", "hate, war, enemy, lie, dark, bad"),
    ("She is proud, grateful and hopeful.", "She is angry, afraid and sad."),
]
TINY_PROMPTS = ["Once upon a time", "What is the capital of France?", "The weather is"]


def run_repeng(jobs: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """Run tests/repeng_peer.py on ``jobs`` in the peers venv (one process) and return its results."""
    if not PEERS_PYTHON.exists():
        missing(f"{PEERS_PYTHON} not found: run `make peers` (bash benchmarks/setup_peers.sh) for repeng 0.4.0")
    jobs_file, out = folder / "repeng_jobs.json", folder / "repeng_results.json"
    jobs_file.write_text(json.dumps(jobs), encoding="utf-8")
    # One torch thread: this process waits meanwhile, and on a loaded 2-core machine two spinning
    # OpenMP threads made SmolLM2 forwards ~10x slower (11 s vs 1.2 s for a 39-token prompt).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(PEERS_PYTHON), str(PEER_SCRIPT), str(jobs_file), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, f"repeng side failed:\n{done.stderr[-3000:]}"
    return list(json.loads(out.read_text(encoding="utf-8")))


@torch.no_grad()
def ours(model, prompts: list[list[int]], vector: st.SteeringVector, coef: float, max_new_tokens: int) -> dict[str, Any]:
    """Greedy tokens and next-token logits under `st.steer` (default backend), as the peer script asks repeng."""
    tokens, logits = [], []
    eos = model.config.eos_token_id
    with st.steer(model, vector, coef=coef):
        for prompt in prompts:
            ids = torch.tensor([prompt])
            logits.append(model(input_ids=ids).logits[0, -1])
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=eos
            )
            tokens.append(out[0, ids.shape[1] :].tolist())
    return {"tokens": tokens, "logits": torch.stack(logits)}


@torch.no_grad()
def plain_tokens(model, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    eos = model.config.eos_token_id
    outs = [model.generate(input_ids=torch.tensor([p]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=eos) for p in prompts]
    return [o[0, len(p) :].tolist() for o, p in zip(outs, prompts)]


def check_same(theirs: dict[str, Any], mine: dict[str, Any], plain: list[list[int]]) -> None:
    assert mine["tokens"] == theirs["tokens"]
    assert mine["tokens"] != plain, "the vector changes nothing here: the comparison would prove nothing"
    torch.testing.assert_close(mine["logits"], torch.tensor(theirs["logits"]), rtol=0, atol=1e-4)


# -------------------------------------------------------------- tiny Llama
TINY_COEF = {"repeng": 3.0, "ours": 1.5}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """The tiny Llama, our vector (layers 0 and 2, written for repeng) and repeng's two runs."""
    folder = tmp_path_factory.mktemp("repeng_tiny")
    model, tok = make_tiny("llama")
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    pairs = [st.ContrastPair(positive=p, negative=n) for p, n in TINY_PAIRS]
    vector = st.extract(model, tok, pairs, layers=[0, 2], method="mean_diff")
    export_gguf(vector, folder / "ours.gguf", llama_cpp=False)  # layer 0: for repeng only
    prompts = [tok(p)["input_ids"] for p in TINY_PROMPTS]
    job = {"model": str(folder / "model"), "prompts": prompts, "max_new_tokens": 12}
    trained, loaded = run_repeng(
        [
            {**job, "layers": [1, -1], "coef": TINY_COEF["repeng"], "train": {"pairs": TINY_PAIRS, "gguf": str(folder / "repeng.gguf")}},
            {**job, "layers": [0, 2], "coef": TINY_COEF["ours"], "load": str(folder / "ours.gguf")},
        ],
        folder,
    )
    return {"model": model, "folder": folder, "prompts": prompts, "vector": vector, "trained": trained, "loaded": loaded}


def test_repeng_trained_vector_steers_like_control_model(tiny) -> None:
    model, prompts, theirs = tiny["model"], tiny["prompts"], tiny["trained"]
    assert theirs["layer_ids"] == [1, NUM_LAYERS - 1]  # -1 is the last block
    vector = import_gguf(tiny["folder"] / "repeng.gguf", model)
    assert vector.layers == [1, NUM_LAYERS - 1] and vector.extra["model_hint"] == "llama"
    for direction in vector.directions.values():  # PCA components: unit vectors
        assert abs(direction.norm().item() - 1) < 1e-5
    check_same(theirs, ours(model, prompts, vector, TINY_COEF["repeng"], 12), plain_tokens(model, prompts, 12))


def test_our_vector_loads_in_repeng_and_steers_the_same(tiny) -> None:
    model, prompts, theirs, vector = tiny["model"], tiny["prompts"], tiny["loaded"], tiny["vector"]
    assert theirs["model_type"] == vector.model  # repeng reads our hint: the vector's model id
    check_same(theirs, ours(model, prompts, vector, TINY_COEF["ours"], 12), plain_tokens(model, prompts, 12))


# -------------------------------------------------------------- SmolLM2
SMOL_LAYERS = [-19, 12]  # -19 is block 11
SMOL_COEF = 6.0
SMOL_PROMPTS = st.load_lines("sentiment_eval_prompts.txt")[:3]
SMOL_TOKENS = 12


@pytest.mark.slow
def test_smollm2_repeng_vector_both_ways(smollm2, tmp_path: Path) -> None:
    """repeng's vector steers `st.steer` like ControlModel; ours steers ControlModel like `st.steer`."""
    model, tok = smollm2
    folder = st.models.model_cache_dir() / "smollm2-135m-instruct"
    if not (folder / "config.json").is_file():
        missing(f"{folder} has no converted SmolLM2 (st.load_model writes it)")
    pairs = st.load_pairs("sentiment")[:16]
    mine = st.extract(model, tok, pairs, layers=[11, 12])
    export_gguf(mine, tmp_path / "ours.gguf")
    prompts = [encode_prompt(tok, p) for p in SMOL_PROMPTS]
    texts = [[(p.prompt or "") + " " + p.positive, (p.prompt or "") + " " + p.negative] for p in pairs]
    job = {"model": str(folder), "prompts": prompts, "max_new_tokens": SMOL_TOKENS}
    trained, loaded = run_repeng(
        [
            {**job, "layers": SMOL_LAYERS, "coef": SMOL_COEF, "train": {"pairs": texts, "gguf": str(tmp_path / "repeng.gguf")}},
            {**job, "layers": [11, 12], "coef": 1.0, "load": str(tmp_path / "ours.gguf")},
        ],
        tmp_path,
    )
    vector = import_gguf(tmp_path / "repeng.gguf", model)
    assert trained["layer_ids"] == [11, 12] and vector.layers == [11, 12]
    plain = plain_tokens(model, prompts, SMOL_TOKENS)
    check_same(trained, ours(model, prompts, vector, SMOL_COEF, SMOL_TOKENS), plain)
    check_same(loaded, ours(model, prompts, mine, 1.0, SMOL_TOKENS), plain)
