"""Per-sequence gates: turn an operation on or off for each row from its prompt.

Conditional steering (CAST) decides, once per sequence, whether to steer it.
A `PromptGate` is a pre-hook on the decoder stack. When a forward pass starts
a new prompt (an empty cache, not ``generate(use_cache=False)`` re-feeding
text; `PositionTracker` decides), it runs that prompt alone up to the deepest
condition layer (no cache, stopped there), takes the mean hidden state over
each row's non-pad tokens at every condition layer and asks ``decide`` for one
boolean per row. Only then does the real pass run, so every steered layer,
earlier or later than the condition layers, sees the decision for the whole
prompt and every generated token. `GatedOp` wraps any `Op`: rows whose gate is
off get their hidden states back untouched, bit for bit.

The gate is per-row state of the batch the prompt pass had; a later pass with
another batch size is refused. Hooks of this group do nothing during the gate's
own pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor, nn

from .errors import LayerError
from .patch import Op
from .positions import PositionTracker
from .record import capture, run_until_stopped
from .sites import Site
from .tokens import read_rows

Decide = Callable[[dict[int, Tensor]], Tensor]
"""``decide({layer: mean hidden [batch, d_model]}) -> bool [batch]`` (True: steer that row)."""


class PromptGate:
    """Pre-hook state on the decoder stack: ``on`` is the ``[batch]`` bool gate of the current sequences."""

    def __init__(self, stack: nn.Module, layers: Iterable[int], decide: Decide, *, site: Site = "block_output") -> None:
        self.stack = stack
        self.layers = sorted(set(layers))
        if not self.layers:
            raise LayerError("a gate needs at least one condition layer")
        self.decide = decide
        self.site = site
        self.on: Tensor | None = None
        self.busy = False  # True while the gate runs its own pass
        self._tracker = PositionTracker(stack)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.busy:
            return
        self._tracker(module, args, kwargs)
        offset, prompt_len = self._tracker.offset, self._tracker.prompt_len
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], Tensor):
            ids = args[0]
        embeds = kwargs.get("inputs_embeds")
        if not isinstance(ids, Tensor) and not isinstance(embeds, Tensor):
            raise LayerError("conditional steering needs input_ids or inputs_embeds to read the prompt")
        seq_len = ids.shape[-1] if isinstance(ids, Tensor) else cast(Tensor, embeds).shape[1]
        if isinstance(offset, Tensor) or isinstance(prompt_len, Tensor):
            offset, prompt_len = int(offset), int(prompt_len)  # static cache: one sync per pass
        if offset != 0 or prompt_len != seq_len:
            return  # a continuation: the gate of this sequence stands
        inputs: dict[str, Any] = {"input_ids": ids} if isinstance(ids, Tensor) else {"inputs_embeds": embeds}
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None
        for name in ("attention_mask", "position_ids"):
            if isinstance(kwargs.get(name), Tensor):
                inputs[name] = kwargs[name]
        self.on = self.read(inputs, mask)

    @torch.no_grad()
    def read(self, inputs: dict[str, Any], mask: Tensor | None) -> Tensor:
        """Run ``inputs`` through the stack up to the deepest condition layer; return the gate per row."""
        means: dict[int, Tensor] = {}

        def keep(layer: int, hidden: Tensor) -> None:
            means[layer] = hidden.float().mean(1) if mask is None else read_rows(hidden.float(), mask.to(hidden.device).bool())

        self.busy = True
        try:
            with capture(self.stack, self.layers, keep, site=self.site, stop_after_last=True):
                run_until_stopped(self.stack, **inputs, use_cache=False)
        finally:
            self.busy = False
        on = self.decide(means)
        if on.dtype is not torch.bool or on.dim() != 1:
            raise LayerError(f"a gate decision must be a 1-d bool tensor, got {on.dtype} of shape {tuple(on.shape)}")
        return on


class GatedOp:
    """``op`` on the rows whose gate is on; the other rows pass through unchanged."""

    def __init__(self, op: Op, gate: PromptGate) -> None:
        self.op = op
        self.gate = gate

    def __call__(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        gate = self.gate
        if gate.busy:
            return hidden
        on = gate.on
        if on is None:
            raise LayerError("conditional steering saw no prompt pass: start generation on an empty KV cache")
        if on.shape[0] != hidden.shape[0]:
            raise LayerError(f"the gate was read for {on.shape[0]} rows but this pass has {hidden.shape[0]}; read a new prompt")
        if not bool(on.any()):
            return hidden
        new = self.op(hidden, mask)
        if bool(on.all()):
            return new
        return torch.where(on.to(hidden.device)[:, None, None], new, hidden)
