"""`VLLMEngine`: the engine behind ``steering serve engine=vllm``, with the HF `Engine`'s interface.

The HTTP layer (`steering.server.app`) is the same for both engines: it
parses and checks the body (statuses and messages as ever), then hands
`GenerationRequest`s to an engine. This one passes them to a vLLM
``LLMEngine`` (prompt ids, sampling, ``max_tokens``, and the request's steering
terms in ``extra_args["steering"]``, which the plugin's front end checks
again and folds) and turns vLLM's per-step outputs into the same
`TextDelta`/`Finished` events, with our `TextStream` for text and stop
sequences.

One scheduler thread owns the ``LLMEngine``. Admission waits, it never fails
for steering: at most ``max_configs`` distinct steering configs are in flight
(each holds two rows of the workers' tables); a request with a new config
waits for one to finish while others go ahead.

The reading endpoint (`Engine.call`) runs on the Hugging Face model the
server loaded for the fit checks, under a lock.
"""

from __future__ import annotations

import difflib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from steering.server.engine import (
    EngineBase,
    EngineClosed,
    Event,
    Failed,
    GenerationRequest,
    Sink,
    advance,
    finish,
)
from steering.server.errors import APIError
from steering.server.metrics import ServerMetrics
from steering.server.text import Codec, TextStream
from steering.server.validate import mode_error

from .frontend import VLLM_ENGINE, VLLM_MODES

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(eq=False)
class _Request:
    id: int
    request: GenerationRequest
    sink: Sink
    config: str  # the steering terms as JSON ("" when unsteered)
    submitted: float = field(default_factory=time.perf_counter)
    tokens: list[int] = field(default_factory=list)
    stream: TextStream | None = None


