"""Fold a constant residual-stream delta into a bias, so steering runs no Python per token.

Where block ``i`` ends with ``output = residual + mlp(x)`` and the MLP ends
with a linear layer, adding a constant ``delta`` to the block's output equals
adding ``delta`` to that linear layer's bias: nothing sits between the linear
layer and the residual add but dropout (a no-op in eval mode). `fold` makes
that change in place and returns a `HookGroup` with no hooks, only finalizers
that put the bias back, bit for bit, on ``remove()``. A linear layer without a
bias gets a temporary bias ``Parameter`` that is unregistered on removal.

===================  ==========================  ========================================
block class          last linear of the MLP      notes
===================  ==========================  ========================================
Llama, Qwen2/3,      ``mlp.down_proj``           no bias by default: one is added
Mistral, Gemma, Phi3
GPT-2                ``mlp.c_proj`` (Conv1D)     has a bias
GPT-NeoX             ``mlp.dense_4h_to_h``       parallel residual adds it exactly once
OPT                  ``fc2``                     only with ``do_layer_norm_before``
Gemma 2 / Gemma 3    ``mlp.down_proj``           ``mlp_output`` only: a post-feedforward
                                                 norm follows it, so ``block_output``
                                                 cannot fold
===================  ==========================  ========================================

Unknown block classes never fold (`fold_blocker` names the reason, and
`steering.steer(backend="auto")` falls back to hooks); add an entry to
`FOLD_TARGETS` to teach it a new architecture.

Several folds may be active on one module at once and be removed in any order:
the module keeps its original bias and the list of active deltas, and its bias
is recomputed as ``original + sum(deltas)`` on every change, so the last
removal restores the original exactly.

Folding changes shared parameters, so every caller of the model sees it,
from any thread: a fold is *process-wide*, not per-thread. `fold` therefore
refuses (`FoldConflictError`) when the model is in use elsewhere: declared
shared with `share` (a serving engine, say), or steered by another thread
through a fold or hooks (`hooks.patch` records its thread too). Within one
thread folds nest freely. `steering.steer(backend="auto")` then falls back to
hooks with a `RuntimeWarning` (hooks are also seen by every caller of the
module; only the weights stay untouched). Folds, their bookkeeping and the
token counter are guarded by one lock.

A block that accelerate offloaded (``device_map`` with ``"cpu"``/``"disk"``
offload, or a model dispatched from ``meta``) keeps its weights on ``meta``,
and its ``AlignDevicesHook`` loads them from a ``weights_map`` before each
forward pass and drops them after. There the folded bias is written into that
weights map (an `OverlaidWeights` on the hook, computed on the CPU where
accelerate keeps the weights), so the hook loads it with the weights; on the
last removal the hook gets its own weights map back and a temporary bias goes.

While folded, reading ``mlp_output`` at a folded layer sees the delta (it is
inside the MLP now), and ``state_dict()`` has a bias entry for a linear layer
that had none. Under ``torch.compile`` a changed bias value needs no
recompilation; a bias that appears or disappears does (once per state, then
cached).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .devices import OverlaidWeights, offload_slot
from .errors import LayerError
from .handles import HookGroup
from .layers import decoder_layers, normalize_layer, num_layers, resolve_layers

# block class name -> (dotted path of the MLP's last linear layer, whether block_output can fold)
FOLD_TARGETS: dict[str, tuple[str, bool]] = {
    "LlamaDecoderLayer": ("mlp.down_proj", True),
    "MistralDecoderLayer": ("mlp.down_proj", True),
    "Qwen2DecoderLayer": ("mlp.down_proj", True),
    "Qwen3DecoderLayer": ("mlp.down_proj", True),
    "GemmaDecoderLayer": ("mlp.down_proj", True),
    "Phi3DecoderLayer": ("mlp.down_proj", True),
    "GPT2Block": ("mlp.c_proj", True),
    "GPTNeoXLayer": ("mlp.dense_4h_to_h", True),
    "OPTDecoderLayer": ("fc2", True),
    # A post-feedforward RMSNorm follows down_proj: only the MLP's own output can fold.
    "Gemma2DecoderLayer": ("mlp.down_proj", False),
    "Gemma3DecoderLayer": ("mlp.down_proj", False),
}

FOLD_SITES: tuple[str, ...] = ("block_output", "mlp_output")


@dataclass
class _Offloaded:
    """Where accelerate loads an offloaded linear layer's bias from: ``overlay[key]`` on its hook."""

    hook: Any  # accelerate's AlignDevicesHook
    overlay: OverlaidWeights  # the hook's weights_map while folded
    key: str


