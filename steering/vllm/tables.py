"""Worker side of the vLLM plugin: persistent per-slot tables and the hooks that read them.

vLLM packs the tokens of every scheduled request into one flat ``[T, d]``
sequence. Before each forward pass `StepTables.prepare` reads vLLM's own
metadata for that step (the input batch's ``req_ids``, the per-token request
index ``req_indices`` and absolute ``positions`` the model runner has just
built) and writes one *slot* per token into ``token_slot``: the slot of the
request's prompt-phase steering for positions ``< num_prompt_tokens``, of its
generated-phase steering otherwise, 0 (a zero row) for unsteered requests and
padding. That is `st.steer`'s ``apply_to`` on absolute positions, also under
chunked prefill and preemption (a recomputed sequence has the same positions).

Each distinct steering config (payload ``key``) holds two slots while it is in
flight; its rows in the per-layer tables ``delta[layer]: [S, d]`` and
``basis[layer]: [S, K, d]`` are written when it gets them and reused on later
steps. This is the bound on distinct configs in flight, and vLLM's scheduler
enforces it: a step runs at most ``max_num_seqs`` requests, so the ``S = 2 *
max_num_seqs + 1`` slots always hold every config of the step, and the rest
wait in vLLM's queue (admission waits, no request fails). A config not in the
step gives up its pair, least recently used first. Vector memory is the fixed
tables plus at most ``4 * max_num_seqs`` decoded configs (least recent dropped).
The op at layer ``i`` is a gather and an add::

    r = hidden + residual                       # the residual stream after block i
    hidden -= (r . basis[i][slot]) basis[i][slot]   # ablate (projection out), first
    hidden += delta[i][slot]                    # add

All tables are allocated once at model load and only written in place, so a
captured CUDA graph replays the current values. Eagerly (``enforce_eager``)
a layer no scheduled request steers skips the op; under graphs it always runs
(zero rows: exact no-ops).

Tensors: ``T`` tokens of the step, ``S`` slots, ``K`` ablation rank, ``d`` hidden size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from steering.hooks import HookGroup

from .payload import Decoded, decode


class StepTables:
    """The persistent tables of one worker and its hooks on the model's decoder layers.

    Args:
        layers: decoder layer index -> module, the layers this rank holds.
        width: hidden size ``d``.
        max_requests: the most requests in one step (``max_num_seqs``): ``S = 2 * max_requests + 1``.
        max_tokens: length of the per-token slot buffer (the runner's padded token count).
        rank: ``K``, ablated directions per layer and request.
        device, dtype: where the model runs.
        static: CUDA graphs / compilation on: every layer's op always runs.
    """

    def __init__(
        self,
        layers: dict[int, nn.Module],
        *,
        width: int,
        max_requests: int,
        max_tokens: int,
        rank: int,
        device: torch.device,
        dtype: torch.dtype,
        static: bool,
    ) -> None:
        self.width, self.rank, self.static = width, rank, static
        self.slots = 2 * max_requests + 1
        self.token_slot = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self.delta = {i: torch.zeros(self.slots, width, dtype=dtype, device=device) for i in layers}
        self.basis = {i: torch.zeros(self.slots, rank, width, dtype=dtype, device=device) for i in layers}
        self.live: dict[int, tuple[bool, bool]] = {i: (static, static) for i in layers}  # (add, ablate) this step
        self._owner: list[str | None] = [None] * self.slots  # config key of each slot pair's first slot
        self._slot_of: OrderedDict[str, int] = OrderedDict()  # key -> first of its two slots, least recent first
        self._decoded: OrderedDict[str, Decoded] = OrderedDict()
        self._decoded_max = 4 * max_requests
        self._steering = False  # any steered token in the last step
        self.group = HookGroup("vllm steering")
        try:
            for index, module in layers.items():
                self.group.add_forward_hook(module, self._hook(index))
        except BaseException:
            self.group.remove()
            raise

    # ------------------------------------------------------------------ per step
    def prepare(
        self, payloads: Sequence[dict[str, Any] | None], num_prompt: Sequence[int], req_indices: Tensor, positions: Tensor, total: int
    ) -> None:
        """Fill ``token_slot`` for a step of ``len(payloads)`` requests and ``total`` tokens.

        Args:
            payloads: per request, in the input batch's order: its payload or ``None``.
            num_prompt: per request, its prompt length.
            req_indices: ``[total]`` request index of each flat token (vLLM's).
            positions: ``[total]`` absolute position of each flat token (vLLM's).
            total: tokens scheduled in this step (the rest of ``token_slot`` is zeroed: padding).
        """
        if not any(payloads):
            if self._steering:
                self.token_slot.zero_()
                self._steering = False
                if not self.static:
                    self.live = dict.fromkeys(self.live, (False, False))
            return
        decoded = [None if p is None else self._decode(p) for p in payloads]
        keys = {d.key for d in decoded if d is not None}
        prompt_slot = np.zeros(len(payloads), dtype=np.int64)
        gen_slot = np.zeros(len(payloads), dtype=np.int64)
        add: set[int] = set()
        ablate: set[int] = set()
        for i, d in enumerate(decoded):
            if d is None:
                continue
            first = self._slots_for(d, keys)
            prompt_slot[i], gen_slot[i] = first, first + 1
            for phase in ("prompt", "generated"):
                add |= set(d.add[phase])
                ablate |= set(d.ablate[phase])
        device = self.token_slot.device
        req = req_indices[:total].to(device=device, dtype=torch.long)
        is_prompt = positions[:total].to(device) < torch.as_tensor(np.asarray(num_prompt, dtype=np.int64), device=device)[req]
        slots = torch.where(is_prompt, torch.from_numpy(prompt_slot).to(device)[req], torch.from_numpy(gen_slot).to(device)[req])
        self.token_slot[:total].copy_(slots)
        self.token_slot[total:].zero_()
        self._steering = True
        if not self.static:
            self.live = {i: (i in add, i in ablate) for i in self.live}

    def _decode(self, payload: dict[str, Any]) -> Decoded:
        key = str(payload["key"])
        found = self._decoded.get(key)
        if found is None:  # decoded once per content hash, kept while recent
            found = self._decoded[key] = decode(payload)
            while len(self._decoded) > self._decoded_max:
                self._decoded.popitem(last=False)
        self._decoded.move_to_end(key)
        return found

    def _slots_for(self, d: Decoded, in_step: set[str]) -> int:
        first = self._slot_of.get(d.key)
        if first is not None:
            self._slot_of.move_to_end(d.key)
            return first
        # A free pair, else the least recently used pair of a config not in this step.
        used = set(self._slot_of.values())
        free = [s for s in range(1, self.slots, 2) if s not in used]
        if free:
            first = free[0]
        else:
            victim = next(k for k in self._slot_of if k not in in_step)  # exists: S covers every request of a step
            first = self._slot_of.pop(victim)
        self._slot_of[d.key] = first
        self._write(first, d)
        return first

    def _write(self, first: int, d: Decoded) -> None:
        for offset, phase in enumerate(("prompt", "generated")):
            slot = first + offset
            for i in self.delta:
                delta = d.add[phase].get(i)
                if delta is None:
                    self.delta[i][slot].zero_()
                else:
                    self.delta[i][slot].copy_(delta)  # float32 -> model dtype, as AddOp casts
                basis = d.ablate[phase].get(i)
                self.basis[i][slot].zero_()
                if basis is not None:
                    self.basis[i][slot, : basis.shape[0]].copy_(basis)

    # ------------------------------------------------------------------ the op
    def _hook(self, index: int) -> Any:
        delta, basis = self.delta[index], self.basis[index]

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            add, ablate = self.live[index]
            if not (add or ablate):
                return None
            hidden, residual = output
            slots = self.token_slot[: hidden.shape[0]]
            if ablate:
                rows = basis[slots]  # [T, K, d]
                stream = hidden + residual  # the residual stream after this block
                coords = torch.einsum("td,tkd->tk", stream, rows)
                hidden = hidden - torch.einsum("tk,tkd->td", coords, rows)
            if add:
                hidden = hidden + delta[slots]
            return hidden, residual

        return hook

    def remove(self) -> None:
        """Remove the hooks (idempotent)."""
        self.group.remove()

    def __repr__(self) -> str:
        return f"StepTables(layers={sorted(self.delta)}, slots={self.slots}, rank={self.rank}, static={self.static})"
