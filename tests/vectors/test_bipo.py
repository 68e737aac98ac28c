"""BiPO (`vectors.bipo`): its gradient against a per-text reference, what training does, cleanup, files, errors."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from tiny_models import make_tiny

import steering as st
from steering.hooks import decoder_layers
from steering.vectors import bipo as bipo_module
from steering.vectors.methods import METHODS
from steering.vectors.text import pair_texts, tokenize

PAIRS = [
    st.ContrastPair("I love this, it is great.", "I hate this, it is awful.", "How is it?"),
    st.ContrastPair("What a happy day.", "What a sad, dark day.", "Describe today."),
    st.ContrastPair("wonderful news", "terrible news", None),  # no prompt: the whole text is scored
    st.ContrastPair("Lovely.", "Bad.", "And the food?"),
]


def _logprob(model, tok, pair: st.ContrastPair, which: int, v: torch.Tensor, layer: int) -> torch.Tensor:
    """Reference: one text alone (no padding), ``v`` added at ``layer`` by a plain hook, its completion's log-probability."""
    texts = pair_texts(tok, pair)
    ids = tokenize(tok, texts[which], texts[3])
    start = max(len(tokenize(tok, texts[2], texts[3])), 1) if texts[2] else 1
    handle = decoder_layers(model)[layer].register_forward_hook(
        lambda m, a, out: (out[0] + v, *out[1:]) if isinstance(out, tuple) else out + v
    )
    try:
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    finally:
        handle.remove()
    logprobs = torch.log_softmax(logits.float(), -1)
    return sum(logprobs[t - 1, ids[t]] for t in range(start, len(ids)))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_first_step_is_adam_on_the_reference_gradient(arch: str, side: str) -> None:
    """From v = 0, AdamW's first step is -lr * g / (|g| + eps) of the BiPO loss's gradient; g from the per-text reference."""
    model, tok = make_tiny(arch)
    tok.padding_side = side
    layer, beta, lr = 1, 0.1, 0.01
    out = st.bipo_directions(model, tok, PAIRS, [layer], options=st.BipoOptions(epochs=1, lr=lr, beta=beta, batch_size=len(PAIRS)))
    v = torch.zeros(model.config.hidden_size, requires_grad=True)
    margins = []
    for pair in PAIRS:
        with torch.no_grad():
            ref = [_logprob(model, tok, pair, w, torch.zeros_like(v), layer) for w in (0, 1)]
        pos, neg = (_logprob(model, tok, pair, w, v, layer) - ref[w] for w in (0, 1))
        margins.append(beta * (pos - neg))  # d = +1; at v = 0 the gradient is the same for d = -1
    (grad,) = torch.autograd.grad(-F.logsigmoid(torch.stack(margins)).mean(), [v])
    expected = -lr * grad / (grad.abs() + 1e-8)
    assert grad.abs().max() > 1e-4  # the test would be empty on a zero gradient
    torch.testing.assert_close(out[layer], expected, atol=lr * 1e-3, rtol=1e-3)


def _margin(model, tok, vec: st.SteeringVector | None, coef: float) -> float:
    """Mean over the pairs of log p(positive) - log p(negative), steered by coef * vec (reference scoring)."""
    layer = vec.layers[0] if vec is not None else 0
    shift = torch.zeros(model.config.hidden_size) if vec is None else coef * vec.directions[layer]
    with torch.no_grad():
        return float(sum(_logprob(model, tok, p, 0, shift, layer) - _logprob(model, tok, p, 1, shift, layer) for p in PAIRS)) / len(PAIRS)


def test_training_moves_both_sides() -> None:
    """+v makes the positive completions likelier than unsteered, -v the negative ones: both sides are trained."""
    model, tok = make_tiny("llama")
    before = {k: t.clone() for k, t in model.state_dict().items()}
    vec = st.extract(model, tok, PAIRS, layers=[1], method="bipo")
    base = _margin(model, tok, None, 0.0)
    assert _margin(model, tok, vec, 1.0) > base + 0.5
    assert _margin(model, tok, vec, -1.0) < base - 0.5
    assert _margin(model, tok, vec, 0.0) == pytest.approx(base, abs=1e-5)  # coef 0 == unsteered
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())  # the weights are not trained
    assert all(p.grad is None for p in model.parameters())
    assert vec.method == "bipo" and vec.extra["bipo_epochs"] == "3" and vec.extra["bipo_beta"] == "0.1"


def test_layers_are_trained_alone_and_deterministic() -> None:
    model, tok = make_tiny("llama")
    both = st.bipo_directions(model, tok, PAIRS, [0, 2])
    alone = st.bipo_directions(model, tok, PAIRS, [-1])  # the last of 3 layers
    assert list(alone) == [2]
    torch.testing.assert_close(both[2], alone[2])
    again = st.bipo_directions(model, tok, PAIRS, [0, 2])
    assert all(torch.equal(both[k], again[k]) for k in both)
    other = st.bipo_directions(model, tok, PAIRS, [2], options=st.BipoOptions(seed=1))
    assert not torch.equal(other[2], alone[2])