@dataclass
class _FoldState:
    """What one module looked like before the first fold, and the folds active on it."""

    original: Tensor | None  # exact copy of the bias, or None where there was none
    param: nn.Parameter  # the bias while folded (on meta for an offloaded module: `offloaded` carries the value)
    offloaded: _Offloaded | None = None
    deltas: dict[int, Tensor] = field(default_factory=dict)  # fold token -> delta


class FoldConflictError(LayerError):
    """Folding would change weights that another thread or a declared sharer is using."""


@dataclass(frozen=True)
class _User:
    """Who steers a model: a thread (by ident and name), or ``None`` for a declared sharer."""

    thread: int | None
    who: str


# Keyed weakly so a model that is dropped while folded does not stay alive.
_STATES: weakref.WeakKeyDictionary[nn.Module, _FoldState] = weakref.WeakKeyDictionary()
_USERS: weakref.WeakKeyDictionary[nn.Module, dict[int, _User]] = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()  # guards _STATES, _USERS and the token counter
_tokens = itertools.count()


def claim(model: nn.Module, what: str, *, shared: bool = False) -> _Release:
    """Record that the current thread (or, with ``shared``, everyone) steers ``model``.

    Returns the finalizer that withdraws the claim (idempotent); `patch` and
    `fold` put it into their groups.
    """
    thread = threading.current_thread()
    user = _User(None if shared else thread.ident, what if shared else f"{what} on thread {thread.name!r}")
    with _LOCK:
        token = next(_tokens)
        _USERS.setdefault(model, {})[token] = user
    return _Release(model, token)


class _Release:
    """Finalizer that withdraws one claim; safe to call twice."""

    def __init__(self, model: nn.Module, token: int) -> None:
        self._model = weakref.ref(model)
        self._token = token

    def __call__(self) -> None:
        model = self._model()
        with _LOCK:
            users = _USERS.get(model) if model is not None else None
            if model is not None and users is not None:
                users.pop(self._token, None)
                if not users:
                    del _USERS[model]


def share(model: nn.Module, owner: str) -> HookGroup:
    """Declare ``model`` shared (served, say): nobody may fold into it until the group is removed.

    Example:
        >>> group = share(model, "server engine")  # doctest: +SKIP
        >>> st.steer(model, vec, backend="fold")  # doctest: +SKIP
        Traceback (most recent call last):
        FoldConflictError: cannot fold steering into model weights: the model is shared by server engine ...
        >>> group.remove()  # doctest: +SKIP
    """
    group = HookGroup(f"shared by {owner}")
    group.on_remove(claim(model, owner, shared=True))
    return group


def fold_conflict(model: nn.Module) -> str | None:
    """Why folding into ``model`` now would leak into someone else's forward passes, or ``None``."""
    me = threading.get_ident()
    with _LOCK:
        others = [u for u in _USERS.get(model, {}).values() if u.thread != me]
    if not others:
        return None
    shared = sorted({u.who for u in others if u.thread is None})
    if shared:
        return f"the model is shared by {', '.join(shared)}"
    return f"the model is steered by {', '.join(sorted({u.who for u in others}))}"


def unfolded_parameters(model: nn.Module) -> list[tuple[str, Tensor]]:
    """``model.named_parameters()`` as they are without any active fold.

    A folded bias appears with its original value; a bias that exists only
    because of a fold is left out. Used by `vectors.model_fingerprint`.
    Folded modules are found by module, not by parameter: accelerate's hook
    replaces an offloaded module's parameter objects on every forward pass.
    """
    with _LOCK:
        originals = {id(module): state.original for module, state in _STATES.items()}
    out: list[tuple[str, Tensor]] = []
    seen: set[int] = set()
    # The order and de-duplication of model.named_parameters().
    for prefix, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{prefix}.{local}" if prefix else local
            if local != "bias" or id(module) not in originals:
                out.append((name, param))
            elif (original := originals[id(module)]) is not None:
                out.append((name, original))
    return out


def _out_features(module: nn.Module) -> int | None:
    weight = module.weight
    assert isinstance(weight, Tensor)
    if type(module) is nn.Linear:
        return int(weight.shape[0])
    if type(module).__name__ == "Conv1D":  # transformers' GPT-2 layer: weight is [in, out]
        return int(weight.shape[1])
    return None


def fold_target(model: nn.Module, layer: int, site: str = "block_output") -> nn.Module | str:
    """The linear layer whose bias carries a delta for ``site`` of ``layer``, or why there is none."""
    return _target(model, decoder_layers(model)[layer], site)


