"""``POST /v1/steering/read``: how strongly each token points along a vector, at one layer.

The playground colours a prompt and its completion by these numbers. For each
token the endpoint returns its text and ``hidden · unit(direction)``: the
hidden state at ``layer`` (at the vector's site, as `hooks.record` captures
it) dotted with the vector's direction at that layer scaled to unit length.

The text is teacher-forced in two passes, as the engine generates it: the
prompt on an empty cache, then the completion on that cache. Given
``steering`` (the same terms as a completion request), each pass runs under
the terms active in its phase (``apply_to`` ``all`` and ``prompt``, then
``all`` and ``generated``), applied with `steering.steer` on the hook backend:
ablations first, then one summed addition per layer, which is how
`row_steering.build_row_deltas` folds them, so the hidden states are those
the steered completion was generated from. The completion is re-encoded from
its text (no special tokens added); a text that tokenises differently than it
was generated is read as it tokenises now.

The pass runs on the engine's thread (`Engine.call`), between two decode
passes of the batch: the engine owns the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, cast

import torch
from pydantic import Field
from torch import Tensor, nn
from transformers import DynamicCache

from steering.hooks import Site, input_device, record
from steering.hooks.cache import cache_kwargs
from steering.vectors import SteeringVector, VectorFileError

from ..apply import ONE_VECTOR_MODES, Mode, steer
from .errors import APIError
from .row_steering import Phase, Term
from .schemas import ChatMessage, SteeringTerm, _Body
from .validate import ServingContext, resolve_terms
from .vector_store import VectorNameError, VectorNotFound


class ReadRequest(_Body):
    """``POST /v1/steering/read``: ``prompt`` (text) or ``messages`` (chat), and optionally a completion.

    Attributes:
        model: the served model's id.
        vector: the vector whose direction is read.
        layer: one of the vector's layers (negative counts from the model's end).
        prompt, messages: the prompt, as in ``/v1/completions`` or ``/v1/chat/completions``.
        completion: text that followed the prompt (teacher-forced).
        steering: terms to apply while reading, as in a completion request.
    """

    model: str
    vector: str
    layer: int
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    completion: str = ""
    steering: list[SteeringTerm] | None = None


@dataclass(frozen=True)
class ReadJob:
    """A checked read: token ids, the unit direction, and the steering terms."""

    prompt_ids: list[int]
    completion_ids: list[int]
    vector: str
    layer: int
    site: Site
    unit: Tensor
    terms: list[Term]


def lookup_vector(name: str, ctx: ServingContext, param: str) -> SteeringVector:
    """``ctx.store.get(name)``, its failures as `APIError`s naming ``param``."""
    try:
        return ctx.store.get(name)
    except VectorNameError as exc:
        raise APIError(422, str(exc), param=param, code="invalid_vector_name") from None
    except VectorNotFound as exc:
        raise APIError(404, str(exc), param=param, code="vector_not_found") from None
    except VectorFileError as exc:
        raise APIError(422, str(exc), param=param, code="invalid_vector") from None


def prepare_read(body: ReadRequest, ctx: ServingContext) -> ReadJob:
    """Check ``body`` and tokenise it; an `APIError` naming the field otherwise."""
    if body.model != ctx.config.model_name:
        raise APIError(
            404, f"model {body.model!r} does not exist; this server serves {ctx.config.model_name!r}", param="model", code="model_not_found"
        )
    vector = lookup_vector(body.vector, ctx, "vector")
    layer = body.layer + ctx.num_layers if body.layer < 0 else body.layer
    if layer not in vector.directions:
        raise APIError(
            422,
            f"layer {body.layer} is not in vector {body.vector!r} (it has layers {vector.layers})",
            param="layer",
            code="layer_not_in_vector",
        )
    direction = vector.directions[layer].float()
    norm = float(direction.norm())
    if not norm > 0:
        raise APIError(
            422, f"vector {body.vector!r} is zero at layer {layer}; it has no direction to read", param="vector", code="invalid_vector"
        )
    terms = resolve_terms(body.steering, ctx)
    prompt_ids, field = _prompt_ids(body, ctx)
    if not prompt_ids:
        raise APIError(400, f"{field} encodes to zero tokens; give some text", param=field, code="empty_prompt")
    with ctx.codec.lock:
        completion_ids = list(ctx.codec.tokenizer(body.completion, add_special_tokens=False)["input_ids"]) if body.completion else []
    total = len(prompt_ids) + len(completion_ids)
    if total > ctx.context_length:
        raise APIError(
            400,
            f"this model's maximum context length is {ctx.context_length} tokens; prompt and completion "
            f"are {len(prompt_ids)} + {len(completion_ids)}",
            param="completion",
            code="context_length_exceeded",
        )
    return ReadJob(prompt_ids, completion_ids, body.vector, layer, cast(Site, vector.site), direction / norm, terms)


def _prompt_ids(body: ReadRequest, ctx: ServingContext) -> tuple[list[int], str]:
    if (body.prompt is None) == (body.messages is None):
        raise APIError(422, "give exactly one of prompt (text) or messages (chat)", param="prompt", code="invalid_value")
    if body.prompt is not None:
        return ctx.codec.encode_prompt(body.prompt), "prompt"
    if not ctx.codec.has_chat_template:
        raise APIError(
            400, "this model's tokenizer has no chat template; read a plain prompt instead", param="messages", code="no_chat_template"
        )
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages or []]
    try:
        return ctx.codec.encode_chat(messages), "messages"
    except Exception as exc:  # templates raise on role orders they do not accept
        raise APIError(400, f"the chat template rejected these messages: {exc}", param="messages", code="invalid_messages") from None


def project(model: nn.Module, job: ReadJob) -> list[float]:
    """Per-token projections for ``job`` (prompt tokens, then completion tokens).

    Runs the model: call it only on the thread that owns it (`Engine.call`).
    """
    device = input_device(model)
    cache = DynamicCache()  # filled in place by the prompt pass, read by the completion pass
    rows: list[Tensor] = []
    with torch.inference_mode():
        for phase, ids in (("prompt", job.prompt_ids), ("generated", job.completion_ids)):
            if not ids:
                continue
            with ExitStack() as stack:
                _steer_phase(stack, model, job.terms, phase)  # type: ignore[arg-type]
                rec = stack.enter_context(record(model, [job.layer], site=job.site))
                model(input_ids=torch.tensor([ids], device=device), use_cache=True, **cache_kwargs(model, cache))
            rows.append(rec[job.layer][0].float().cpu())
    hidden = torch.cat(rows)  # [seq, d_model]
    return (hidden @ job.unit).tolist()


def _steer_phase(stack: ExitStack, model: nn.Module, terms: Sequence[Term], phase: Phase) -> None:
    """Enter the steering of ``terms`` active in ``phase``: ablations, then the one-vector modes, then additions (as `RowSteering`)."""
    active = [t for t in terms if t.apply_to in ("all", phase)]
    for group in _by_site([t for t in active if t.mode == "ablate"], use_coef=False):
        stack.enter_context(steer(model, group, mode="ablate", backend="hook"))
    for term in active:
        if term.mode in ONE_VECTOR_MODES:  # one vector per layer: validation refused two at one layer
            stack.enter_context(steer(model, term.vector.select(term.layers), term.coef, mode=cast(Mode, term.mode), backend="hook"))
    for group in _by_site([t for t in active if t.mode == "add"], use_coef=True):
        stack.enter_context(steer(model, group, mode="add", backend="hook"))


def _by_site(terms: Sequence[Term], *, use_coef: bool) -> list[list[tuple[SteeringVector, float]]]:
    by_site: dict[str, list[tuple[SteeringVector, float]]] = {}
    for term in terms:
        by_site.setdefault(term.vector.site, []).append((term.vector.select(term.layers), term.coef if use_coef else 1.0))
    return list(by_site.values())


def reading_body(job: ReadJob, projections: list[float], decode: Any) -> dict[str, Any]:
    """The response: one ``{"text", "id", "projection", "part"}`` per token."""
    ids = job.prompt_ids + job.completion_ids
    parts = ["prompt"] * len(job.prompt_ids) + ["completion"] * len(job.completion_ids)
    tokens = [{"text": decode(i), "id": i, "projection": p, "part": part} for i, p, part in zip(ids, projections, parts, strict=True)]
    return {
        "object": "steering.reading",
        "vector": job.vector,
        "layer": job.layer,
        "site": job.site,
        "prompt_tokens": len(job.prompt_ids),
        "completion_tokens": len(job.completion_ids),
        "tokens": tokens,
    }
