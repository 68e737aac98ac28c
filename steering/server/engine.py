"""`Engine`: continuous batching of steered generation on a stock transformers model.

One scheduler thread owns the model; nothing else runs it. Each loop turn it

1. admits waiting requests while the batch has free rows, and *prefills each
   one alone* (a batch of one, no padding, its prompt-phase steering), picks
   its first token, and joins its cache to the running batch (`KVBatch.join`);
2. runs one *decode pass* for all running rows together, each row feeding its
   last token at its own absolute position with its own generated-phase
   steering (`RowSteering`), and picks every row's next token with the row's
   own sampler;
3. sends text deltas to each request's sink, and drops rows that finished
   (EOS, a stop sequence, ``max_tokens``) or were cancelled.

Requests therefore join and leave between decode passes. A row's result does
not depend on its neighbours: its prefill is the solo computation, and in a
decode pass padding is masked, positions are per row, and unsteered rows get a
zero delta (an exact no-op). Greedy outputs of a request in a mixed batch are
the same tokens as the request alone, which the tests check.

Sinks are called on the scheduler thread and must not block (the HTTP layer
hands events to its event loop with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from steering.hooks import HookGroup, SteeringError, input_device
from steering.hooks.fold import share
from steering.vectors import hidden_size

from .kv_batch import KVBatch, forward_parameters, prefill
from .metrics import ServerMetrics
from .row_steering import NO_STEERING, Phase, RowDeltas, RowSteering, layer_placement
from .sampling import Sampler, SamplingParams
from .text import Codec, TextStream

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to generate (already validated and tokenised)."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams = SamplingParams(temperature=0.0)
    stop: tuple[str, ...] = ()
    steering: RowDeltas = NO_STEERING
    # The steering terms as the client gave them (checked): an engine that validates
    # in its own process again (vLLM's front end) is handed these.
    terms: tuple[dict[str, Any], ...] = ()
    gate: Callable[[nn.Module, Sequence[int]], bool] | None = None  # conditional steering: read from the prompt at prefill


@dataclass(frozen=True)
class TextDelta:
    """New text of a completion (deltas add up to `Finished.text`)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The end of a completion: why it ended, its text and token counts."""

    finish_reason: str  # "stop" (EOS or a stop sequence) or "length"
    text: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Failed:
    """The completion could not be produced."""

    error: BaseException


Event = TextDelta | Finished | Failed
Sink = Callable[[Event], None]


class EngineBusy(SteeringError):
    """No room for more requests (running and waiting are at their limits)."""


class EngineClosed(SteeringError):
    """The engine was shut down."""


T = TypeVar("T")


class _Call:
    """A function queued for the scheduler thread (`Engine.call`) and its outcome."""

    def __init__(self, fn: Callable[[nn.Module], object]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None

    def run(self, model: nn.Module) -> None:
        try:
            self.finish(result=self.fn(model))
        except Exception as exc:  # the caller's failure, not the batch's
            self.finish(error=exc)

    def finish(self, result: object = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


@dataclass(eq=False)
class _Sequence:
    id: int
    request: GenerationRequest
    sink: Sink
    submitted: float = field(default_factory=time.perf_counter)
    tokens: list[int] = field(default_factory=list)
    sampler: Sampler | None = None
    stream: TextStream | None = None
    deltas: RowDeltas = NO_STEERING

    @property
    def position(self) -> int:
        """Absolute position of the last token (the one the next decode pass feeds)."""
        return len(self.request.prompt_ids) + len(self.tokens) - 1


class Tracked(Protocol):
    """What `advance` and `finish` read of an engine's per-request record."""

    request: GenerationRequest
    submitted: float
    tokens: list[int]
    stream: TextStream | None


def advance(item: Tracked, token: int, codec: Codec, metrics: ServerMetrics, send: Callable[[Any, Event], None]) -> bool:
    """Record ``token`` for ``item`` (a `Tracked`) and send its text; return whether it is finished.

    The one place an engine decides the end of a generation (EOS, a stop
    string, ``max_tokens``): the HF engine and the vLLM adapter both call it.
    """
    assert item.stream is not None
    if not item.tokens:
        metrics.first_token.observe(time.perf_counter() - item.submitted)
    item.tokens.append(token)
    metrics.completion_tokens.inc()
    if token in codec.eos_ids:
        return finish(item, "stop", metrics, send)
    delta, stopped = item.stream.push(token)
    if delta:
        send(item, TextDelta(delta))
    if stopped:
        return finish(item, "stop", metrics, send)
    if len(item.tokens) >= item.request.max_tokens:
        return finish(item, "length", metrics, send)
    return False


