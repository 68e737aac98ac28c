"""bfloat16 and float16 on the CPU: sums and projections run in float32, against float64 references.

Tolerances (why each is what it is) are listed in tests/README.md.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_models import make_tiny

import steering as st
from steering.hooks import AblateOp, read_rows

PAIRS = [
    ("I love sunny days at the beach, the sky is blue and the birds are singing", "I hate the cold and rainy winter mornings"),
    ("This movie was wonderful, happy and full of joy!", "That film was terrible, sad and boring."),
    ("Great job! Thanks for the help.", "Sorry, I don't know the answer to that question."),
]
PROMPTS = ["Tell me a story about a dragon", "The weather is", "Once upon a time"]


def _kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    ref, oth = torch.log_softmax(reference.double(), -1), torch.log_softmax(other.double(), -1)
    return float((ref.exp() * (ref - oth)).sum(-1).mean())


def test_mean_read_sums_in_float32_not_in_bfloat16() -> None:
    gen = torch.Generator().manual_seed(0)
    # Activations with a large common offset, as real residual streams have: the case where
    # bf16 partial sums lose the most (8 bits of mantissa).
    hidden = (40.0 + torch.randn(2, 300, 64, generator=gen)).to(torch.bfloat16)
    mask = torch.zeros(2, 300, dtype=torch.bool)
    mask[0, 10:], mask[1, :123] = True, True
    reference = torch.stack([hidden[k].double()[mask[k]].mean(0) for k in range(2)])
    got = read_rows(hidden, mask)
    assert got.dtype == torch.float32
    scale = float(reference.abs().max())
    assert float((got.double() - reference).abs().max()) <= 1e-6 * scale
    # The old expression (product and sum in the model dtype) is off by orders of magnitude more.
    weights = mask.to(hidden.dtype)
    old = (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
    assert float((old.double() - reference).abs().max()) > 1e-3 * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_extraction_reads_like_a_float64_sum_of_its_own_activations(dtype: torch.dtype) -> None:
    """``read="mean"`` on a half-precision model: the vector is the float64 mean of the half activations."""
    model, tok = make_tiny("llama")
    model.to(dtype)
    layer = 1
    masks: list[torch.Tensor] = []

    def keep_mask(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        masks.append(kwargs["attention_mask"].bool())

    handle = model.register_forward_pre_hook(keep_mask, with_kwargs=True)
    try:
        with st.record(model, [layer]) as rec:
            vec = st.extract(model, tok, PAIRS, layers=[layer], read="mean", batch_size=1)
    finally:
        handle.remove()
    calls = rec.calls[layer]
    assert len(calls) == len(PAIRS) and all(h.dtype == dtype for h in calls)
    diffs = []
    for hidden, mask in zip(calls, masks):  # one pair per call: row 0 positive, row 1 negative
        means = [hidden[k].double()[mask[k]].mean(0) for k in range(2)]
        diffs.append(means[0] - means[1])
    reference = torch.stack(diffs).mean(0)
    scale = max(float(h.double().abs().max()) for h in calls)
    assert float((vec.directions[layer].double() - reference).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("read", ["last", "mean"])
def test_half_extraction_is_close_to_float32(dtype: torch.dtype, read: str) -> None:
    model, tok = make_tiny("llama")
    reference = st.extract(model, tok, PAIRS, layers=None, read=read)
    model.to(dtype)
    vec = st.extract(model, tok, PAIRS, layers=None, read=read)
    # One checkpoint in either dtype: the fingerprints agree (one half of format 3 does), so the
    # vectors compare, and the float32 vector steers the half model with its fingerprint checked.
    assert min(vec.cosine(reference).values()) >= 0.999
    with st.steer(model, reference, coef=2.0):
        pass


def test_ablation_projects_in_float32_and_casts_back() -> None:
    gen = torch.Generator().manual_seed(1)
    direction = torch.randn(64, generator=gen)
    unit = direction.double() / direction.double().norm()
    hidden = (torch.randn(2, 5, 64, generator=gen) * 3 + 20 * unit.float()).to(torch.bfloat16)
    out = AblateOp(direction)(hidden, None)
    assert out.dtype == torch.bfloat16
    h64 = hidden.double()
    reference = h64 - (h64 @ unit)[..., None] * unit
    # One rounding to bf16 at the end: within half a bf16 step (2^-9 relative) of the float64 result.
    err = (out.double() - reference).abs()
    assert bool((err <= reference.abs() * 2**-8 + 1e-30).all())
    left = float(((out.double() @ unit).abs() / out.double().norm(dim=-1)).max())
    assert left < 2**-7  # what is left along the direction is bf16 rounding only


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_bf16_fold_is_as_close_to_float32_as_the_hook_path(arch: str) -> None:
    """In bf16 the fold rounds differently from the hook path (the delta joins the bias inside the
    linear layer, not the residual after it), so tokens may differ; both stay as close to the
    float32 steered model as bf16 allows."""
    model, tok = make_tiny(arch)
    vec = st.extract(model, tok, PAIRS, layers=None)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)

    def steered_logits(backend: str) -> torch.Tensor:
        with st.steer(model, vec, coef=4.0, backend=backend), torch.no_grad():
            return model(**batch).logits.float()

    reference = steered_logits("hook")
    # float32: the same sums in another order (the bias joins inside the matmul), differences at rounding level
    assert _kl(reference, steered_logits("fold")) < 1e-9
    model.to(torch.bfloat16)
    kl = {backend: _kl(reference, steered_logits(backend)) for backend in ("fold", "hook")}
    with torch.no_grad():
        unsteered_error = _kl(reference, model(**batch).logits.float())
    assert kl["fold"] <= 2 * kl["hook"] + 1e-5, kl
    assert kl["fold"] < 0.1 * unsteered_error, (kl, unsteered_error)  # far closer to steered than to unsteered


def test_hook_deltas_are_cast_once_when_steering_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook path gets each delta already in the layer's dtype: no cast per token."""
    from steering import apply

    model, tok = make_tiny("llama")
    vec = st.extract(model, tok, PAIRS, layers=[0, 2])
    model.to(torch.bfloat16)
    given: list[torch.Tensor] = []
    real = apply.AddOp

    def spy(delta: torch.Tensor) -> Any:
        given.append(delta)
        return real(delta)

    monkeypatch.setattr(apply, "AddOp", spy)
    casts = 0
    to = torch.Tensor.to

    def counting_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        nonlocal casts
        out = to(self, *args, **kwargs)
        casts += out is not self and self.dim() == 1 and self.shape[0] == 32
        return out

    with st.steer(model, vec, coef=2.0, backend="hook"):
        assert [d.dtype for d in given] == [torch.bfloat16, torch.bfloat16]
        monkeypatch.setattr(torch.Tensor, "to", counting_to)
        st.generate(model, tok, PROMPTS[:1], max_new_tokens=4, chat=False)
        monkeypatch.setattr(torch.Tensor, "to", to)
    assert casts == 0