class VLLMEngine(EngineBase):
    """A vLLM ``LLMEngine`` driven like the HF `Engine` (see module docs).

    Args:
        llm_engine: a started ``vllm.LLMEngine`` (the plugin registered).
        codec: tokenizer wrapper used to decode completions.
        model: the Hugging Face model of the same checkpoint (the reading endpoint runs on it).
        max_batch_size, max_queue: as in the HF `Engine`.
        max_configs: distinct steering configs in flight.
        metrics: where to count tokens and latencies.
    """

    def __init__(
        self,
        llm_engine: Any,
        codec: Codec,
        model: nn.Module,
        *,
        max_batch_size: int = 8,
        max_queue: int = 64,
        max_configs: int = 16,
        metrics: ServerMetrics | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, max_queue=max_queue, metrics=metrics)
        self.llm = llm_engine
        self.codec = codec
        self.model = model
        self.max_configs = max_configs
        self._running: dict[str, _Request] = {}
        self._waiting: deque[_Request] = deque()
        self._model_lock = threading.Lock()

    def _item(self, id: int, request: GenerationRequest, sink: Sink) -> _Request:
        return _Request(id, request, sink, json.dumps(list(request.terms), sort_keys=True) if request.terms else "")

    def _occupied(self) -> int:
        return len(self._running)

    def _check(self, requests: Sequence[GenerationRequest]) -> None:
        """Refuse what the plugin does not apply.

        Raises:
            APIError: 422 for conditional steering (``steering_condition``), which
                the plugin does not apply: the gate is read in the HF engine only;
                422 ``unsupported_mode`` for a mode the plugin does not apply
                (`frontend.VLLM_MODES`), as its front end answers.
        """
        for r in requests:
            for i, term in enumerate(r.terms):
                if term.get("mode", "add") not in VLLM_MODES:
                    raise mode_error(f"steering[{i}]", str(term["mode"]), VLLM_MODES, VLLM_ENGINE)
        if any(r.gate is not None for r in requests):
            raise APIError(
                422,
                "steering_condition is not supported with engine=vllm: conditional steering runs on the default HF engine",
                param="steering_condition",
                code="unsupported_for_engine",
            )

    # ------------------------------------------------------------------ client side
    def start(self) -> VLLMEngine:
        """Start the scheduler thread (idempotent)."""
        self._start("steering-vllm-engine")
        return self

    def call(self, fn: Callable[[nn.Module], T], timeout: float | None = None) -> T:
        """Run ``fn`` on the Hugging Face model (the reading endpoint), one call at a time."""
        if self._closing:
            raise EngineClosed("the engine is shut down")
        if not self._model_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"the model was busy for {timeout} s")
        try:
            with torch.inference_mode():
                return fn(self.model)
        finally:
            self._model_lock.release()

    # ------------------------------------------------------------- scheduler thread
    def _loop(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # the engine died: every request fails with the reason, and no more are taken
            logger.exception("the vLLM engine failed")
            with self._cond:
                self._closing = True
            self._teardown(exc)
        else:
            self._teardown()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._closing and (self._pauses or not (self._waiting or self._running or self._cancelled)):
                    self._cond.wait()
                if self._closing:
                    return
                admitted = self._admit()
                cancelled, self._cancelled = self._cancelled, set()
            for item in admitted:
                self._add(item)
            gone = [key for key, item in self._running.items() if item.id in cancelled]
            if gone:
                self.llm.abort_request(gone)
                for key in gone:
                    self._running.pop(key)
                self.metrics.generations.labels(finish_reason="cancelled").inc(len(gone))
            if self._running:
                for output in self.llm.step():
                    self._on_output(output)
            self.metrics.running.set(len(self._running))

    def _admit(self) -> list[_Request]:
        """Waiting requests that may start now (caller holds the lock)."""
        configs = {item.config for item in self._running.values() if item.config}
        admitted: list[_Request] = []
        kept: deque[_Request] = deque()
        for item in self._waiting:
            fits = len(self._running) + len(admitted) < self.max_batch_size
            new_config = item.config and item.config not in configs
            if fits and not (new_config and len(configs) >= self.max_configs):
                admitted.append(item)
                if item.config:
                    configs.add(item.config)
            else:
                kept.append(item)
        self._waiting = kept
        self.metrics.waiting.set(len(kept))
        return admitted

    def _add(self, item: _Request) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        r = item.request
        extra = {"steering": list(r.terms)} if r.terms else None
        params = SamplingParams(
            temperature=r.sampling.temperature,
            top_p=r.sampling.top_p,
            seed=r.sampling.seed,
            max_tokens=r.max_tokens,
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,  # text comes from our TextStream, as in the HF engine
            extra_args=extra,
        )
        key = f"steering-{item.id}"
        item.stream = TextStream(self.codec, r.stop)
        try:
            self.llm.add_request(key, {"prompt_token_ids": list(r.prompt_ids)}, params)
        except Exception as exc:  # checked by our server already: this is a fault, not a client error
            self._send(item, Failed(exc))
            return
        self._running[key] = item
        self.metrics.prompt_tokens.inc(len(r.prompt_ids))

    def _on_output(self, output: Any) -> None:
        item = self._running.get(output.request_id)
        if item is None:
            return
        completion = output.outputs[0]
        for token in completion.token_ids:
            if self._advance(item, int(token)):
                self._running.pop(output.request_id, None)
                if not output.finished:
                    self.llm.abort_request([output.request_id])
                return
        if output.finished:  # vLLM stopped it (EOS it knows of, or the length)
            self._running.pop(output.request_id, None)
            self._finish(item, "length" if completion.finish_reason == "length" else "stop")

    def _advance(self, item: _Request, token: int) -> bool:
        return advance(item, token, self.codec, self.metrics, self._send)

    def _finish(self, item: _Request, reason: str) -> bool:
        return finish(item, reason, self.metrics, self._send)

    def _send(self, item: _Request, event: Event) -> None:
        try:
            item.sink(event)
        except Exception:
            logger.exception("a request's sink failed; cancelling it")
            with self._cond:
                self._cancelled.add(item.id)

    def _teardown(self, error: BaseException | None = None) -> None:
        with self._cond:
            left = [*self._running.values(), *self._waiting]
            self._running, self._waiting = {}, deque()
        reason = error or EngineClosed("the server shut down before this request finished")
        for item in left:
            self._send(item, Failed(reason))
        self.metrics.running.set(0)


def vllm_engine_factory(
    folder: str,
    model: nn.Module,
    config: Any,
    *,
    tensor_parallel_size: int = 1,
    dtype: str = "float32",
    options: dict[str, Any] | None = None,
) -> Callable[[Codec, ServerMetrics], VLLMEngine]:
    """What `steering.server.create_app` needs to serve ``folder`` on vLLM (``steering serve engine=vllm``).

    The plugin's front end is given ``model`` and ``config`` (`frontend.install_frontend`),
    so vectors are checked against the model already loaded, under the server's limits.

    Args:
        folder: the Hugging Face folder of the model (`steering.models.hf_folder`).
        model: that checkpoint loaded with transformers (fit checks, reading endpoint).
        config: the `ServerConfig`.
        tensor_parallel_size: vLLM's tensor parallel degree.
        dtype: vLLM's dtype.
        options: more ``vllm.EngineArgs`` fields (``enforce_eager``, ``max_model_len``, ...).
    """
    import dataclasses

    from vllm import EngineArgs

    from .frontend import Frontend, install_frontend

    # Checked before anything loads: EngineArgs would only say "unexpected keyword argument".
    known = {f.name for f in dataclasses.fields(EngineArgs)}
    ours = {"model": "model", "tokenizer": "model", "dtype": "dtype", "tensor_parallel_size": "tensor_parallel_size"}
    ours["max_num_seqs"] = "max_batch_size"
    for key in options or {}:
        if key in ours:
            raise ValueError(f"vllm_args.{key}: set by the serve command; use {ours[key]}=... instead")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"vllm_args.{key}: not a field of vllm.EngineArgs{hint}")
    install_frontend(folder, Frontend.for_model(model, config))

    def build(codec: Codec, metrics: ServerMetrics) -> VLLMEngine:
        from vllm import LLMEngine

        args = EngineArgs(
            model=folder,
            tokenizer=folder,
            dtype=dtype,  # type: ignore[arg-type]
            tensor_parallel_size=tensor_parallel_size,
            max_num_seqs=config.max_batch_size,
            **(options or {}),
        )
        llm = LLMEngine.from_engine_args(args)
        return VLLMEngine(llm, codec, model, max_batch_size=config.max_batch_size, max_queue=config.max_queue, metrics=metrics)

    return build