def _target(model: nn.Module, block: nn.Module, site: str) -> nn.Module | str:
    if site not in FOLD_SITES:
        return f"site {site!r} cannot fold (only {', '.join(FOLD_SITES)})"
    if model.training:
        return "the model is in training mode (dropout after the linear layer would scale the bias)"
    kind = type(block).__name__
    entry = FOLD_TARGETS.get(kind)
    if entry is None:
        return f"{kind} is not in hooks.fold.FOLD_TARGETS"
    path, block_ok = entry
    if site == "block_output" and not block_ok:
        return f"{kind} normalises the MLP output after its last linear layer"
    if site == "block_output" and getattr(block, "do_layer_norm_before", True) is False:
        return f"{kind} applies a layer norm after the residual add (do_layer_norm_before=False)"
    if site == "mlp_output" and not path.startswith("mlp."):
        return f"{kind} has no MLP module (no mlp_output site)"
    module: object = block
    for part in path.split("."):
        module = getattr(module, part, None)
    if not isinstance(module, nn.Module) or _out_features(module) is None:
        return f"{kind}.{path} is not a plain nn.Linear or Conv1D ({type(module).__name__})"
    weight = module.weight
    if weight.device.type == "meta" and _offloaded_key(model, module) is None:
        return f"{kind}.{path} has its weights on the meta device and no accelerate hook loads them"
    bias = getattr(module, "bias", None)
    if bias is not None and not isinstance(bias, Tensor):
        return f"{kind}.{path}.bias is not a tensor"
    return module


def _offloaded_key(model: nn.Module, module: nn.Module) -> tuple[Any, str] | None:
    """The accelerate hook that loads ``module``'s offloaded weight, and the key its bias has there."""
    name = next((n for n, m in model.named_modules() if m is module), None)
    slot = None if name is None else offload_slot(model, f"{name}.weight" if name else "weight")
    if slot is None:
        return None
    hook, key = slot
    return hook, key[: -len("weight")] + "bias"


def _targets(model: nn.Module, layers: int | Iterable[int] | None, site: str) -> dict[int, nn.Module] | str:
    """Fold target per resolved layer, or the first reason one cannot fold."""
    blocks = decoder_layers(model)  # found once: the lookup walks the module tree
    out: dict[int, nn.Module] = {}
    seen: set[int] = set()
    for index in resolve_layers(model, layers):
        target = _target(model, blocks[index], site)
        if isinstance(target, str):
            return target
        if id(target) in seen:  # a module shared by several blocks would get every delta
            return f"layer {index} shares its linear layer with another steered layer"
        seen.add(id(target))
        out[index] = target
    return out


def fold_blocker(model: nn.Module, layers: int | Iterable[int] | None, site: str = "block_output") -> str | None:
    """Why ``layers`` at ``site`` cannot fold, or ``None`` when all of them can.

    Example:
        >>> fold_blocker(gemma2, [3])  # doctest: +SKIP
        'Gemma2DecoderLayer normalises the MLP output after its last linear layer'
    """
    targets = _targets(model, layers, site)
    return targets if isinstance(targets, str) else None


def fold(model: nn.Module, deltas: Mapping[int, Tensor], *, site: str = "block_output", label: str = "") -> HookGroup:
    """Add ``deltas[layer]`` (``[d_model]``) at ``site`` of each layer by folding it into a bias.

    Args:
        model: a Hugging Face decoder-only model in eval mode.
        deltas: layer index (negative allowed) -> constant delta for every token and row.
        site: ``block_output`` or ``mlp_output``.
        label: shown in the group's ``repr``.

    Returns:
        A `HookGroup` holding no hooks; ``remove()`` (or leaving its ``with``
        block) restores every bias exactly, in any order relative to other folds.

    Raises:
        LayerError: if a layer cannot fold (the message says why; use hooks
            instead) or a delta has the wrong shape. Nothing stays changed.
        FoldConflictError: if the model is shared (`share`) or steered by
            another thread: the folded bias would be seen there too.

    Example:
        >>> with fold(model, {12: 4.0 * v}):  # doctest: +SKIP
        ...     model.generate(**inputs, max_new_tokens=20)
    """
    if not deltas:
        return HookGroup(label)
    indices = resolve_layers(model, list(deltas))  # checks the range, naming a bad index
    depth = num_layers(model)
    resolved = {normalize_layer(layer, depth): delta for layer, delta in deltas.items()}
    if len(resolved) != len(deltas):
        raise LayerError(f"layers {sorted(deltas)} name the same layer twice")
    targets = _targets(model, indices, site)
    if isinstance(targets, str):
        raise LayerError(f"cannot fold steering into a bias: {targets}; use the hook backend")
    group = HookGroup(label)
    # One lock from the conflict check to the last delta: no other thread can
    # claim the model in between.
    with _LOCK:
        conflict = fold_conflict(model)
        if conflict is not None:
            raise FoldConflictError(f"cannot fold steering into model weights: {conflict}, and a fold changes them for every caller")
        try:
            group.on_remove(claim(model, "a fold"))
            for index, delta in sorted(resolved.items()):
                module = targets[index]
                width = _out_features(module)
                if delta.shape != (width,):
                    raise LayerError(f"a folded delta must be [{width}], got shape {tuple(delta.shape)} for layer {index}")
                group.on_remove(_add(model, module, delta.detach()))
        except BaseException:
            group.remove()
            raise
    return group


