"""Data-parallel extraction: ``torchrun --nproc-per-node 2`` writes the one-process vector (gloo on CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny

import steering as st
from steering.vectors.distributed import data_parallel, is_main_process

SCRIPT = Path(__file__).with_name("dp_extract.py")
PAIRS = [  # with and without prompt, different lengths (batches pad); 9, so the two shares differ in size
    st.ContrastPair("I love this wonderful sunny day at the beach with my friends", "I hate it"),
    st.ContrastPair("good", "bad, terrible and boring in every possible way, really"),
    st.ContrastPair("Great job, thank you!", "Sorry.", "How did I do on the test today? Please tell me honestly"),
    st.ContrastPair("(A", "(B", "Pick one.\n(A) Yes\n(B) No"),
    st.ContrastPair("happy and excited", "sad", "Hi"),
    st.ContrastPair("The weather is nice and warm; the sky is blue.", "The weather is cold.", "Describe the weather"),
    st.ContrastPair("What a delight", "What a bore", "Review the film"),
    st.ContrastPair("yes, gladly", "no"),
    st.ContrastPair("A lovely, kind note", "A rude note", "Write a note to a neighbour"),
]


# Two CPU processes. accelerate 1.15 has no --multi_cpu flag: --multi_gpu starts torch.distributed.run
# (gloo on CPU here), while --cpu starts one process whatever --num_processes says.
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"],
}


def _torchrun(*args: str | Path, timeout: float = 600, launcher: str = "torchrun") -> None:
    """``torchrun --nproc-per-node 2`` (or ``accelerate launch``) of ``args`` (a script and its arguments, or ``-m module ...``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    extra = ["--mixed_precision", "no", "--dynamo_backend", "no"] if launcher == "accelerate" else []
    command = [*LAUNCHERS[launcher], *extra, *args]
    done = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def test_a_plain_process_is_not_data_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert data_parallel(torch.device("cpu")) is None and is_main_process()


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_write_the_one_process_vector(tmp_path: Path, launcher: str) -> None:
    model_dir = save_tiny(tmp_path / "tiny")
    pairs = PAIRS
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({k: v for k, v in dataclasses.asdict(p).items() if v is not None}) + "\n" for p in pairs))
    out = tmp_path / "out"
    out.mkdir()
    _torchrun(SCRIPT, model_dir, pairs_file, out, launcher=launcher)

    model, tok = st.load_model(model_dir)
    loaded = st.load_pairs(pairs_file)
    for method, read in (("mean_diff", "last"), ("pca_diff", "mean"), ("probe", "last")):
        alone = st.extract(model, tok, loaded, [0, 1], method=method, read=read, batch_size=2)
        spread = st.SteeringVector.load(out / f"{method}.safetensors", model)
        assert (spread.n_pairs, spread.dataset_sha256, spread.method, spread.read) == (9, alone.dataset_sha256, method, read)
        for layer in (0, 1):
            assert _cos(spread.directions[layer], alone.directions[layer]) >= 0.99999, (method, layer)
            torch.testing.assert_close(spread.directions[layer], alone.directions[layer], rtol=1e-4, atol=1e-5)
    one = st.SteeringVector.load(out / "one.safetensors", model)  # rank 1 had no pair at all
    alone = st.extract(model, tok, loaded[:1], [1])
    assert one.n_pairs == 1 and _cos(one.directions[1], alone.directions[1]) >= 0.99999
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    # each process ran its own share of the pairs: 5 + 4 for the CLI runs, 1 + 0 for the single pair
    assert [r["seen"] for r in ranks] == [[5, 5, 5, 1], [4, 4, 4, 0]]


@pytest.mark.slow
def test_two_processes_on_smollm2(smollm2, tmp_path: Path) -> None:
    """The README command on SmolLM2 (fewer pairs): the CLI under torchrun writes the one-process vector."""
    model, tok = smollm2
    pairs = st.load_pairs("sentiment")[:21]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({k: v for k, v in dataclasses.asdict(p).items() if v is not None}) + "\n" for p in pairs))
    out = tmp_path / "sentiment.safetensors"
    _torchrun(
        "-m",
        "steering.experiments.cli",
        "extract",
        "model=smollm2-135m-instruct",
        f"data={data}",
        "layers=[10,12]",
        "method=pca_diff",
        f"out={out}",
    )
    spread = st.SteeringVector.load(out, model)
    alone = st.extract(model, tok, st.load_pairs(data), [10, 12], method="pca_diff")
    assert (spread.n_pairs, spread.dataset_sha256) == (21, alone.dataset_sha256)
    for layer in (10, 12):
        assert _cos(spread.directions[layer], alone.directions[layer]) >= 0.99999
