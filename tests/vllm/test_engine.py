"""`VLLMEngine` on a stand-in for vLLM's ``LLMEngine``: events, stops, and admission by steering config."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from vllm_helpers import require_vllm

from steering.server.engine import Finished, GenerationRequest
from steering.server.text import Codec
from steering.vllm import engine as vllm_engine

pytestmark = pytest.mark.vllm  # no model, but it imports vLLM (~10 s)


class FakeLLM:
    """Emits token ``7`` per step per request until ``max_tokens``; records what it was given."""

    def __init__(self) -> None:
        self.live: dict[str, list[int]] = {}
        self.params: dict[str, Any] = {}
        self.concurrent: list[set[str]] = []
        self.lock = threading.Lock()

    def add_request(self, key: str, prompt: dict[str, Any], params: Any) -> None:
        self.live[key] = []
        self.params[key] = params

    def abort_request(self, keys: list[str]) -> None:
        for key in keys:
            self.live.pop(key, None)

    def step(self) -> list[Any]:
        configs = {str(self.params[k].extra_args) for k in self.live}
        self.concurrent.append(configs)
        outs = []
        for key, tokens in list(self.live.items()):
            tokens.append(7)
            done = len(tokens) >= self.params[key].max_tokens
            outs.append(SimpleNamespace(request_id=key, finished=done, outputs=[SimpleNamespace(token_ids=[7], finish_reason="length")]))
            if done:
                del self.live[key]
        return outs


class Tok:
    eos_token_id = 0

    def decode(self, ids: list[int], **kw: Any) -> str:
        return "".join("x" for _ in ids)


def request(vector: str | None, max_tokens: int = 3) -> GenerationRequest:
    terms = ({"vector": vector, "coef": 1.0},) if vector else ()
    return GenerationRequest((1, 2, 3), max_tokens, terms=terms)


def test_events_and_bounded_configs_in_flight() -> None:
    require_vllm()  # the engine builds vLLM SamplingParams
    fake = FakeLLM()
    engine = vllm_engine.VLLMEngine(fake, Codec(Tok(), [0]), torch.nn.Linear(1, 1), max_batch_size=8, max_configs=2).start()
    try:
        results: list[Finished] = []
        threads = [
            threading.Thread(target=lambda v=v: results.append(engine.generate(request(v), timeout=30)))
            for v in ("a", "b", "c", "a", None, "c")
        ]
        with engine.paused():  # all queued before the first admission
            for t in threads:
                t.start()
            while engine.load[1] < len(threads):
                threading.Event().wait(0.01)
        for t in threads:
            t.join(30)
        assert len(results) == 6 and all(r.text == "xxx" and r.finish_reason == "length" for r in results)
        # Never more than two distinct steering configs at once; "c" waited, unsteered did not.
        assert max(len(c - {"None"}) for c in fake.concurrent) == 2
        assert any("None" in c for c in fake.concurrent[:1])
        steered = [p for p in fake.params.values() if p.extra_args]
        assert {p.extra_args["steering"][0]["vector"] for p in steered} == {"a", "b", "c"}
    finally:
        engine.close()


def test_conditional_steering_is_refused_not_ignored() -> None:
    """A gated request would run unconditionally in vLLM: the engine answers 422 instead."""
    require_vllm()
    from steering.server.errors import APIError

    engine = vllm_engine.VLLMEngine(FakeLLM(), Codec(Tok(), [0]), torch.nn.Linear(1, 1), max_batch_size=8, max_configs=2).start()
    try:
        gated = GenerationRequest((1, 2, 3), 3, terms=({"vector": "a", "coef": 1.0},), gate=lambda model, ids: True)
        with pytest.raises(APIError, match="steering_condition") as err:
            engine.generate(gated, timeout=30)
        assert err.value.status == 422
        assert engine.generate(request("a"), timeout=30).text == "xxx"  # the engine keeps serving
    finally:
        engine.close()


def test_modes_the_workers_cannot_apply_are_refused_as_the_front_end_does() -> None:
    """clamp/angular/affine per request: 422 unsupported_mode with the front end's message, not unsteered tokens."""
    require_vllm()
    from steering.server.errors import APIError
    from steering.server.validate import mode_error
    from steering.vllm.frontend import VLLM_ENGINE, VLLM_MODES

    engine = vllm_engine.VLLMEngine(FakeLLM(), Codec(Tok(), [0]), torch.nn.Linear(1, 1), max_batch_size=8, max_configs=2).start()
    try:
        for mode in ("clamp", "angular", "affine_add", "affine_ablate"):
            terms = ({"vector": "a", "coef": 1.0}, {"vector": "b", "mode": mode})
            with pytest.raises(APIError) as err:
                engine.generate(GenerationRequest((1, 2, 3), 3, terms=terms), timeout=30)
            assert (err.value.status, err.value.code, err.value.param) == (422, "unsupported_mode", "steering[1].mode")
            assert err.value.message == mode_error("steering[1]", mode, VLLM_MODES, VLLM_ENGINE).message
            assert mode in err.value.message and "add, ablate" in err.value.message
        assert engine.generate(request("a"), timeout=30).text == "xxx"  # the engine keeps serving
    finally:
        engine.close()


def test_vllm_args_are_checked_before_anything_loads() -> None:
    """``vllm_args`` keys: EngineArgs fields only, and not the ones the serve command sets itself."""
    require_vllm()
    model, config = torch.nn.Linear(1, 1), None  # never reached: the keys are checked first
    with pytest.raises(ValueError, match=r"vllm_args.max_num_seqs: set by the serve command; use max_batch_size="):
        vllm_engine.vllm_engine_factory("folder", model, config, options={"max_num_seqs": 4})
    with pytest.raises(ValueError, match=r"vllm_args.enforce_eagr: not a field of vllm.EngineArgs; did you mean enforce_eager\?"):
        vllm_engine.vllm_engine_factory("folder", model, config, options={"enforce_eagr": True})