@torch.no_grad()
def _add(model: nn.Module, module: nn.Module, delta: Tensor) -> _Undo:
    """Add one delta to ``module``'s bias (the caller holds `_LOCK`)."""
    state = _STATES.get(module)
    if state is None:
        state = _start(model, module)
        _STATES[module] = state
    token = next(_tokens)
    # An offloaded bias is computed where accelerate keeps the weights (the CPU), and loaded from there.
    device = torch.device("cpu") if state.offloaded is not None else state.param.device
    state.deltas[token] = delta.to(device=device, dtype=state.param.dtype)
    _refresh(module, state)
    return _Undo(module, token)


def _start(model: nn.Module, module: nn.Module) -> _FoldState:
    """Record ``module``'s bias before its first fold, giving it one if it has none."""
    weight, bias = module.weight, module.bias
    assert isinstance(weight, Tensor)
    offloaded = _offloaded_key(model, module) if weight.device.type == "meta" else None
    if bias is None:
        # On meta for an offloaded module: accelerate's hook loads it from the weights map.
        param = nn.Parameter(torch.zeros(_out_features(module) or 0, device=weight.device, dtype=weight.dtype), requires_grad=False)
        module.bias = param
        original = None
    else:
        assert isinstance(bias, nn.Parameter)
        param = bias
        original = bias.detach().clone() if offloaded is None else torch.as_tensor(offloaded[0].weights_map[offloaded[1]]).clone()
    if offloaded is None:
        return _FoldState(original=original, param=param)
    hook, key = offloaded
    # A bias written into the module would be dropped when the hook moves it back to meta after
    # each forward pass: the folded value goes where the hook loads it from. One overlay per hook,
    # shared by the folded modules under it.
    if not isinstance(hook.weights_map, OverlaidWeights):
        hook.weights_map = OverlaidWeights(hook.weights_map, {})
    return _FoldState(original=original, param=param, offloaded=_Offloaded(hook, hook.weights_map, key))


@torch.no_grad()
def _refresh(module: nn.Module, state: _FoldState) -> None:
    """Set the bias to ``original + sum(active deltas)``, or restore it when none is left."""
    off = state.offloaded
    if not state.deltas:
        del _STATES[module]
        if state.original is None:
            module.bias = None  # type: ignore[assignment]  # unregisters the temporary parameter, as Linear(bias=False) has it
        elif off is None:
            state.param.copy_(state.original)
        if off is not None:
            off.overlay.replaced.pop(off.key, None)
            if not off.overlay.replaced and off.hook.weights_map is off.overlay:
                off.hook.weights_map = off.overlay.base  # the weights map accelerate built, untouched
        return
    if off is not None:
        total = (
            torch.zeros(state.param.shape, dtype=state.param.dtype)
            if state.original is None
            else state.original.to(state.param.dtype, copy=True)
        )
    else:
        total = torch.zeros_like(state.param) if state.original is None else state.original.clone()
    for delta in state.deltas.values():
        total += delta
    if off is not None:
        off.overlay.replaced[off.key] = total
    else:
        state.param.copy_(total)


class _Undo:
    """Finalizer that withdraws one delta; safe to call twice."""

    def __init__(self, module: nn.Module, token: int) -> None:
        self._module = weakref.ref(module)
        self._token = token

    def __call__(self) -> None:
        module = self._module()
        with _LOCK:
            state = _STATES.get(module) if module is not None else None
            if module is not None and state is not None and state.deltas.pop(self._token, None) is not None:
                _refresh(module, state)
