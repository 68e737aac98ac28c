"""Greedy texts from a fresh vLLM engine in its own process (the TP=3 check runs this).

Usage: python offline_run.py FOLDER TP MAX_TOKENS < {"prompts": [[ids...]], "steering": [...]}  -> JSON list of texts.
The front end reads its vectors folder from $STEERING_VECTORS, as under ``vllm serve``.
"""

from __future__ import annotations

import json
import sys

if __name__ == "__main__":  # vLLM spawns its engine: the guard keeps the child from re-running this
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    folder, tp, max_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    job = json.load(sys.stdin)
    tok = AutoTokenizer.from_pretrained(folder)
    llm = LLM(model=folder, dtype="float32", enforce_eager=True, tensor_parallel_size=tp, max_num_seqs=8, max_model_len=1024)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, extra_args={"steering": job["steering"]})
    outs = llm.generate([{"prompt_token_ids": ids} for ids in job["prompts"]], params, use_tqdm=False)
    print("RESULT " + json.dumps([tok.decode(o.outputs[0].token_ids, skip_special_tokens=True) for o in outs]), flush=True)
