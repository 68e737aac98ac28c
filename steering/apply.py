"""Steer a model with vectors: `steer` (context manager) and `attach` (handle).

Adding ``coef * v`` at each of the vector's layers turns a behaviour on
(positive coef) or off (negative). Other modes (`MODES`), each an op of
`hooks.patch` chosen by name:

=============  =============================================================
add            ``h + coef * v``
ablate         project the direction out (coef is ignored)
clamp          set the projection on the unit direction ``u`` to
               ``coef * |v|`` (a multiple of the vector's own scale; for an
               absolute value, steer with ``v.normalized()``)
angular        rotate ``h`` towards ``u`` by ``coef`` degrees in the plane of
               the two, keeping ``|h|`` (negative: away)
affine_ablate  set the projection to the reference mean's, ``mu . u``
               (coef is ignored; the vector must hold ``reference``)
affine_add     set it to ``mu . u + coef * |v|``: the affine edit relative to
               the reference mean (``coef=1`` moves a mean-difference vector's
               projection to the positives' mean)
=============  =============================================================

Several vectors apply together; with ``add`` their deltas are summed per
layer once, up front, so each layer runs one hook whatever the number of
vectors; ``ablate`` removes their span; the other modes take one vector per
layer. ``condition=`` (`steering.conditions`) gates all of it per sequence.

Two backends carry the addition. ``hook`` registers a forward hook per layer
(`hooks.patch`): it handles every site, positions, ablation and per-row
deltas. ``fold`` adds the constant delta to the bias of the block's last MLP
linear layer (`hooks.fold`), so steered generation runs exactly the code of
plain generation, with no Python per token and no graph break under
``torch.compile``; biases are restored bit for bit on exit. ``auto`` (the
default) folds whenever that is exact (in float32; in bf16/fp16 the bias add
rounds differently from the hook path's residual add, so tokens may differ,
see the README): ``mode="add"``, ``apply_to="all"``, the
``block_output`` or ``mlp_output`` site, an architecture listed in
`hooks.fold.FOLD_TARGETS` (not Gemma 2/3 at ``block_output``) and a model in
eval mode; otherwise it uses hooks.

A fold changes weights that every thread using the model sees. Where the
model is declared shared (`hooks.share`, e.g. by a server) or another
thread steers it, ``fold`` raises `hooks.fold.FoldConflictError` and ``auto``
uses hooks with a `RuntimeWarning` (hooks, too, run for every caller of the
module: steer a shared model from one thread at a time).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, cast, get_args

import torch
from torch import Tensor, nn

from steering.hooks import (
    AblateOp,
    AddOp,
    ApplyTo,
    GatedOp,
    HookGroup,
    LayerError,
    Op,
    PromptGate,
    RotateOp,
    SetProjectionOp,
    Site,
    SteeringError,
    decoder_stack,
    layer_device,
    layer_dtype,
    patch,
    renamed,
    resolve_layers,
)
from steering.hooks.fold import fold, fold_blocker, fold_conflict
from steering.hooks.positions import check_positions
from steering.vectors import SteeringVector, check_coef

from .conditions import Combine, Condition, as_conditions, decision

Mode = Literal["add", "ablate", "clamp", "angular", "affine_add", "affine_ablate"]
MODES: tuple[str, ...] = get_args(Mode)
ONE_VECTOR_MODES: tuple[str, ...] = ("clamp", "angular", "affine_add", "affine_ablate")
"""Modes that set or rotate the activation: one vector per layer (they do not sum or stack)."""
COEF_FREE_MODES: tuple[str, ...] = ("ablate", "affine_ablate")
"""Modes that ignore ``coef`` (they remove the behaviour, with no strength to dial)."""
Backend = Literal["auto", "hook", "fold"]
BACKENDS: tuple[str, ...] = get_args(Backend)
VectorSpec = SteeringVector | Sequence[tuple[SteeringVector, float]]


def _as_terms(vector: VectorSpec, coef: float) -> list[tuple[SteeringVector, float]]:
    if isinstance(vector, SteeringVector):
        terms = [(vector, coef)]
    else:
        terms = [(v, c) for v, c in vector]
    if not terms:
        raise SteeringError("no vectors given")
    for v, c in terms:
        if not isinstance(v, SteeringVector):
            raise SteeringError(f"expected a SteeringVector, got {type(v).__name__}")
        check_coef(c, v)  # the shared policy (vectors.coef): finite, and bounded with the vector's norm
    return terms


def _layer_terms(
    model: nn.Module, vector: VectorSpec, coef: float, layers: Iterable[int] | None, check_model: bool = True
) -> tuple[dict[int, list[tuple[Tensor, float]]], str]:
    terms = _as_terms(vector, coef)
    sites = {v.site for v, _ in terms}
    if len(sites) > 1:
        raise SteeringError(f"vectors of different sites cannot be applied together: {sorted(sites)}")
    for v in {id(v): v for v, _ in terms}.values():  # each vector once: a fingerprint reads every tensor
        v.check_fits(model, check_model=check_model, override="pass check_model=False to steer with it anyway")
    wanted = None if layers is None else set(resolve_layers(model, layers))  # negative indices count from the end
    by_layer: dict[int, list[tuple[Tensor, float]]] = {}
    for v, c in terms:
        for layer, direction in v.directions.items():
            if wanted is None or layer in wanted:
                by_layer.setdefault(layer, []).append((direction, c))
    if wanted is not None and (missing := wanted - set(by_layer)):
        raise LayerError(f"layers {sorted(missing)} are not in the vector (it has {sorted({i for v, _ in terms for i in v.layers})})")
    return dict(sorted(by_layer.items())), sites.pop()


def build_deltas(
    model: nn.Module, vector: VectorSpec, coef: float = 1.0, *, layers: Iterable[int] | None = None, check_model: bool = True
) -> tuple[dict[int, Tensor], str]:
    """Per-layer summed deltas ``sum(coef * direction)`` for ``vector`` (and their site)."""
    by_layer, site = _layer_terms(model, vector, coef, layers, check_model)
    return {layer: sum(c * d for d, c in items) for layer, items in by_layer.items()}, site  # type: ignore[misc]


def build_ops(
    model: nn.Module,
    vector: VectorSpec,
    coef: float = 1.0,
    *,
    mode: Mode = "add",
    layers: Iterable[int] | None = None,
    check_model: bool = True,
) -> tuple[dict[int, Op], str]:
    """Per-layer operations for ``vector`` (and the site they act at)."""
    _check_mode(mode)
    terms = _as_terms(vector, coef)
    by_layer, site = _layer_terms(model, vector, coef, layers, check_model)
    ops: dict[int, Op] = {}
    for layer, items in by_layer.items():
        if mode == "add":
            ops[layer] = AddOp(sum(c * d for d, c in items))  # type: ignore[arg-type]
        elif mode == "ablate":
            ops[layer] = AblateOp(torch.stack([d for d, _ in items]))
        else:
            if len(items) > 1:
                raise SteeringError(f"mode={mode!r} takes one vector per layer; layer {layer} has {len(items)}")
            (direction, c), owner = items[0], next(v for v, _ in terms if layer in v.directions)
            ops[layer] = mode_op(mode, direction, c, owner, layer)
    return ops, site


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise SteeringError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def mode_op(mode: str, direction: Tensor, coef: float, vector: SteeringVector, layer: int) -> Op:
    """The op of a one-vector mode (`ONE_VECTOR_MODES`) at ``layer``: ``direction`` is ``vector``'s there.

    The one place these ops are built: `build_ops` (``st.steer``) and the
    server's per-row steering both call it.

    Raises:
        SteeringError: ``angular`` with ``|coef| > 180``, an affine mode on a
            vector without a reference mean; `LayerError` for a zero direction.
    """
    scale = float(direction.double().norm())
    if mode == "clamp":
        return SetProjectionOp(direction, coef * scale)
    if mode == "angular":
        if abs(coef) > 180:
            raise SteeringError(f"mode='angular' takes coef in degrees, within [-180, 180]; got {coef!r}")
        return RotateOp(direction, coef)
    if vector.reference is None:
        raise SteeringError(
            f"mode={mode!r} needs a vector with a reference mean (extract(..., reference=True) or method='mean_centred'); "
            f"this {vector.method} vector has none"
        )
    unit = direction.double() / max(scale, 1e-12)
    base = float(vector.reference[layer].double() @ unit)
    return SetProjectionOp(direction, base + (coef * scale if mode == "affine_add" else 0.0))


def choose_backend(
    model: nn.Module,
    layers: Iterable[int],
    site: str,
    *,
    apply_to: ApplyTo = "all",
    mode: Mode = "add",
    backend: Backend = "auto",
    conditional: bool = False,
) -> tuple[str, str | None]:
    """Resolve ``backend`` to ``"hook"`` or ``"fold"``, with why folding is impossible (or ``None``).

    Raises:
        SteeringError: for an unknown backend, or ``backend="fold"`` where it cannot fold.

    Warns:
        RuntimeWarning: ``backend="auto"`` could fold but the model is shared
            or steered by another thread (`hooks.fold.fold_conflict`), so hooks are used.
    """
    if backend not in BACKENDS:
        raise SteeringError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "hook":
        return "hook", None
    if mode != "add":
        reason: str | None = f"mode={mode!r} needs the hook backend (it depends on each activation, so no constant bias carries it)"
    elif conditional:
        reason = "conditional steering needs the hook backend (the gate differs per sequence)"
    elif apply_to != "all":
        reason = f"apply_to={apply_to!r} needs the hook backend"
    else:
        reason = fold_blocker(model, list(layers), site)
    if reason is None:
        conflict = fold_conflict(model)
        if conflict is None:
            return "fold", None
        if backend == "fold":
            raise SteeringError(f"backend='fold' is not possible here: {conflict} (a fold changes the weights for every caller)")
        warnings.warn(
            f"steering with hooks instead of folding: {conflict}, and a fold would change the weights it uses. "
            "Hooks and folds both act on every caller of the model: steer a shared model from one thread at a time",
            RuntimeWarning,
            stacklevel=3,
        )
        return "hook", f"{conflict} (folding would change its weights)"
    if backend == "fold":
        raise SteeringError(f"backend='fold' is not possible here: {reason}")
    return "hook", reason


def attach(
    model: nn.Module,
    vector: VectorSpec,
    coef: float = 1.0,
    *,
    apply_to: ApplyTo = "all",
    mode: Mode = "add",
    layers: Iterable[int] | None = None,
    backend: Backend = "auto",
    check_model: bool = True,
    condition: Condition | Sequence[Condition] | None = None,
    combine: Combine = "and",
    positions: ApplyTo | None = None,
) -> HookGroup:
    """Start steering and return the `HookGroup` that stops it (``.remove()``).

    Same arguments as `steer`; use this when steering must outlive a ``with`` block.

    Example:
        >>> group = attach(model, vec, coef=2.0)  # doctest: +SKIP
        >>> # idempotent
        >>> group.remove()  # doctest: +SKIP
    """
    apply_to = renamed("apply_to", apply_to, positions, "all")
    terms = _as_terms(vector, coef)
    coefs = [c for _, c in terms]
    coef_text = coefs if len(coefs) > 1 else coefs[0]
    _check_mode(mode)
    check_positions(apply_to)
    conditions = None if condition is None else as_conditions(condition)
    if conditions is not None:
        for c in conditions:
            c.vector.check_fits(model, check_model=check_model, override="pass check_model=False to steer with it anyway")
    deltas, site = build_deltas(model, vector, coef, layers=layers, check_model=check_model)
    chosen, _ = choose_backend(model, deltas, site, apply_to=apply_to, mode=mode, backend=backend, conditional=conditions is not None)
    when = "" if conditions is None else f" condition={f' {combine} '.join(map(str, conditions))}"
    label = f"steer layers={sorted(deltas)} site={site} mode={mode} coef={coef_text} apply_to={apply_to} backend={chosen}{when}"
    if chosen == "fold":
        # A zero delta changes nothing: leave that bias (or its absence) alone.
        nonzero = {layer: d for layer, d in deltas.items() if bool(d.any())}
        return fold(model, nonzero, site=site, label=label)
    if mode == "add":
        # Moved and cast once per layer, to where that layer runs (models spread over devices).
        ops: dict[int, Op] = {layer: AddOp(d.to(layer_device(model, layer), layer_dtype(model, layer))) for layer, d in deltas.items()}
    else:
        ops, site = build_ops(model, vector, coef, mode=mode, layers=layers, check_model=False)  # checked above
    if conditions is None:
        return patch(model, ops, site=cast(Site, site), positions=apply_to, label=label)
    gate_layers, decide = decision(conditions, combine)
    stack = decoder_stack(model)
    gate = PromptGate(stack, gate_layers, decide, site=cast(Site, conditions[0].vector.site))
    gated: dict[int, Op] = {layer: GatedOp(op, gate) for layer, op in ops.items()}
    group = patch(model, gated, site=cast(Site, site), positions=apply_to, label=label)
    try:
        group.add_pre_hook(stack, gate, with_kwargs=True)
    except BaseException:
        group.remove()
        raise
    return group


@contextmanager
def steer(
    model: nn.Module,
    vector: VectorSpec,
    coef: float = 1.0,
    *,
    apply_to: ApplyTo = "all",
    mode: Mode = "add",
    layers: Iterable[int] | None = None,
    backend: Backend = "auto",
    check_model: bool = True,
    condition: Condition | Sequence[Condition] | None = None,
    combine: Combine = "and",
    positions: ApplyTo | None = None,
) -> Iterator[HookGroup]:
    """Steer ``model`` inside a ``with`` block; hooks are removed on exit, also on errors.

    Args:
        model: a Hugging Face decoder-only model.
        vector: a `SteeringVector`, or a list of ``(vector, coef)`` to apply together.
        coef: multiplier of ``vector`` (ignored for a list); negative subtracts.
            Default 1.0, as in `attach`, `generate` and the server. It must pass
            `vectors.check_coef`: finite, ``|coef| <= 1e4`` and
            ``|coef| * norm <= 1e5`` for the vector's largest layer norm.
        apply_to: which tokens to change: ``all``, ``prompt`` or ``generated``
            (absolute positions, correct under the KV cache).
        mode: one of `MODES` (see the module docs): ``add`` the scaled vector,
            ``ablate`` its direction, ``clamp`` or ``affine_add`` /
            ``affine_ablate`` its projection, or rotate (``angular``, coef in degrees).
        layers: restrict to these layers of the vector (default: all of its
            layers); negative indices count from the end of the model.
        backend: ``auto`` (fold into a bias where exact, else hooks), ``hook``,
            or ``fold`` (raise where folding is impossible). See the module docs.
        check_model: compare each vector's recorded model fingerprint with
            ``model`` (``unknown`` passes); ``False`` steers with a vector from
            another checkpoint of the same shape.
        condition: a `Condition` or a list of them: steer only the sequences
            whose prompt meets it (read once per sequence; the other rows run
            exactly unsteered). Needs the hook backend.
        combine: ``"and"`` (every condition holds) or ``"or"`` (any does).
        positions: deprecated name of ``apply_to`` (warns).

    Raises:
        SteeringError: bad coef (`vectors.CoefError`), mode, apply_to, layers or backend, or a vector
            that does not fit the model; nothing is left registered.
        VectorMismatchError: a vector made on another checkpoint (both named).

    Example:
        >>> with steer(model, vec, coef=4.0):  # doctest: +SKIP
        ...     out = model.generate(**inputs, max_new_tokens=20)
    """
    apply_to = renamed("apply_to", apply_to, positions, "all")
    group = attach(
        model,
        vector,
        coef,
        apply_to=apply_to,
        mode=mode,
        layers=layers,
        backend=backend,
        check_model=check_model,
        condition=condition,
        combine=combine,
    )
    try:
        yield group
    finally:
        group.remove()