def finish(item: Tracked, reason: str, metrics: ServerMetrics, send: Callable[[Any, Event], None]) -> bool:
    """Send ``item``'s remaining text and its `Finished` event, and count it; returns ``True``."""
    assert item.stream is not None
    rest = item.stream.flush()
    if rest:
        send(item, TextDelta(rest))
    send(item, Finished(reason, item.stream.text, len(item.request.prompt_ids), len(item.tokens), tuple(item.tokens)))
    metrics.generations.labels(finish_reason=reason).inc()
    metrics.latency.observe(time.perf_counter() - item.submitted)
    return True


def generate_blocking(engine: Any, request: GenerationRequest, timeout: float | None) -> Finished:
    """Submit ``request`` to ``engine`` (its ``submit``/``cancel``) and block until it finishes.

    The one blocking `generate` of every engine; on a timeout the request is
    cancelled (else its row would go on decoding for no one).
    """
    done = threading.Event()
    result: list[Event] = []

    def sink(event: Event) -> None:
        if isinstance(event, (Finished, Failed)):
            result.append(event)
            done.set()

    ids = engine.submit([request], [sink])
    if not done.wait(timeout):
        engine.cancel(ids)
        raise TimeoutError(f"generation did not finish within {timeout} s (cancelled)")
    if isinstance(result[0], Failed):
        raise result[0].error
    return result[0]  # type: ignore[return-value]


