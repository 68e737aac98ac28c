"""The engine's lifecycle: shutdown during a pass, timeouts that cancel, hooks only while rows need them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from helpers import hook_count
from server_helpers import tiny_vector, wait_until
from tiny_models import make_tiny

from steering.server import Codec, Engine, GenerationRequest, Term, build_row_deltas
from steering.server.engine import EngineClosed, Event, Failed, Finished


def _cancelled(engine: Engine) -> float:
    return engine.metrics.generations.labels(finish_reason="cancelled")._value.get()


@pytest.fixture
def tiny() -> tuple[torch.nn.Module, Any]:
    return make_tiny("llama")


@pytest.fixture
def engine(tiny) -> Iterator[Engine]:
    model, tok = tiny
    engine = Engine(model, Codec(tok, []), max_batch_size=4).start()  # no EOS: rows run to max_tokens
    try:
        yield engine
    finally:
        engine.close()


def _request(tok: Any, max_tokens: int, *terms: Term, prompt: str = "Hello there") -> GenerationRequest:
    return GenerationRequest(tuple(tok(prompt)["input_ids"]), max_tokens, steering=build_row_deltas(terms))


def _gate_decode_passes(model: torch.nn.Module) -> tuple[threading.Event, threading.Event]:
    """Make every decode pass (one token per row) wait for ``release``; ``inside`` is set when one does."""
    inside, release = threading.Event(), threading.Event()
    forward = model.forward

    def gated(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[1] == 1:
            inside.set()
            release.wait(120)
        return forward(*args, **kwargs)

    model.forward = gated
    return inside, release


def test_close_that_times_out_leaves_a_live_pass_its_state(tiny) -> None:
    model, tok = tiny
    baseline = hook_count(model)
    engine = Engine(model, Codec(tok, []), max_batch_size=4).start()
    inside, release = _gate_decode_passes(model)
    events: list[Event] = []
    try:
        engine.submit([_request(tok, 50, Term(tiny_vector(1, [1]), 2.0, (1,)))], [events.append])
        assert inside.wait(60), "no decode pass started"
        assert engine.close(timeout=0.2) is False  # the pass is still running
        # Nothing was torn down under the pass: its hooks, row and cache are all there.
        assert hook_count(model) > baseline
        assert len(engine._running) == 1 and not any(isinstance(e, Failed) for e in events)
    finally:
        release.set()
    wait_until(lambda: engine._thread is not None and not engine._thread.is_alive(), "the engine thread to stop")
    assert isinstance(events[-1], Failed) and isinstance(events[-1].error, EngineClosed)
    assert hook_count(model) == baseline and engine.load == (0, 0)
    assert engine.close() is True  # idempotent


def test_close_fails_waiting_requests_and_refuses_new_ones(tiny) -> None:
    model, tok = tiny
    engine = Engine(model, Codec(tok, []), max_batch_size=4).start()
    events: list[Event] = []
    with engine.paused():
        engine.submit([_request(tok, 5)], [events.append])
        assert engine.close() is True
    assert [type(e) for e in events] == [Failed] and engine.load == (0, 0)
    with pytest.raises(EngineClosed):
        engine.submit([_request(tok, 5)], [events.append])


def test_generate_timeout_cancels_the_request(engine: Engine, tiny) -> None:
    model, tok = tiny
    with engine.paused():  # still waiting when the timeout strikes
        with pytest.raises(TimeoutError, match="cancelled"):
            engine.generate(_request(tok, 5), timeout=0.05)
        assert engine.load == (0, 0)

    forward = model.forward

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.01)
        return forward(*args, **kwargs)

    model.forward = slow
    before = _cancelled(engine)
    with pytest.raises(TimeoutError):  # mid-decode: 400 tokens take seconds
        engine.generate(_request(tok, 400), timeout=0.2)
    wait_until(lambda: engine.load == (0, 0), "the timed-out row to leave the batch")
    assert _cancelled(engine) == before + 1
    assert engine.metrics.generations.labels(finish_reason="length")._value.get() == 0


def test_hooks_live_only_while_a_row_needs_them(engine: Engine, tiny) -> None:
    model, tok = tiny
    baseline = hook_count(model)
    up, pre = tiny_vector(1, [1, 2]), tiny_vector(3, [2], site="block_input")
    short = _request(tok, 3, Term(pre, 1.0, (2,)))
    long = _request(tok, 40, Term(up, 1.0, (1, 2)))
    done: list[Finished] = []
    inside, release = _gate_decode_passes(model)
    try:
        engine.submit([short, long], [lambda e: done.append(e) if isinstance(e, Finished) else None] * 2)
        assert inside.wait(60)
        assert engine._steering.hooked == [("block_input", 2), ("block_output", 1), ("block_output", 2)]
    finally:
        release.set()
    wait_until(lambda: len(done) == 2 and engine.load == (0, 0), "both rows to finish")
    wait_until(lambda: hook_count(model) == baseline, "the steering hooks to be removed")
    assert engine._steering.hooked == []
    plain = engine.generate(_request(tok, 4), timeout=60)
    steered = engine.generate(_request(tok, 4, Term(up, 4.0, (1, 2))), timeout=60)  # hooks come back when needed
    assert steered.token_ids != plain.token_ids
    wait_until(lambda: hook_count(model) == baseline, "the steering hooks to be removed again")


def test_a_started_engine_refuses_folds_from_other_threads(tiny) -> None:
    """Its rows steer through hooks on the shared model; a fold would leak into every row."""
    import steering as st

    model, tok = tiny
    vec = tiny_vector(0, [1])
    engine = Engine(model, Codec(tok, []), max_batch_size=2).start()
    try:
        with pytest.raises(st.SteeringError, match="shared by server engine"):
            st.attach(model, vec, coef=1.0, backend="fold")
        with pytest.warns(RuntimeWarning), st.steer(model, vec, coef=1.0, backend="auto") as group:
            assert len(group) > 0  # hooks instead of a fold
    finally:
        engine.close()
    with st.steer(model, vec, coef=1.0, backend="fold"):  # closed: the model is free again
        pass
