"""BiPO: a steering direction optimised on the pairs' completions, not read off activations.

Bi-directional preference optimisation (Cao et al. 2024, "Personalized Steering
of Large Language Models via Bi-directional Preference Optimization"): for each
layer, a vector ``v`` (from zero) is trained so that adding ``d * v`` at the
layer makes the positive completion more likely than the negative one, relative
to the unsteered model, for ``d = +1``, and the reverse for ``d = -1``:

    loss = -log sigmoid(d * beta * [(log p_dv(pos) - log p(pos)) - (log p_dv(neg) - log p(neg))])

with ``log p`` the summed log-probability of a completion's tokens given its
prompt, ``d`` drawn per batch. Because subtracting the vector is trained too,
the behaviour-off side is fitted directly instead of being the mirror image of
a mean difference (on SmolLM2 that is the side mean differences steer poorly).

Each layer is trained alone (as in the paper), so a window of layers is the
sum of single-layer vectors, as for the other methods. It costs a forward and
backward pass over the pairs per epoch and layer; only ``v`` gets gradients.
The texts are those of `extract` (`vectors.text.pair_texts`); the completion's
tokens are the ones after the formatted prompt (the whole text when the pair
has no prompt).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from steering.hooks import Site, SteeringError, input_device, patch, resolve_layers

from .model_info import hidden_size
from .pairs import ContrastPair
from .text import encode_texts, pair_texts


@dataclass(frozen=True)
class BipoOptions:
    """Training settings (the paper's ``beta``; AdamW on ``v`` alone).

    Attributes:
        epochs: passes over the pairs per layer.
        lr: AdamW learning rate (no weight decay); ``v`` starts at zero.
        beta: scale of the log-likelihood-ratio margin inside the sigmoid.
        batch_size: pairs per optimiser step (each step draws ``d`` once).
        seed: seeds the pair order and the draws of ``d``.
    """

    epochs: int = 3
    lr: float = 0.05
    beta: float = 0.1
    batch_size: int = 10
    seed: int = 0

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> BipoOptions:
        """Options from a config mapping; an unknown name or a value of the wrong type is a `SteeringError` naming it."""
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for name, value in options.items():
            if name not in known:
                raise SteeringError(f"bipo has no option {name!r}; its options are {', '.join(known)}")
            kind = int if known[name] in ("int", int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
                raise SteeringError(f"bipo option {name}={value!r} must be {'an integer' if kind is int else 'a number'}")
            values[name] = kind(value)
        return cls(**values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise SteeringError(f"bipo {name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "beta"):
            if not float(getattr(self, name)) > 0:
                raise SteeringError(f"bipo {name} must be > 0, got {getattr(self, name)}")

    def metadata(self) -> dict[str, str]:
        """The settings as vector-file metadata (``bipo_<name>``)."""
        return {f"bipo_{k}": str(v) for k, v in asdict(self).items()}


class _Trained:
    """Hook op: add ``sign * v``; ``v`` is the tensor being trained (gradients flow)."""

    def __init__(self, v: Tensor) -> None:
        self.v = v
        self.sign = 1.0

    def __call__(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        # The layer may sit on another device than v (device_map); .to() passes the gradient back.
        return hidden + (self.sign * self.v).to(device=hidden.device, dtype=hidden.dtype)


def completion_logprobs(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Summed log-probability of each row's completion tokens ``[batch]`` (float32; differentiable).

    ``batch`` is `vectors.extract.encode_texts` output read as ``mean``: its
    ``_reduce`` mask marks the completion tokens; a token at position ``t`` is
    predicted by the logits at ``t - 1`` (a row's first real token is never scored,
    whichever side the padding is on).
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False)
    logprobs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(2, batch["input_ids"][:, 1:, None])[..., 0]
    # A token counts if it is a completion token and what predicts it is a real one: under
    # left padding a row's first token follows a pad, and is not scored (as under right padding).
    scored = batch["_reduce"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool()
    return (picked * scored.to(picked.dtype)).sum(1)


def bipo_directions(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[ContrastPair],
    layers: Sequence[int],
    *,
    site: Site = "block_output",
    options: BipoOptions | None = None,
    progress: bool | None = None,
) -> dict[int, Tensor]:
    """Train one BiPO vector per layer (each alone); return layer -> float32 direction ``[hidden]``.

    Layers may be negative (from the end); the keys are non-negative indices.

    Raises:
        SteeringError: no pairs, or a loss that stops being finite.
        LayerError: a layer the model does not have.
    """
    opts = options or BipoOptions()
    if not pairs:
        raise SteeringError("bipo needs at least one contrastive pair")
    layers = resolve_layers(model, list(layers))
    device = input_device(model)
    texts = [pair_texts(tokenizer, p) for p in pairs]

    def encode(rows: Sequence[int], which: int) -> dict[str, Tensor]:
        """Inputs of the rows' positive (``which=0``) or negative (1) texts; ``_reduce`` marks the completions."""
        chosen = [texts[r][0] if which == 0 else texts[r][1] for r in rows]
        return encode_texts(tokenizer, chosen, [texts[r][2] for r in rows], [texts[r][3] for r in rows], "mean", device)

    with torch.no_grad():  # the unsteered log-probabilities, the reference of the ratio
        ref = torch.zeros(2, len(pairs))
        for k in range(0, len(pairs), opts.batch_size):
            rows = list(range(k, min(k + opts.batch_size, len(pairs))))
            for which in (0, 1):
                ref[which, rows] = completion_logprobs(model, encode(rows, which)).cpu()
    width = hidden_size(model)
    directions: dict[int, Tensor] = {}
    steps = len(layers) * opts.epochs * -(-len(pairs) // opts.batch_size)
    bar = tqdm(total=steps, desc="bipo", disable=(not progress) if progress is not None else None)
    try:
        for layer in layers:
            directions[layer] = _train_layer(model, encode, ref, layer, width, site, opts, device, bar)
    finally:
        bar.close()
    return directions


def fit_bipo(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[ContrastPair],
    layers: Sequence[int],
    *,
    site: Site,
    progress: bool | None,
    options: Mapping[str, object] | None = None,
) -> tuple[dict[int, Tensor], dict[str, str]]:
    """The registry's form (`vectors.methods.Method.fit`): directions trained with ``options`` (`BipoOptions` names), and the options as metadata."""
    opts = BipoOptions.from_mapping(options or {})
    return bipo_directions(model, tokenizer, pairs, layers, site=site, options=opts, progress=progress), opts.metadata()


def _train_layer(
    model: nn.Module,
    encode: Any,
    ref: Tensor,
    layer: int,
    width: int,
    site: Site,
    opts: BipoOptions,
    device: torch.device,
    bar: Any,
) -> Tensor:
    rng = random.Random(opts.seed)  # the same order and draws for every layer
    v = torch.zeros(width, device=device, requires_grad=True)
    optimiser = torch.optim.AdamW([v], lr=opts.lr, weight_decay=0.0)
    op = _Trained(v)
    with patch(model, {layer: op}, site=site, label=f"bipo layer {layer}"):
        for _ in range(opts.epochs):
            order = list(range(ref.shape[1]))
            rng.shuffle(order)
            for k in range(0, len(order), opts.batch_size):
                rows = order[k : k + opts.batch_size]
                op.sign = rng.choice((1.0, -1.0))
                pos = completion_logprobs(model, encode(rows, 0))
                neg = completion_logprobs(model, encode(rows, 1))
                pos, neg = pos - ref[0, rows].to(pos.device), neg - ref[1, rows].to(neg.device)  # logits' device
                loss = -F.logsigmoid(op.sign * opts.beta * (pos - neg)).mean()
                if not bool(torch.isfinite(loss)):
                    raise SteeringError(f"bipo: the loss at layer {layer} is not finite ({float(loss.detach())}); lower bipo lr")
                # Gradients for v alone: the weights' gradients are never computed.
                (grad,) = torch.autograd.grad(loss, [v])
                v.grad = grad
                optimiser.step()
                bar.update(1)
    return v.detach().float().cpu()
