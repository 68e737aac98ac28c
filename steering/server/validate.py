"""From a parsed request body to engine requests, or an `APIError` naming the field.

Everything a request can get wrong is found here, before anything reaches the
engine, so a bad request never touches the batch in flight:

======================================  ======  ==============================
problem                                 status  code
======================================  ======  ==============================
``model`` is not the served model        404     model_not_found
unknown vector name                     404     vector_not_found
vector name that is a path              422     invalid_vector_name
vector file that does not fit the model 422     invalid_vector
``coef`` outside ``check_coef``         422     coef_out_of_range
``coef`` given with a mode without one  422     invalid_coef
``angular`` coef outside [-180, 180]    422     coef_out_of_range
a mode other than add on a zero         422     invalid_vector
direction; an affine mode on a vector
without a reference mean
a mode the engine does not apply        422     unsupported_mode
(the vLLM engine: add and ablate only)
layer not in the vector                 422     layer_not_in_vector
more terms than ``max_vectors``; two    422     too_many_vectors
one-vector-mode terms at one layer
``max_tokens`` above the limit          422     max_tokens_exceeded
too many stops / choices                422     too_many_stop_sequences / too_many_choices
unsupported parameter, non-neutral      422     unsupported_parameter
prompt (+ max_tokens) over the context  400     context_length_exceeded
empty prompt                            400     empty_prompt
chat without a chat template            400     no_chat_template
======================================  ======  ==============================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from steering.apply import COEF_FREE_MODES, MODES, ONE_VECTOR_MODES
from steering.conditions import Condition, prompt_gate
from steering.hooks import LayerError, SteeringError, normalize_layer
from steering.vectors import CoefError, SteeringVector, VectorFileError, check_coef

from .config import ServerConfig
from .engine import GenerationRequest
from .errors import APIError
from .row_steering import NO_STEERING, RowDeltas, Term, build_row_deltas
from .sampling import SamplingParams
from .schemas import ChatCompletionRequest, CompletionRequest, SteeringTerm, _Generation
from .text import Codec
from .vector_store import VectorNameError, VectorNotFound, VectorStore

SERVED_MODES: tuple[str, ...] = MODES
"""The modes the transformers engine applies per row: every mode of ``st.steer`` (`steering.apply.MODES`)."""


@dataclass(frozen=True)
class ServingContext:
    """What validation needs to know about the server."""

    config: ServerConfig
    store: VectorStore
    codec: Codec
    context_length: int
    num_layers: int


@dataclass(frozen=True)
class Prepared:
    """Engine requests for one HTTP request: ``n`` per prompt, prompt-major."""

    requests: list[GenerationRequest]
    prompt_tokens: int


def resolve_steering(terms: Sequence[SteeringTerm] | None, ctx: ServingContext) -> RowDeltas:
    """Look up and check every steering term; fold them into per-row deltas."""
    resolved = resolve_terms(terms, ctx)
    return build_row_deltas(resolved) if resolved else NO_STEERING


def resolve_terms(terms: Sequence[SteeringTerm] | None, ctx: ServingContext) -> list[Term]:
    """Look up and check every steering term (an `APIError` naming ``steering[i].<field>``)."""
    return check_terms(terms, ctx.config, ctx.store, ctx.num_layers, modes=SERVED_MODES, engine="this server")


def check_terms(
    terms: Sequence[SteeringTerm] | None,
    cfg: ServerConfig,
    store: VectorStore,
    num_layers: int,
    *,
    modes: Sequence[str],
    engine: str,
) -> list[Term]:
    """`resolve_terms` given its parts: the limits, the vectors, the served model's depth and the engine's modes.

    Engines without a `ServingContext` (the vLLM plugin's front end) call this
    one, with the modes they apply (``modes``) and their name and reason for
    the ``unsupported_mode`` message (``engine``).
    """
    if not terms:
        return []
    if len(terms) > cfg.max_vectors:
        raise APIError(
            422,
            f"steering has {len(terms)} terms; at most max_vectors={cfg.max_vectors} are allowed",
            param="steering",
            code="too_many_vectors",
        )
    resolved = []
    for i, term in enumerate(terms):
        where = f"steering[{i}]"
        vector = _stored_vector(store, term.vector, where)
        if term.mode not in modes:
            raise mode_error(where, term.mode, modes, engine)
        if term.mode in COEF_FREE_MODES and "coef" in term.model_fields_set:
            what = "the direction is projected out" if term.mode == "ablate" else "the projection is set to the reference mean's"
            raise APIError(
                422,
                f"{where}.coef has no meaning with mode={term.mode!r} ({what}); leave it out",
                param=f"{where}.coef",
                code="invalid_coef",
            )
        if term.mode == "angular" and abs(term.coef) > 180:
            raise APIError(
                422,
                f"{where}.coef={term.coef!r}: mode='angular' takes an angle in degrees, within [-180, 180]",
                param=f"{where}.coef",
                code="coef_out_of_range",
            )
        try:  # the library's coef policy, with the server's max_coef as the tighter bound
            check_coef(term.coef, vector, limit=cfg.max_coef, name=f"{where}.coef")
        except CoefError as exc:
            raise APIError(422, str(exc), param=f"{where}.coef", code="coef_out_of_range") from None
        layers = tuple(vector.layers)
        if term.layers is not None:
            if not term.layers:
                raise APIError(
                    422,
                    f"{where}.layers is empty; omit it to use all of the vector's layers {list(layers)}",
                    param=f"{where}.layers",
                    code="layer_not_in_vector",
                )
            wanted = []
            for layer in term.layers:
                try:  # the library's rule (hooks.normalize_layer): negative counts from the end
                    index = normalize_layer(layer, num_layers, "the served model")
                except LayerError as exc:
                    raise APIError(422, f"{where}.layers: {exc}", param=f"{where}.layers", code="layer_not_in_vector") from None
                if index not in vector.directions:
                    raise APIError(
                        422,
                        f"{where}.layers: layer {layer} is not in vector {term.vector!r} (it has layers {list(layers)})",
                        param=f"{where}.layers",
                        code="layer_not_in_vector",
                    )
                wanted.append(index)
            layers = tuple(dict.fromkeys(wanted))
        if term.mode != "add":
            zero = [i for i in layers if not vector.directions[i].abs().max() > 0]
            if zero:
                raise APIError(
                    422,
                    f"{where}: vector {term.vector!r} is zero at layers {zero}; there is no direction to {term.mode}",
                    param=f"{where}.vector",
                    code="invalid_vector",
                )
        if term.mode.startswith("affine") and vector.reference is None:
            raise APIError(
                422,
                f"{where}: mode={term.mode!r} needs a vector with a reference mean (extract(..., reference=True) or "
                f"method='mean_centred'); vector {term.vector!r} ({vector.method}) has none",
                param=f"{where}.vector",
                code="invalid_vector",
            )
        resolved.append(Term(vector, float(term.coef), layers, term.apply_to, term.mode))
    _one_vector_per_layer(resolved)
    return resolved


def mode_error(where: str, mode: str, modes: Sequence[str], engine: str) -> APIError:
    """The 422 ``unsupported_mode`` for a term ``where`` whose ``mode`` the engine (``engine``, applying ``modes``) cannot apply."""
    return APIError(
        422,
        f"{where}.mode: {engine} does not apply {mode!r} per row; it applies {', '.join(modes)} "
        "(the transformers engine of steering serve and st.steer apply every mode)",
        param=f"{where}.mode",
        code="unsupported_mode",
    )


def _one_vector_per_layer(terms: Sequence[Term]) -> None:
    """Refuse two one-vector-mode terms (clamp, angular, affine) at one layer and phase, as ``st.steer`` does."""
    seen: dict[tuple[str, int, str], int] = {}
    for i, term in enumerate(terms):
        if term.mode not in ONE_VECTOR_MODES:
            continue
        phases = ("prompt", "generated") if term.apply_to == "all" else (term.apply_to,)
        for layer in term.layers:
            for phase in phases:
                first = seen.setdefault((term.vector.site, layer, phase), i)
                if first != i:
                    raise APIError(
                        422,
                        f"steering[{i}] and steering[{first}] both set or rotate layer {layer} ({terms[first].mode} and "
                        f"{term.mode}); a one-vector mode takes one vector per layer: give them different layers",
                        param=f"steering[{i}].layers",
                        code="too_many_vectors",
                    )


def _check_common(body: _Generation, ctx: ServingContext, choices: int) -> None:
    cfg = ctx.config
    if body.model != cfg.model_name:
        raise APIError(
            404, f"model {body.model!r} does not exist; this server serves {cfg.model_name!r}", param="model", code="model_not_found"
        )
    for name, value in body.neutral_fields():
        raise APIError(
            422,
            f"{name}={value!r} is not supported by this server; leave it out (or at its default)",
            param=name,
            code="unsupported_parameter",
        )
    stops = body.stop_list()
    if len(stops) > cfg.max_stop:
        raise APIError(
            422, f"stop has {len(stops)} sequences; at most {cfg.max_stop} are allowed", param="stop", code="too_many_stop_sequences"
        )
    if choices > cfg.max_choices:
        raise APIError(
            422,
            f"this request asks for {choices} completions (n times the prompts); at most max_choices={cfg.max_choices}",
            param="n",
            code="too_many_choices",
        )


def _max_tokens(requested: int | None, prompt_len: int, ctx: ServingContext, field: str, prompt_field: str) -> int:
    cfg, context = ctx.config, ctx.context_length
    if requested is not None and requested > cfg.max_tokens_limit:
        raise APIError(
            422, f"{field}={requested} is over this server's limit of {cfg.max_tokens_limit}", param=field, code="max_tokens_exceeded"
        )
    if prompt_len == 0:
        raise APIError(400, f"{prompt_field} encodes to zero tokens; give some text", param=prompt_field, code="empty_prompt")
    room = context - prompt_len
    if room < 1 or (requested is not None and requested > room):
        asked = f"{prompt_len} in the prompt" + (f" + {requested} to generate" if requested is not None else "")
        raise APIError(
            400,
            f"this model's maximum context length is {context} tokens; the request needs {asked}",
            param=prompt_field,
            code="context_length_exceeded",
        )
    return requested if requested is not None else min(cfg.default_max_tokens, room)


def resolve_condition(body: _Generation, ctx: ServingContext) -> Callable[[Any, Sequence[int]], bool] | None:
    """The prefill gate of ``steering_condition`` (an `APIError` naming ``steering_condition[i].<field>``), or ``None``."""
    if not body.steering_condition:
        return None
    if not body.steering:
        raise APIError(
            422, "steering_condition without steering: there is nothing to gate", param="steering_condition", code="invalid_value"
        )
    conditions = []
    for i, term in enumerate(body.steering_condition):
        where = f"steering_condition[{i}]"
        vector = _stored_vector(ctx.store, term.vector, where)
        try:
            conditions.append(Condition(vector, term.layer, float(term.threshold), term.above))
        except SteeringError as exc:
            raise APIError(422, f"{where}.layer: {exc}", param=f"{where}.layer", code="layer_not_in_vector") from None
    return prompt_gate(conditions, body.steering_combine)


def _stored_vector(store: VectorStore, name: str, where: str) -> SteeringVector:
    """The vector ``name`` from the server's store, or the `APIError` naming ``<where>.vector``."""
    try:
        return store.get(name)
    except VectorNameError as exc:
        raise APIError(422, str(exc), param=f"{where}.vector", code="invalid_vector_name") from None
    except VectorNotFound as exc:
        raise APIError(404, str(exc), param=f"{where}.vector", code="vector_not_found") from None
    except VectorFileError as exc:
        raise APIError(422, str(exc), param=f"{where}.vector", code="invalid_vector") from None


def _build(body: _Generation, prompts: list[list[int]], ctx: ServingContext, prompt_field: str) -> Prepared:
    steering = resolve_steering(body.steering, ctx)
    terms = tuple({**t.model_dump(exclude_unset=True, exclude={"positions"}), "apply_to": t.apply_to} for t in body.steering or ())
    gate = resolve_condition(body, ctx)
    temperature = ctx.config.default_temperature if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    # Choice j of a seeded request draws with seed + j: reproducible, and the n choices differ.
    samplings = [SamplingParams(temperature, top_p, None if body.seed is None else body.seed + j) for j in range(body.n)]
    field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
    requested = body.requested_max_tokens()  # type: ignore[attr-defined]
    requests: list[Any] = []
    for i, ids in enumerate(prompts):
        where = prompt_field if len(prompts) == 1 else f"{prompt_field}[{i}]"
        limit = _max_tokens(requested, len(ids), ctx, field, where)
        requests.extend(GenerationRequest(tuple(ids), limit, s, tuple(body.stop_list()), steering, terms, gate) for s in samplings)
    return Prepared(requests, sum(len(ids) for ids in prompts))


def prepare_chat(body: ChatCompletionRequest, ctx: ServingContext) -> Prepared:
    """Engine requests for a chat completion (the chat template applied)."""
    _check_common(body, ctx, body.n)
    if body.max_tokens is not None and body.max_completion_tokens is not None and body.max_tokens != body.max_completion_tokens:
        raise APIError(
            422,
            "give max_tokens or max_completion_tokens, not both with different values",
            param="max_completion_tokens",
            code="invalid_value",
        )
    if not ctx.codec.has_chat_template:
        raise APIError(
            400,
            "this model's tokenizer has no chat template; use /v1/completions with a plain prompt",
            param="messages",
            code="no_chat_template",
        )
    # Many templates know no "developer" role; it is the newer name of "system".
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    try:
        ids = ctx.codec.encode_chat(messages)
    except Exception as exc:  # templates raise on role orders they do not accept
        raise APIError(400, f"the chat template rejected these messages: {exc}", param="messages", code="invalid_messages") from None
    return _build(body, [ids], ctx, "messages")


def prepare_completion(body: CompletionRequest, ctx: ServingContext) -> Prepared:
    """Engine requests for a text completion (one per prompt and ``n``)."""
    prompts = body.prompts()
    if not prompts:
        raise APIError(422, "prompt is an empty list; give a string or a list of strings", param="prompt", code="invalid_value")
    _check_common(body, ctx, body.n * len(prompts))
    return _build(body, [ctx.codec.encode_prompt(p) for p in prompts], ctx, "prompt")


def model_context_length(model: object, config: ServerConfig) -> int:
    """``config.context_length``, else the model's ``max_position_embeddings`` (or ``n_positions``)."""
    if config.context_length is not None:
        return config.context_length
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return 2048
