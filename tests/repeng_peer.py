"""The repeng side of tests/steering/test_repeng.py, run by benchmarks/.venv-peers/bin/python.

repeng 0.4.0 needs NumPy < 2 (``np.float_`` in its signatures), so it lives in the peers
venv (``benchmarks/setup_peers.sh``: the same torch and transformers as ours) and this
script is its whole part: no ``steering`` import, only repeng, torch and transformers.

    python tests/repeng_peer.py jobs.json results.json

``jobs.json`` is a list of jobs, run in one process (importing torch takes a while): each has
``model`` (a Hugging Face folder), ``layers`` (repeng layer ids, negative allowed), ``coef``,
``prompts`` (token-id lists), ``max_new_tokens``, and either ``train`` (``{"pairs":
[[positive, negative], ...], "gguf": path}``: ``ControlVector.train`` then ``export_gguf``)
or ``load`` (a GGUF path for ``ControlVector.import_gguf``). ``results.json`` gets, per job,
the greedy continuation of each prompt under ``ControlModel.set_control(vector, coef)``, the
next-token logits of each prompt, the normalised layer ids and the vector's model hint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from repeng import ControlModel, ControlVector, DatasetEntry
from transformers import AutoModelForCausalLM, AutoTokenizer


def run(job: dict[str, Any], models: dict[str, Any]) -> dict[str, Any]:
    if job["model"] not in models:
        models[job["model"]] = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32, local_files_only=True).eval()
    model = models[job["model"]]
    if "train" in job:
        tokenizer = AutoTokenizer.from_pretrained(job["model"], local_files_only=True)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        dataset = [DatasetEntry(positive=p, negative=n) for p, n in job["train"]["pairs"]]
        vector = ControlVector.train(model, tokenizer, dataset, hidden_layers=job["layers"], method="pca_diff")
        vector.export_gguf(job["train"]["gguf"])
    else:
        vector = ControlVector.import_gguf(job["load"])
    controlled = ControlModel(model, job["layers"])
    try:
        controlled.set_control(vector, job["coef"])
        tokens, logits = [], []
        with torch.no_grad():
            for prompt in job["prompts"]:
                ids = torch.tensor([prompt])
                logits.append(controlled(input_ids=ids).logits[0, -1].tolist())
                out = controlled.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=job["max_new_tokens"],
                    do_sample=False,
                    pad_token_id=model.config.eos_token_id,
                )
                tokens.append(out[0, ids.shape[1] :].tolist())
        return {"tokens": tokens, "logits": logits, "layer_ids": controlled.layer_ids, "model_type": vector.model_type}
    finally:
        controlled.unwrap()  # the next job may use the same model


def main(jobs_path: str, results_path: str) -> None:
    jobs = json.loads(Path(jobs_path).read_text(encoding="utf-8"))
    torch.manual_seed(0)
    models: dict[str, Any] = {}
    results = [run(job, models) for job in jobs]
    Path(results_path).write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
