"""The vLLM plugin on SmolLM2 (fp32, CPU) against the HF path, offline and over HTTP.

One offline ``LLM`` serves the whole module, its engine core in this process (a start in
seconds); each HTTP server (vLLM's own, ``steering serve engine=vllm``) and the TP=3 engine
start once, in their one test, with vLLM's usual processes (~30 s or more each).
References are computed here, independently, with `st.generate` / `st.steer`
on the transformers model: tokens of 8 held-out prompts x 40 greedy tokens,
and prompt log-probs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from vllm_helpers import HTTP_TOKENS, LAYERS, MAX_TOKENS, free_port, require_vllm, start_server, stop

import steering as st
from steering.server import APIError, ServerConfig, VectorStore
from steering.server.validate import check_terms
from steering.vectors.text import encode_prompt
from steering.vllm.frontend import VLLM_ENGINE, VLLM_MODES, parse_terms

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

MODEL = "smollm2-135m-instruct"


def term(vector: str = "sentiment", **kw: Any) -> dict[str, Any]:
    return {"vector": vector, "layers": LAYERS, **kw}


@pytest.fixture(scope="module")
def folder() -> str:
    from steering.models import hf_folder

    return str(hf_folder(MODEL)[0])


@pytest.fixture(scope="module")
def llm(smollm2, vector_dir: Path, folder: str) -> Iterator[Any]:
    vllm = require_vllm()
    from steering.vllm.frontend import Frontend, install_frontend

    # The front end checks vectors against the HF model already loaded (as `steering serve` does).
    install_frontend(folder, Frontend.for_model(smollm2[0], ServerConfig(vectors_dir=vector_dir)))
    # The engine core in this process: a start takes seconds instead of the ~30 s of spawning
    # the core and worker processes. The HTTP servers and TP=3 below run vLLM's usual processes.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        engine = vllm.LLM(
            model=folder,
            dtype="float32",
            enforce_eager=True,
            max_num_seqs=16,
            block_size=32,
            max_model_len=1024,
            enable_prefix_caching=True,
        )
    yield engine
    del engine


def run(llm: Any, tok: Any, prompts: list[str], steering: list[Any], max_tokens: int = MAX_TOKENS) -> list[str]:
    """Greedy texts from vLLM, the prompts chat-templated as `st.generate` does, decoded as it does."""
    from vllm import SamplingParams

    params = [SamplingParams(temperature=0.0, max_tokens=max_tokens, extra_args={"steering": s} if s else None) for s in steering]
    inputs = [{"prompt_token_ids": encode_prompt(tok, p)} for p in prompts]
    outs = llm.generate(inputs, params, use_tqdm=False)
    return [tok.decode(o.outputs[0].token_ids, skip_special_tokens=True) for o in outs]


def agree(a: list[str], b: list[str]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def unsteered(llm, smollm2, prompts) -> dict[str, Any]:
    model, tok = smollm2
    hf = st.generate(model, tok, prompts, max_new_tokens=MAX_TOKENS)
    ours = run(llm, tok, prompts, [None] * len(prompts))
    return {"hf": hf, "vllm": ours, "agree": agree(hf, ours)}


@pytest.fixture(scope="module")
def sentiment(vector_dir: Path) -> st.SteeringVector:
    return st.SteeringVector.load(vector_dir / "sentiment.safetensors")


def test_unsteered_agree_with_hf(unsteered) -> None:
    # The baseline the steered runs are held to (kernels differ: one prompt may diverge late).
    assert unsteered["agree"] >= 6, (unsteered["hf"], unsteered["vllm"])


@pytest.mark.parametrize("coef", [4.0, -4.0, 0.0])
def test_add_matches_hf(llm, smollm2, prompts, sentiment, unsteered, coef: float) -> None:
    model, tok = smollm2
    # coef 0 is exactly the unsteered run on the HF side (st.generate's contract): not run again.
    hf = st.generate(model, tok, prompts, sentiment, coef, max_new_tokens=MAX_TOKENS) if coef else unsteered["hf"]
    ours = run(llm, tok, prompts, [[term(coef=coef)]] * len(prompts))
    assert agree(hf, ours) >= unsteered["agree"], list(zip(hf, ours))
    if coef:
        assert agree(ours, unsteered["vllm"]) <= len(prompts) // 2, "steering changed too little"
    else:
        assert ours == unsteered["vllm"]


@pytest.mark.parametrize("apply_to", ["prompt", "generated"])
def test_apply_to_matches_hf(llm, smollm2, prompts, sentiment, unsteered, apply_to: str) -> None:
    model, tok = smollm2
    hf = st.generate(model, tok, prompts, sentiment, 4.0, apply_to=apply_to, max_new_tokens=MAX_TOKENS)
    ours = run(llm, tok, prompts, [[term(coef=4.0, apply_to=apply_to)]] * len(prompts))
    assert agree(hf, ours) >= unsteered["agree"], list(zip(hf, ours))
    assert ours != unsteered["vllm"]


def test_old_positions_name_is_accepted(llm, smollm2, prompts) -> None:
    # As in the HF server's schema: accepted, marked deprecated in the schema, same meaning.
    _, tok = smollm2
    old = run(llm, tok, prompts[:2], [[term(coef=4.0, positions="generated")]] * 2)
    assert old == run(llm, tok, prompts[:2], [[term(coef=4.0, apply_to="generated")]] * 2)


def test_ablation_matches_hf(llm, smollm2, prompts, sentiment, unsteered) -> None:
    model, tok = smollm2
    hf = st.generate(model, tok, prompts, sentiment, mode="ablate", max_new_tokens=MAX_TOKENS)
    ours = run(llm, tok, prompts, [[term(mode="ablate")]] * len(prompts))
    assert agree(hf, ours) >= unsteered["agree"], list(zip(hf, ours))


def hf_prompt_logprobs(model: Any, ids: list[int], vector: st.SteeringVector | None, **steer: Any) -> torch.Tensor:
    """Log-prob of each prompt token after the first, under ``st.steer`` (the reference)."""
    from contextlib import nullcontext

    context = st.steer(model, vector, **steer) if vector is not None else nullcontext()
    with torch.no_grad(), context:
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def vllm_prompt_logprobs(llm: Any, ids: list[int], steering: list[Any] | None) -> torch.Tensor:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, extra_args={"steering": steering} if steering else None)
    (out,) = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
    return torch.tensor([entry[tok].logprob for entry, tok in zip(out.prompt_logprobs[1:], ids[1:], strict=True)])


@pytest.mark.parametrize(
    ("steering", "steer"),
    [
        ([term(coef=4.0)], {"coef": 4.0}),
        ([term(mode="ablate")], {"mode": "ablate"}),
        ([term(coef=-4.0, apply_to="prompt")], {"coef": -4.0, "apply_to": "prompt"}),
    ],
    ids=["add", "ablate", "prompt-only"],
)
def test_prompt_logprobs_match_hf(llm, smollm2, prompts, sentiment, steering: list[Any], steer: dict[str, Any]) -> None:
    model, tok = smollm2
    ids = encode_prompt(tok, prompts[0])
    ours = vllm_prompt_logprobs(llm, ids, steering)
    reference = hf_prompt_logprobs(model, ids, sentiment, **steer)
    plain = hf_prompt_logprobs(model, ids, None)
    assert (ours - reference).abs().max().item() < 1e-3
    assert (reference - plain).abs().max().item() > 1e-2, "the steering must change the log-probs for this check to mean anything"


MIXED = [
    None,
    [term(coef=4.0)],
    [term(coef=-4.0)],
    [term("refusal", mode="ablate")],
    [term(coef=4.0, apply_to="generated")],
    [term("refusal", coef=4.0, apply_to="prompt")],
    [term(coef=2.0), term("refusal", coef=-2.0)],
    [{"vector": "sentiment", "coef": 6.0, "layers": [12]}],
]


def test_mixed_batch_gives_each_request_its_own_tokens(llm, smollm2, prompts) -> None:
    _, tok = smollm2
    alone = [run(llm, tok, [p], [s])[0] for p, s in zip(prompts, MIXED, strict=True)]
    together = run(llm, tok, prompts, MIXED)
    assert together == alone


def test_prefix_cache_never_crosses_steering(llm, smollm2, prompts) -> None:
    """A prompt of several 32-token blocks, run unsteered and steered in turns: each equals its run on an empty cache."""
    _, tok = smollm2
    long = [" ".join(prompts) + " " + prompts[0]]
    steered = [[term(coef=4.0)]]
    llm.reset_prefix_cache()
    fresh_steered = run(llm, tok, long, steered)
    llm.reset_prefix_cache()
    fresh_plain = run(llm, tok, long, [None])
    assert fresh_plain != fresh_steered
    assert run(llm, tok, long, steered) == fresh_steered  # the plain blocks are cached now
    assert run(llm, tok, long, [None]) == fresh_plain  # and now the steered ones too
    assert run(llm, tok, long, steered) == fresh_steered  # its own blocks: reused


BAD = [
    ([{"vector": "nope"}], "steering[0].vector"),
    ([{"vector": "narrow"}], "steering[0].vector"),
    ([{"vector": "sentiment", "coef": 1e6}], "steering[0].coef"),
    ([{"vector": "sentiment", "layers": [99]}], "steering[0].layers"),
    ([{"vector": "sentiment", "mode": "ablate", "coef": 2.0}], "steering[0].coef"),
    ([{"vector": "sentiment", "coef": "strong"}], "steering[0].coef"),
    ([{"vector": "sentiment", "apply_to": "everywhere"}], "steering[0].apply_to"),
    ([{"vector": "sentiment", "mode": "clamp", "coef": 2.0}], "steering[0].mode"),
]


def expected_error(smollm2, vector_dir: Path, steering: Any) -> APIError:
    """The error our HF server's validation gives for ``steering``."""
    store = VectorStore(vector_dir, smollm2[0])
    with pytest.raises(APIError) as info:
        check_terms(parse_terms(steering), ServerConfig(vectors_dir=vector_dir), store, 30, modes=VLLM_MODES, engine=VLLM_ENGINE)
    return info.value