class EngineBase:
    """The client side both engines share: one queue under one condition, admission, pauses, shutdown.

    A subclass builds its running state, starts its scheduler with `_start`, and
    supplies ``_item`` (its per-request record), ``_occupied`` (rows taken now),
    ``_loop`` (the scheduler thread's body) and ``_teardown`` (fail what is left);
    ``_check`` may refuse requests before they queue. The scheduler waits on
    ``_cond`` and admits nothing while ``_pauses`` is non-zero.
    """

    def __init__(self, *, max_batch_size: int, max_queue: int, metrics: ServerMetrics | None) -> None:
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.metrics = metrics or ServerMetrics()
        self._waiting: deque[Any] = deque()
        self._cancelled: set[int] = set()
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._closing = False
        self._pauses = 0
        self._thread: threading.Thread | None = None

    # hooks for the subclass
    def _item(self, id: int, request: GenerationRequest, sink: Sink) -> Any:
        raise NotImplementedError

    def _occupied(self) -> int:
        raise NotImplementedError

    def _check(self, requests: Sequence[GenerationRequest]) -> None:
        """Refuse requests this engine cannot run (raise); the default takes all."""

    def _loop(self) -> None:
        raise NotImplementedError

    def _teardown(self) -> None:
        raise NotImplementedError

    def _start(self, name: str) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ client side
    def submit(self, requests: Sequence[GenerationRequest], sinks: Sequence[Sink]) -> list[int]:
        """Queue ``requests`` (all or none); return their ids for `cancel`.

        Raises:
            EngineBusy: running plus waiting would exceed ``max_batch_size + max_queue``.
            EngineClosed: after `close`.
        """
        self._check(requests)
        with self._cond:
            if self._closing:
                raise EngineClosed("the engine is shut down")
            running = self._occupied()
            room = self.max_batch_size + self.max_queue - running - len(self._waiting)
            if len(requests) > room:
                raise EngineBusy(
                    f"server busy: {running} running and {len(self._waiting)} waiting "
                    f"(max_batch_size={self.max_batch_size}, max_queue={self.max_queue})"
                )
            items = [self._item(next(self._ids), r, s) for r, s in zip(requests, sinks, strict=True)]
            self._waiting.extend(items)
            self.metrics.waiting.set(len(self._waiting))
            self._cond.notify()
        return [item.id for item in items]

    def cancel(self, ids: Sequence[int]) -> None:
        """Stop these requests; their sinks get no more events."""
        with self._cond:
            wanted = set(ids)
            self._waiting = deque(s for s in self._waiting if s.id not in wanted)
            self.metrics.waiting.set(len(self._waiting))
            self._cancelled |= wanted
            self._cond.notify()

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> Finished:
        """Submit one request and block until it finishes (for scripts and tests)."""
        return generate_blocking(self, request, timeout)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the scheduler between passes: nothing is admitted inside the block.

        Requests submitted meanwhile queue up and are admitted together on
        exit (tests use this to line up a batch; operators to drain).
        """
        with self._cond:
            self._pauses += 1
        try:
            yield
        finally:
            with self._cond:
                self._pauses -= 1
                self._cond.notify()

    @property
    def load(self) -> tuple[int, int]:
        """``(running, waiting)`` right now."""
        with self._cond:
            return self._occupied(), len(self._waiting)

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the thread and fail what is left (idempotent).

        Only the scheduler thread touches its running state: ``close`` asks it
        to stop and waits up to ``timeout`` s. The thread stops between passes
        and tears its state down itself, so a pass still running when the wait
        times out is never pulled from under (the teardown follows when it ends).

        Returns:
            Whether the engine is fully stopped (``False``: the wait timed out
            and a pass is still running; it cleans up when it ends).
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is None:  # never started: no other thread can hold the state
            self._teardown()
            return True
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the engine thread is still in a pass after %.1f s; it stops when the pass ends", timeout)
            return False
        return True


class Engine(EngineBase):
    """The scheduler thread and its running batch.

    Args:
        model: a Hugging Face causal LM (owned by the engine while it runs).
        codec: tokenizer wrapper used to decode completions.
        max_batch_size: rows decoded together.
        max_queue: requests allowed to wait for a row; beyond, `submit` raises `EngineBusy`.
        metrics: where to count tokens, batch sizes and latencies.

    Example:
        >>> engine = Engine(model, codec, max_batch_size=8).start()  # doctest: +SKIP
        >>> engine.generate(GenerationRequest(tuple(ids), max_tokens=20)).text  # doctest: +SKIP
        >>> engine.close()  # doctest: +SKIP
    """

    def __init__(
        self, model: nn.Module, codec: Codec, *, max_batch_size: int = 8, max_queue: int = 64, metrics: ServerMetrics | None = None
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, max_queue=max_queue, metrics=metrics)
        self.model = model
        self.codec = codec
        self._device = input_device(model)  # input ids; each layer's steering goes where that layer runs
        self._placement = layer_placement(model)
        self._width = hidden_size(model)
        accepted = forward_parameters(model)
        self._last_only = "logits_to_keep" in accepted
        self._pass_cache_position = "cache_position" in accepted
        self._steering = RowSteering(model)
        self._batch = KVBatch()
        self._running: list[_Sequence] = []
        self._waiting: deque[_Sequence] = deque()
        self._calls: deque[_Call] = deque()  # work for the model thread that is not generation (reading)
        self._active = 0  # running rows plus those being prefilled
        self._shared: HookGroup | None = None

    def _item(self, id: int, request: GenerationRequest, sink: Sink) -> _Sequence:
        return _Sequence(id, request, sink)

    def _occupied(self) -> int:
        return self._active

    # ------------------------------------------------------------------ client side
    def start(self) -> Engine:
        """Start the scheduler thread (idempotent); returns ``self``."""
        if self._thread is None:
            # Rows steer through hooks on this model: a fold from another thread would leak into them.
            self._shared = share(self.model, "server engine")
            self._start("steering-engine")
        return self

    def call(self, fn: Callable[[nn.Module], T], timeout: float | None = None) -> T:
        """Run ``fn(model)`` on the scheduler thread between two passes; return its result.

        The engine owns the model, so anything else that runs it (the reading
        endpoint's teacher-forced pass) goes through here: never in the middle
        of a batch's pass, with the row-steering hooks disarmed.

        Raises:
            EngineClosed: after `close`; what ``fn`` raised, re-raised here.
        """
        work = _Call(fn)
        with self._cond:
            if self._closing:
                raise EngineClosed("the engine is shut down")
            self._calls.append(work)
            self._cond.notify()
        if not work.done.wait(timeout):
            with self._cond:  # not run yet: it never will be (a running one finishes unheard)
                if work in self._calls:
                    self._calls.remove(work)
            raise TimeoutError(f"the model thread did not run the call within {timeout} s")
        if work.error is not None:
            raise work.error
        return work.result  # type: ignore[return-value]

    def _teardown(self) -> None:
        with self._cond:
            left, self._waiting, self._running = [*self._running, *self._waiting], deque(), []
            calls, self._calls = self._calls, deque()
            self._active, self._cancelled = 0, set()
            self.metrics.waiting.set(0)
        for seq in left:
            self._send(seq, Failed(EngineClosed("the server shut down before this request finished")))
        for work in calls:
            work.finish(error=EngineClosed("the server shut down before this call ran"))
        self._batch = KVBatch()
        self.metrics.running.set(0)
        self._steering.remove()
        if self._shared is not None:
            self._shared.remove()

    # ------------------------------------------------------------- scheduler thread
    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            self._teardown()

    def _serve(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closing and (self._pauses or not (self._waiting or self._running or self._cancelled or self._calls)):
                        self._cond.wait()
                    if self._closing:
                        return
                    calls, self._calls = self._calls, deque()
                    admitted = []
                    while self._waiting and self._active < self.max_batch_size:
                        admitted.append(self._waiting.popleft())
                        self._active += 1
                    cancelled, self._cancelled = self._cancelled, set()
                    self.metrics.waiting.set(len(self._waiting))
                for work in calls:
                    work.run(self.model)
                self._drop_cancelled(cancelled)
                for seq in admitted:
                    if seq.id in cancelled:  # cancelled between admission and prefill
                        self._release(1)
                        continue
                    self._prefill(seq)
                if self._running:
                    self._decode()
                self.metrics.running.set(len(self._running))
                self._steering.keep(set().union(*(s.deltas.keys for s in self._running)))

    def _prefill(self, seq: _Sequence) -> None:
        try:
            seq.sampler = Sampler(seq.request.sampling, self._device)
            seq.stream = TextStream(self.codec, seq.request.stop)
            steering = seq.request.steering
            if steering and seq.request.gate is not None and not seq.request.gate(self.model, seq.request.prompt_ids):
                steering = NO_STEERING  # the condition does not hold: this row runs unsteered
            seq.deltas = steering.to(self._placement)
            self._set_rows([seq], "prompt")
            try:
                logits, cache, mask = prefill(self.model, seq.request.prompt_ids, self._device, last_logits_only=self._last_only)
            finally:
                self._steering.disarm()
            self.metrics.prompt_tokens.inc(len(seq.request.prompt_ids))
            if seq.deltas:
                self.metrics.steered.inc()
            if not self._advance(seq, seq.sampler(logits)):
                self._batch.join(cache, mask, self.model)
                self._running.append(seq)
                return
        except Exception as exc:  # this request only; the batch is untouched
            logger.exception("prefill failed")
            self._fail(seq, exc)
            return
        self._release(1)

    def _decode(self) -> None:
        rows = self._running
        try:
            tokens = torch.tensor([s.tokens[-1] for s in rows], device=self._device)
            positions = torch.tensor([s.position for s in rows], device=self._device)
            self._set_rows(rows, "generated")
            try:
                logits = self._batch.forward_step(self.model, tokens, positions, pass_cache_position=self._pass_cache_position)
            finally:
                self._steering.disarm()
            self.metrics.batch_size.observe(len(rows))
            keep = [i for i, seq in enumerate(rows) if not self._advance(seq, seq.sampler(logits[i]))]  # type: ignore[misc]
        except Exception as exc:  # the shared pass failed: every row in it fails
            logger.exception("decode pass failed")
            for seq in rows:
                self._fail(seq, exc)
            self._running, self._batch = [], KVBatch()
            self._steering.clear()
            return
        self._release(len(rows) - len(keep))
        self._running = [rows[i] for i in keep]
        self._batch.keep(keep)

    def _set_rows(self, rows: list[_Sequence], phase: Phase) -> None:
        deltas, ids = [s.deltas for s in rows], [s.id for s in rows]
        self._steering.set_rows(deltas, phase, ids=ids, width=self._width, placement=self._placement)

    def _advance(self, seq: _Sequence, token: int) -> bool:
        """Record ``token`` for ``seq`` and send its text; return whether ``seq`` is finished."""
        return advance(seq, token, self.codec, self.metrics, self._send)

    def _finish(self, seq: _Sequence, reason: str) -> bool:
        return finish(seq, reason, self.metrics, self._send)

    def _fail(self, seq: _Sequence, exc: BaseException) -> None:
        self._send(seq, Failed(exc))
        self.metrics.generations.labels(finish_reason="error").inc()
        self._release(1)

    def _drop_cancelled(self, cancelled: set[int]) -> None:
        if not cancelled or not self._running:
            return
        keep = [i for i, s in enumerate(self._running) if s.id not in cancelled]
        dropped = len(self._running) - len(keep)
        if dropped:
            self.metrics.generations.labels(finish_reason="cancelled").inc(dropped)
            self._running = [self._running[i] for i in keep]
            self._batch.keep(keep)
            self._release(dropped)

    def _release(self, count: int) -> None:
        with self._cond:
            self._active -= count

    def _send(self, seq: _Sequence, event: Event) -> None:
        try:
            seq.sink(event)
        except Exception:  # a broken sink must not take the batch down
            logger.exception("a request's sink failed; cancelling it")
            with self._cond:
                self._cancelled.add(seq.id)
