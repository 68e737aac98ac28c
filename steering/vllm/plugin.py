"""`register`: the ``vllm.general_plugins`` entry point, run by vLLM in each of its processes.

Upstream vLLM has no steering interface, so the plugin wraps three methods of
vLLM 0.32's V1 engine (checked on load; another minor version is refused,
not guessed at):

- ``InputProcessor.process_inputs`` (front end): checks
  ``extra_args["steering"]`` (`frontend.Frontend.prepare`; a bad request
  raises ``VLLMValidationError``, a 400 over HTTP), stores the folded payload
  in the engine request's private copy of its sampling params, and adds the
  payload key to its ``cache_salt``: a steered prefix is never served to a
  request steered otherwise (or not at all) from the prefix cache, nor the
  other way round;
- ``GPUModelRunner.load_model`` / ``CPUModelRunner.load_model`` (workers):
  hooks the decoder layers once, before any warm-up or graph capture
  (`tables.StepTables`);
- ``GPUModelRunner._prepare_inputs`` (workers): after vLLM has laid out the
  step's flat token batch, maps each token to its request's slot from that
  step's own metadata (`StepTables.prepare`).

The model runner V2 (``VLLM_USE_V2_MODEL_RUNNER=1``, vLLM's default on GPUs
with Triton) is not hooked; `register` sets ``VLLM_USE_V2_MODEL_RUNNER=0``
unless the user chose otherwise, and a worker that comes up on it says so.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

SUPPORTED = "0.32."
_registered = False


def register() -> None:
    """Wrap vLLM's methods (idempotent; vLLM may call it several times per process)."""
    global _registered
    if _registered:
        return
    import vllm

    if not vllm.__version__.startswith(SUPPORTED):
        raise RuntimeError(f"the steering vLLM plugin supports vLLM {SUPPORTED}x, not {vllm.__version__}; install steering[vllm]")
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    _patch_front_end()
    _patch_runner()
    _registered = True


def _patch_front_end() -> None:
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.input_processor import InputProcessor

    from steering.server.errors import APIError

    from .frontend import frontend_for
    from .payload import PAYLOAD_KEY

    original = InputProcessor.process_inputs
    signature = inspect.signature(original)

    @functools.wraps(original)
    def process_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
        params = signature.bind(self, *args, **kwargs).arguments.get("params")
        payload = None
        raw = params.extra_args.get("steering") if isinstance(params, SamplingParams) and params.extra_args else None
        if raw is not None:
            try:
                payload = frontend_for(self.model_config.model).prepare(raw)
            except APIError as exc:
                raise VLLMValidationError(exc.message, parameter=exc.param) from None
        request = original(self, *args, **kwargs)
        sampling = request.sampling_params
        if sampling is not None and sampling.extra_args is not None:
            # Only the front end writes the payload; one a client sent is dropped.
            extra = {k: v for k, v in sampling.extra_args.items() if k != PAYLOAD_KEY}
            if payload is not None:
                extra[PAYLOAD_KEY] = payload
                request.cache_salt = f"{request.cache_salt or ''}|steering:{payload['key']}"
            sampling.extra_args = extra
        return request

    InputProcessor.process_inputs = process_inputs  # type: ignore[method-assign]


def _patch_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    runners: list[type] = [GPUModelRunner]
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner

        runners.append(CPUModelRunner)
    except ImportError:  # a GPU-only build
        pass
    for cls in runners:
        if "load_model" in vars(cls):
            setattr(cls, "load_model", _after_load(vars(cls)["load_model"]))  # noqa: B010
    prepare = GPUModelRunner._prepare_inputs

    @functools.wraps(prepare)
    def _prepare_inputs(self: Any, scheduler_output: Any, num_scheduled_tokens: Any) -> Any:
        out = prepare(self, scheduler_output, num_scheduled_tokens)
        tables = getattr(self, "_steering_tables", None)
        if tables is not None:
            _fill(self, tables, num_scheduled_tokens)
        return out

    GPUModelRunner._prepare_inputs = _prepare_inputs  # type: ignore[method-assign]


def _after_load(load: Any) -> Any:
    @functools.wraps(load)
    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = load(self, *args, **kwargs)
        if getattr(self, "_steering_tables", None) is None:
            self._steering_tables = _install(self)
        return out

    return load_model


def _install(runner: Any) -> Any:
    from steering.hooks import decoder_layers

    from .frontend import max_ablate
    from .tables import StepTables

    model = runner.get_model()
    layers = {i: m for i, m in enumerate(decoder_layers(model)) if type(m).__name__ != "PPMissingLayer"}
    config = runner.vllm_config
    tables = StepTables(
        layers,
        width=config.model_config.get_hidden_size(),
        max_requests=config.scheduler_config.max_num_seqs,
        max_tokens=int(runner.positions.shape[-1]),
        rank=max_ablate(),
        device=runner.device,
        dtype=config.model_config.dtype,
        static=not config.model_config.enforce_eager,
    )
    logger.info("steering: %r", tables)
    return tables


def _fill(runner: Any, tables: Any, num_scheduled_tokens: Any) -> None:
    from .payload import PAYLOAD_KEY

    batch = runner.input_batch
    ids = batch.req_ids[: batch.num_reqs]
    states = [runner.requests[r] for r in ids]
    payloads = [
        (s.sampling_params.extra_args or {}).get(PAYLOAD_KEY) if s.sampling_params is not None else None  # pooling requests have none
        for s in states
    ]
    num_prompt = [s.num_prompt_tokens for s in states]
    total = int(num_scheduled_tokens.sum())
    tables.prepare(payloads, num_prompt, runner.req_indices.gpu, runner.positions, total)