@pytest.mark.parametrize(("steering", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_input_is_refused_like_our_server(llm, smollm2, vector_dir, steering: Any, field: str) -> None:
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    expected = expected_error(smollm2, vector_dir, steering)
    assert expected.param == field
    params = SamplingParams(max_tokens=4, extra_args={"steering": steering})
    with pytest.raises(VLLMValidationError) as info:
        llm.generate([{"prompt_token_ids": [1, 2, 3]}], params, use_tqdm=False)
    assert info.value.parameter == field
    assert str(info.value).startswith(expected.message)
    assert run(llm, smollm2[1], ["Hello."], [[term(coef=1.0)]], max_tokens=2)  # the engine is fine


def test_more_configs_than_slots_wait_in_vllms_queue(llm, smollm2, prompts) -> None:
    """The admission bound: 36 distinct configs in one call, more than the module's ``max_num_seqs=16`` (16 slot pairs).

    The worker tables hold the config of each *scheduled* request; vLLM's scheduler runs at
    most ``max_num_seqs`` requests a step and keeps the rest waiting, so no request fails
    and each still gets the tokens it gets alone (finished configs' slots are reused).
    """
    _, tok = smollm2
    n = 36
    steering = [[term("sentiment" if i % 2 else "refusal", coef=0.25 * (i + 1))] for i in range(n)]
    asks = [prompts[i % len(prompts)] for i in range(n)]
    together = run(llm, tok, asks, steering, max_tokens=4)
    alone = [run(llm, tok, [p], [s], max_tokens=4)[0] for p, s in zip(asks, steering, strict=True)]
    assert together == alone
    assert len(set(together)) > len(prompts), "the coefs must tell the requests apart for this check to mean anything"


# --------------------------------------------------------------------------- HTTP


@pytest.fixture(scope="module")
def offline_chat(llm, smollm2, prompts) -> dict[str, str]:
    """Offline texts the HTTP runs must give: unsteered and sentiment +4 on prompt 0."""
    _, tok = smollm2
    plain, steered = run(llm, tok, [prompts[0]] * 2, [None, [term(coef=4.0)]], max_tokens=HTTP_TOKENS)
    assert plain != steered
    return {"plain": plain, "steered": steered}


def test_vllm_openai_server_with_the_plugin(offline_chat, folder, vector_dir, prompts, tmp_path) -> None:
    """vLLM's own OpenAI server, started as the README says (the CPU wheel's ``vllm`` CLI cannot start: see README)."""
    from openai import BadRequestError, OpenAI

    port = free_port()
    env = {**os.environ, "STEERING_VECTORS": str(vector_dir), "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--port", str(port)]
    cmd += ["--dtype", "float32", "--enforce-eager", "--max-num-seqs", "8", "--max-model-len", "1024"]
    proc = start_server(cmd, env, f"http://127.0.0.1:{port}", tmp_path / "vllm-serve.log")
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        messages = [{"role": "user", "content": prompts[0]}]

        def chat(steering: Any | None) -> str:
            extra = {"vllm_xargs": {"steering": json.dumps(steering)}} if steering is not None else None
            reply = client.chat.completions.create(model=folder, messages=messages, max_tokens=HTTP_TOKENS, temperature=0, extra_body=extra)  # type: ignore[arg-type]
            return reply.choices[0].message.content or ""

        assert chat([term(coef=4.0)]) == offline_chat["steered"]
        assert chat(None) == offline_chat["plain"]
        with pytest.raises(BadRequestError) as info:
            chat([{"vector": "nope"}])
        assert "unknown vector 'nope'" in str(info.value) and "steering[0].vector" in str(info.value)
        with pytest.raises(BadRequestError) as info:
            chat([{"vector": "sentiment", "layers": [99]}])
        assert "steering[0].layers" in str(info.value)
        assert chat([term(coef=4.0)]) == offline_chat["steered"]  # still serving
    finally:
        stop(proc)


def test_steering_serve_engine_vllm(offline_chat, smollm2, vector_dir, prompts, tmp_path) -> None:
    """``steering serve engine=vllm`` as the README writes it: the HF engine's request schema, statuses and messages."""
    from openai import NotFoundError, OpenAI, UnprocessableEntityError

    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [str(Path(sys.executable).with_name("steering")), "serve", "engine=vllm", f"model={MODEL}", f"vectors={vector_dir}"]
    cmd += [f"port={port}", "default_temperature=0", "vllm_args={enforce_eager:true,max_model_len:1024}"]
    proc = start_server(cmd, env, f"http://127.0.0.1:{port}", tmp_path / "steering-serve.log")
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        messages = [{"role": "user", "content": prompts[0]}]

        def chat(steering: Any | None) -> str:
            extra = {"steering": steering} if steering is not None else None
            reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=HTTP_TOKENS, extra_body=extra)  # type: ignore[arg-type]
            return reply.choices[0].message.content or ""

        assert chat([term(coef=4.0)]) == offline_chat["steered"]
        assert chat(None) == offline_chat["plain"]
        with pytest.raises(NotFoundError) as missing:
            chat([{"vector": "nope"}])
        assert missing.value.body["code"] == "vector_not_found"  # type: ignore[index]
        for bad, field in BAD[1:4]:
            expected = expected_error(smollm2, vector_dir, bad)
            with pytest.raises(UnprocessableEntityError) as info:
                chat(bad)
            assert info.value.body["param"] == field and info.value.body["message"] == expected.message  # type: ignore[index]
        assert chat([term(coef=4.0)]) == offline_chat["steered"]
    finally:
        stop(proc)


# --------------------------------------------------------------------------- tensor parallel


@pytest.mark.tp
def test_tensor_parallel_3_gives_the_steered_tokens_of_tp_1(llm, smollm2, prompts, vector_dir, folder, tmp_path) -> None:
    """TP=3 (SmolLM2's 9 heads split 3 ways) on 2 cores: the threads of ranks 0 and 2 share core 0."""
    _, tok = smollm2
    steering = [term(coef=4.0)]
    expected = run(llm, tok, prompts, [steering] * len(prompts))
    env = {**os.environ, "STEERING_VECTORS": str(vector_dir), "VLLM_CPU_OMP_THREADS_BIND": "0|1|0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    job = json.dumps({"prompts": [encode_prompt(tok, p) for p in prompts], "steering": steering})
    script = Path(__file__).with_name("offline_run.py")
    done = subprocess.run(
        [sys.executable, str(script), folder, "3", str(MAX_TOKENS)], input=job, env=env, capture_output=True, text=True, timeout=900
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    assert json.loads(lines[-1][len("RESULT ") :]) == expected
