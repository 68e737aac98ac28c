"""Per-row steering: every row of a batch adds its own delta at each hooked layer.

A request's steering terms are folded, once, into `RowDeltas`: for each
``(site, layer)`` the vector it adds at prompt positions and the one it adds
at generated positions (terms with ``apply_to="all"`` go into both). The
sums are formed exactly as `steering.apply.build_ops` forms them, so a request
served alone adds the very tensor ``st.steer`` would. Terms with
``mode="ablate"`` instead contribute their direction to an orthonormal basis
per ``(site, layer)`` and phase (`hooks.span_basis`, as ``st.steer(...,
mode="ablate")`` builds it) whose span is projected out of the row's hidden
states before any delta is added. Terms of the other modes (``clamp``,
``angular``, ``affine_add``, ``affine_ablate``) become the very op
``st.steer`` builds (`steering.apply.mode_op`), one per ``(site, layer)`` and
phase, applied after the ablation and before the delta; the same order as
``st.steer(mode="ablate")`` around ``st.steer(mode=...)`` around
``st.steer(...)`` (nested contexts run their hooks in the order they were entered).

`RowSteering` owns one hook per ``(site, layer)`` that a row in flight uses
(registered through `hooks.patch`, so cleanup follows the foundation's rules;
the engine drops the others with `RowSteering.keep` after each turn)
and a *step table*: for the forward pass about to run, ``(site, layer) ->
[batch, d_model]``, one row per batch row, zeros for rows that do not steer
there, and an *ablation table* ``(site, layer) -> [batch, k, d_model]`` of
each row's basis, zero-padded to the largest ``k`` (a zero basis projects out
nothing, exactly), and the *op list* ``(site, layer) -> [(row, op)]`` of the
rows with a one-vector mode there: each such op runs on its own row's slice
``[1, seq, d]`` (the shape ``st.steer`` gives it in a batch of one, so the
row's numbers are the library's), and the other rows are left as they are. The engine swaps the tables before every pass; a prefill pass uses the
prompt deltas of its rows, a decode pass the generated deltas, which is how
``positions`` stays per row and absolute (the engine never mixes prompt and
generated tokens in one pass). Adding a zero row leaves a hidden state
bit-for-bit unchanged, so unsteered rows in a steered batch are exact.

Tensors: ``d`` is the model's hidden size, ``B`` the rows of the current pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, cast

import torch
from torch import Tensor, nn

from steering.apply import ONE_VECTOR_MODES, mode_op
from steering.hooks import (
    HookGroup,
    LayerError,
    Op,
    Site,
    SteeringError,
    layer_device,
    layer_dtype,
    num_layers,
    patch,
    span_basis,
    wide_dtype,
)
from steering.vectors import SteeringVector

Key = tuple[str, int]  # (site, layer)
Phase = Literal["prompt", "generated"]
Placement = Mapping[int, tuple[torch.device, torch.dtype]]  # layer -> where it runs, in which dtype


@dataclass(frozen=True)
class Term:
    """One resolved steering term: ``coef * vector`` at ``layers``, on the tokens ``apply_to`` names.

    With ``mode="ablate"`` the vector's direction is projected out instead
    (``coef`` is not used); the other modes are those of ``st.steer``.
    """

    vector: SteeringVector
    coef: float
    layers: tuple[int, ...]
    apply_to: str = "all"
    mode: str = "add"


@dataclass(frozen=True)
class RowDeltas:
    """What one request does, per ``(site, layer)``, at prompt and at generated positions.

    ``prompt`` / ``generated`` hold the ``[d_model]`` delta it adds,
    ``ablate_prompt`` / ``ablate_generated`` the ``[k, d_model]`` orthonormal
    basis whose span it projects out first, ``op_prompt`` / ``op_generated``
    the op of a one-vector mode (clamp, angular, affine) run between the two.
    """

    prompt: Mapping[Key, Tensor] = field(default_factory=dict)
    generated: Mapping[Key, Tensor] = field(default_factory=dict)
    ablate_prompt: Mapping[Key, Tensor] = field(default_factory=dict)
    ablate_generated: Mapping[Key, Tensor] = field(default_factory=dict)
    op_prompt: Mapping[Key, Op] = field(default_factory=dict)
    op_generated: Mapping[Key, Op] = field(default_factory=dict)

    @property
    def keys(self) -> set[Key]:
        tables = (self.prompt, self.generated, self.ablate_prompt, self.ablate_generated, self.op_prompt, self.op_generated)
        return set().union(*tables)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def phase(self, phase: Phase) -> Mapping[Key, Tensor]:
        return self.prompt if phase == "prompt" else self.generated

    def ablation(self, phase: Phase) -> Mapping[Key, Tensor]:
        return self.ablate_prompt if phase == "prompt" else self.ablate_generated

    def ops(self, phase: Phase) -> Mapping[Key, Op]:
        return self.op_prompt if phase == "prompt" else self.op_generated

    def to(self, placement: Placement) -> RowDeltas:
        """A copy with each layer's tensors where that layer runs (done once per request).

        Deltas take the layer's dtype; ablation bases its `wide_dtype`, since
        the projection runs in float32 at least. Ops cast themselves on first use.
        """

        def move(table: Mapping[Key, Tensor], wide: bool) -> Mapping[Key, Tensor]:
            out = {}
            for key, value in table.items():
                device, dtype = placement[key[1]]
                out[key] = value.to(device=device, dtype=wide_dtype(dtype) if wide else dtype)
            return MappingProxyType(out)

        return RowDeltas(
            move(self.prompt, False),
            move(self.generated, False),
            move(self.ablate_prompt, True),
            move(self.ablate_generated, True),
            self.op_prompt,
            self.op_generated,
        )


NO_STEERING = RowDeltas()


def layer_placement(model: nn.Module) -> Placement:
    """``layer -> (device, dtype)`` for every decoder block: where per-row tables must live."""
    return MappingProxyType({i: (layer_device(model, i), layer_dtype(model, i)) for i in range(num_layers(model))})


def build_row_deltas(terms: Sequence[Term]) -> RowDeltas:
    """Fold ``terms`` into one float32 delta per ``(site, layer)`` and phase (and bases, ops: see `RowDeltas`).

    Raises:
        SteeringError: two one-vector-mode terms at one layer in one phase
            (as ``st.steer`` refuses), or what `steering.apply.mode_op` raises.

    Example:
        >>> deltas = build_row_deltas([Term(vec, 4.0, (12,), "generated")])  # doctest: +SKIP
        >>> list(deltas.generated), list(deltas.prompt)  # doctest: +SKIP
        ([('block_output', 12)], [])
    """
    tables: dict[str, dict[Key, Tensor]] = {}
    op_tables: dict[str, dict[Key, Op]] = {}
    for phase in ("prompt", "generated"):
        items: dict[Key, list[tuple[Tensor, float]]] = {}
        ablate: dict[Key, list[Tensor]] = {}
        ops: dict[Key, Op] = {}
        for term in terms:
            if term.apply_to not in ("all", phase):
                continue
            for layer in term.layers:
                key, direction = (term.vector.site, layer), term.vector.directions[layer]
                if term.mode == "ablate":
                    ablate.setdefault(key, []).append(direction)
                elif term.mode in ONE_VECTOR_MODES:
                    if key in ops:
                        raise SteeringError(f"mode={term.mode!r} takes one vector per layer; {key[0]}[{layer}] has two one-vector terms")
                    ops[key] = mode_op(term.mode, direction, term.coef, term.vector, layer)
                else:
                    items.setdefault(key, []).append((direction, term.coef))
        # The same expressions as steering.apply.build_ops, so the bits match.
        tables[phase] = {key: sum(c * d for d, c in pairs) for key, pairs in sorted(items.items())}  # type: ignore[misc]
        tables[f"ablate_{phase}"] = {key: span_basis(torch.stack(ds)) for key, ds in sorted(ablate.items())}
        op_tables[f"op_{phase}"] = dict(sorted(ops.items(), key=lambda item: item[0]))
    t, o = {k: MappingProxyType(v) for k, v in tables.items()}, {k: MappingProxyType(v) for k, v in op_tables.items()}
    return RowDeltas(t["prompt"], t["generated"], t["ablate_prompt"], t["ablate_generated"], o["op_prompt"], o["op_generated"])


class _RowOp:
    """`hooks.Op` adding the current step table's ``[B, d]`` rows for one ``(site, layer)``."""

    def __init__(self, owner: RowSteering, key: Key) -> None:
        self._owner = owner
        self._key = key

    def __call__(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        owner = self._owner
        if not owner.armed:
            return hidden
        basis = owner.ablation.get(self._key)
        if basis is not None:  # [B, k, d]: project each row's span out, as AblateOp does (in float32 at least)
            wide = hidden.to(wide_dtype(hidden.dtype))
            basis = self._fit(basis, wide)
            hidden = (wide - (wide @ basis.transpose(1, 2)) @ basis).to(hidden.dtype)
        row_ops = owner.row_ops.get(self._key)
        if row_ops is not None:  # each on its own row, as st.steer runs it in a batch of one
            out = hidden.clone()
            for row, op in row_ops:
                if row >= hidden.shape[0]:
                    raise LayerError(f"op list for {self._key} names row {row} but the batch has {hidden.shape[0]}")
                out[row : row + 1] = op(hidden[row : row + 1], None)
            hidden = out
        delta = owner.table.get(self._key)
        if delta is not None:
            hidden = hidden + self._fit(delta, hidden)[:, None, :]
        return hidden

    def _fit(self, rows: Tensor, hidden: Tensor) -> Tensor:
        if rows.shape[0] != hidden.shape[0]:
            raise LayerError(f"step table for {self._key} has {rows.shape[0]} rows but the batch has {hidden.shape[0]}")
        # Tables are built where each layer runs (`RowDeltas.to`); this cast is only a safety net.
        return rows if rows.dtype == hidden.dtype and rows.device == hidden.device else rows.to(hidden.device, hidden.dtype)


class RowSteering:
    """The hooks and per-pass table of batched per-row steering.

    Only the thread that runs the model may call `ensure`, `set_rows` and
    `clear` (the engine's scheduler thread).

    Example:
        >>> rows = RowSteering(model)  # doctest: +SKIP
        >>> rows.ensure(deltas.keys)  # doctest: +SKIP
        >>> rows.set_rows([deltas, NO_STEERING], "generated", width=576, device=dev, dtype=dt)  # doctest: +SKIP
        >>> # row 0 steered, row 1 not
        >>> model(...)  # doctest: +SKIP
        >>> # any later pass runs unsteered until the next set_rows
        >>> rows.disarm()  # doctest: +SKIP
        >>> rows.remove()  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._groups: dict[Key, HookGroup] = {}
        self.table: dict[Key, Tensor] = {}
        self.ablation: dict[Key, Tensor] = {}
        self.row_ops: dict[Key, list[tuple[int, Op]]] = {}
        self.armed = False  # the table applies only to the pass it was set for
        self._table_key: tuple[object, ...] | None = None

    @property
    def hooked(self) -> list[Key]:
        """The ``(site, layer)`` pairs with a hook, sorted."""
        return sorted(self._groups)

    def ensure(self, keys: Iterable[Key]) -> None:
        """Register a hook for each ``(site, layer)`` not hooked yet."""
        for site, layer in sorted(set(keys) - set(self._groups)):
            op = _RowOp(self, (site, layer))
            self._groups[(site, layer)] = patch(self._model, {layer: op}, site=cast(Site, site), label=f"serve rows {site}[{layer}]")

    def set_rows(self, rows: Sequence[RowDeltas], phase: Phase, *, ids: Sequence[object], width: int, placement: Placement) -> None:
        """Make ``rows`` (one per batch row, in order) the table of the next pass.

        ``ids`` identify the rows; the stacked table is reused while they and
        ``phase`` stay the same (decode steps of an unchanged batch).
        ``placement`` is where each layer runs (`layer_placement`).
        """
        key = (phase, *ids)
        self.armed = True
        if key == self._table_key:
            return
        tables = [row.phase(phase) for row in rows]
        bases = [row.ablation(phase) for row in rows]
        row_ops: dict[Key, list[tuple[int, Op]]] = {}
        for i, row in enumerate(rows):
            for k, op in row.ops(phase).items():
                row_ops.setdefault(k, []).append((i, op))
        keys = set().union(*(t.keys() for t in tables)) if tables else set()
        ablate_keys = set().union(*(b.keys() for b in bases)) if bases else set()
        self.ensure(keys | ablate_keys | set(row_ops))
        self.row_ops = row_ops
        table: dict[Key, Tensor] = {}
        for k in keys:
            device, dtype = placement[k[1]]
            zero = torch.zeros(width, device=device, dtype=dtype)
            table[k] = torch.stack([t.get(k, zero) for t in tables])
        self.table = table
        ablation: dict[Key, Tensor] = {}
        for k in ablate_keys:
            rank = max(b[k].shape[0] for b in bases if k in b)
            device, dtype = placement[k[1]]
            stacked = torch.zeros(len(rows), rank, width, device=device, dtype=wide_dtype(dtype))
            for i, b in enumerate(bases):
                if k in b:
                    stacked[i, : b[k].shape[0]] = b[k]
            ablation[k] = stacked
        self.ablation = ablation
        self._table_key = key

    def disarm(self) -> None:
        """Stop applying the table (after each pass), keeping it for reuse by `set_rows`."""
        self.armed = False

    def keep(self, keys: Iterable[Key]) -> None:
        """Remove the hooks of every ``(site, layer)`` not in ``keys`` (those no row in flight needs).

        Unsteered traffic then runs with no hooks of ours at all.
        """
        unused = set(self._groups) - set(keys)
        if not unused:
            return
        self.clear()  # the cached table may name a removed key
        for key in sorted(unused):
            self._groups.pop(key).remove()

    def clear(self) -> None:
        """Forget the table."""
        self.armed = False
        self.table, self.ablation, self.row_ops = {}, {}, {}
        self._table_key = None

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        self.clear()
        groups, self._groups = self._groups, {}
        for group in groups.values():
            group.remove()

    def __repr__(self) -> str:
        return f"RowSteering(hooks={self.hooked}, rows={next(iter(self.table.values())).shape[0] if self.table else 0})"