def test_extract_takes_the_settings_by_name_and_records_them() -> None:
    model, tok = make_tiny("llama")
    vec = st.extract(model, tok, PAIRS, layers=[1], method="bipo", options={"seed": 2, "epochs": 1})
    direct = st.bipo_directions(model, tok, PAIRS, [1], options=st.BipoOptions(seed=2, epochs=1))
    torch.testing.assert_close(vec.directions[1], direct[1])
    assert not torch.equal(vec.directions[1], st.bipo_directions(model, tok, PAIRS, [1], options=st.BipoOptions(epochs=1))[1])
    assert (vec.extra["bipo_seed"], vec.extra["bipo_epochs"], vec.extra["bipo_lr"]) == ("2", "1", "0.05")
    with pytest.raises(st.SteeringError, match="bipo has no option 'sed'; its options are epochs, lr, beta, batch_size, seed"):
        st.extract(model, tok, PAIRS, layers=[1], method="bipo", options={"sed": 2})
    with pytest.raises(st.SteeringError, match="bipo option epochs=1.5 must be an integer"):
        st.BipoOptions.from_mapping({"epochs": 1.5})
    with pytest.raises(st.SteeringError, match="bipo option lr='fast' must be a number"):
        st.BipoOptions.from_mapping({"lr": "fast"})
    with pytest.raises(st.SteeringError, match="method 'mean_diff' reads activations and takes none"):
        st.extract(model, tok, PAIRS, layers=[1], options={"seed": 1})
    assert st.BipoOptions.from_mapping({"lr": 1, "epochs": 2.0}) == st.BipoOptions(lr=1.0, epochs=2)


def test_file_round_trip_keeps_the_settings(tmp_path) -> None:
    model, tok = make_tiny("llama")
    vec = st.extract(model, tok, PAIRS, layers=[1, 2], method="bipo", reference=True)
    loaded = st.SteeringVector.load(vec.save(tmp_path / "bipo.safetensors"), model)
    assert loaded.method == "bipo" and dict(vec.extra).items() <= dict(loaded.extra).items()
    assert loaded.reference is not None and set(loaded.reference) == {1, 2}  # the negatives' mean, for the affine modes
    for layer in (1, 2):
        torch.testing.assert_close(loaded.directions[layer], vec.directions[layer])


def test_hooks_are_removed_on_error(monkeypatch) -> None:
    model, tok = make_tiny("llama")
    calls = {"n": 0}
    real = bipo_module.completion_logprobs

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # past the two unsteered reference passes: inside the training loop
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(bipo_module, "completion_logprobs", failing)
    with pytest.raises(RuntimeError, match="boom"):
        st.bipo_directions(model, tok, PAIRS, [1])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_errors() -> None:
    model, tok = make_tiny("llama")
    with pytest.raises(st.SteeringError, match="bipo epochs must be >= 1, got 0"):
        st.BipoOptions(epochs=0)
    with pytest.raises(st.SteeringError, match="bipo lr must be > 0, got -1"):
        st.BipoOptions(lr=-1)
    with pytest.raises(st.SteeringError, match="at least one contrastive pair"):
        st.bipo_directions(model, tok, [], [1])
    with pytest.raises(st.LayerError, match="7"):
        st.bipo_directions(model, tok, PAIRS, [7])
    with pytest.raises(st.SteeringError, match="trains on the model"):
        METHODS["bipo"].fn(None)  # type: ignore[arg-type]


def test_extract_refuses_to_train_under_torch_distributed(monkeypatch) -> None:
    """Each process would train the whole thing again: extract says so instead of splitting pairs it cannot split."""
    extract_module = importlib.import_module("steering.vectors.extract")  # the module, not the function of that name
    model, tok = make_tiny("llama")
    monkeypatch.setattr(extract_module, "data_parallel", lambda device, distributed: object())
    with pytest.raises(st.SteeringError, match="method 'bipo' trains in one process"):
        st.extract(model, tok, PAIRS, layers=[1], method="bipo")


def test_a_loss_that_is_not_finite_stops_training(monkeypatch) -> None:
    model, tok = make_tiny("llama")
    real = bipo_module.completion_logprobs

    def overflowing(model, batch):
        out = real(model, batch)
        return out * float("inf") if torch.is_grad_enabled() else out  # the training passes only

    monkeypatch.setattr(bipo_module, "completion_logprobs", overflowing)
    with pytest.raises(st.SteeringError, match="the loss at layer 1 is not finite"):
        st.bipo_directions(model, tok, PAIRS, [1])
    assert all(not m._forward_hooks for m in model.modules())
