"""Bias folding: same logits and tokens as the hook path, weights restored bit for bit."""

from __future__ import annotations

import threading

import pytest
import torch
from helpers import hook_count, random_vector
from tiny_models import make_tiny

import steering as st
from steering import hooks
from steering.hooks.fold import _STATES, _USERS, FoldConflictError, fold, fold_blocker, fold_conflict, fold_target, share

PROMPTS = ["Tell me about the sea", "Hi", "What is the weather like today in the city"]
NO_BLOCK_FOLD = {"gemma2", "gemma3", "gemma3_text"}  # a post-feedforward norm follows down_proj


def _vector(model, layers=(0, 2), scale=3.0, seed=0, site="block_output") -> st.SteeringVector:
    return random_vector(model, layers, scale=scale, seed=seed, site=site)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.state_dict(keep_vars=True).items()}


def _assert_unchanged(model, before: dict[str, torch.Tensor], params_before: dict[str, object]) -> None:
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)  # no bias left behind, none lost
    for name, value in before.items():
        assert after[name].dtype == value.dtype and torch.equal(after[name].detach(), value), name
    # the very same parameter objects (an optimizer holding them still works)
    assert dict(model.named_parameters()) == params_before


def _batch(tok):
    tok.padding_side = "left"
    return tok(PROMPTS, return_tensors="pt", padding=True)


def _generate(model, tok, steps=6):
    batch = _batch(tok)
    out = model.generate(**batch, max_new_tokens=steps, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[:, batch["input_ids"].shape[1] :]


@torch.no_grad()
def test_fold_matches_hook_or_falls_back(tiny) -> None:
    """Every architecture either folds with the hook's logits or (Gemma 2/3) uses the hook."""
    model, tok = tiny
    vec = _vector(model)
    batch = _batch(tok)
    arch = model.config.model_type
    with st.steer(model, vec, coef=1.5, backend="hook") as group:
        assert "backend=hook" in repr(group)
        reference = model(**batch).logits
    baseline = hook_count(model)
    with st.steer(model, vec, coef=1.5) as group:  # auto
        logits = model(**batch).logits
        folded = "backend=fold" in repr(group)
        assert hook_count(model) == (baseline if folded else baseline + 2)
    assert folded == (arch not in NO_BLOCK_FOLD)
    torch.testing.assert_close(logits, reference, atol=2e-5, rtol=1e-5)
    if arch in NO_BLOCK_FOLD:
        assert "normalises the MLP output" in fold_blocker(model, [0])
        with pytest.raises(st.SteeringError, match="backend='fold' is not possible"):
            st.attach(model, vec, backend="fold")


@torch.no_grad()
def test_fold_generates_hook_tokens(tiny) -> None:
    model, tok = tiny
    vec = _vector(model, layers=(0, 1, 2), scale=4.0)
    with st.steer(model, vec, coef=1.0, backend="hook"):
        reference = _generate(model, tok)
    with st.steer(model, vec, coef=1.0):
        assert torch.equal(_generate(model, tok), reference)
    assert not torch.equal(_generate(model, tok), reference)  # the vector really acted


@torch.no_grad()
def test_weights_restored_exactly_on_exit_and_exception(tiny) -> None:
    model, tok = tiny
    before, params = _snapshot(model), dict(model.named_parameters())
    vec = _vector(model, layers=(0, 1, 2))
    batch = _batch(tok)
    plain = model(**batch).logits
    with st.steer(model, vec, coef=2.0):
        model(**batch)
    _assert_unchanged(model, before, params)
    with pytest.raises(RuntimeError, match="inside"):
        with st.steer(model, vec, coef=-3.0):
            model(**batch)
            raise RuntimeError("inside")
    _assert_unchanged(model, before, params)
    torch.testing.assert_close(model(**batch).logits, plain, atol=0, rtol=0)


@torch.no_grad()
def test_overlapping_folds_remove_in_any_order(llama) -> None:
    model, tok = llama
    before, params = _snapshot(model), dict(model.named_parameters())
    a, b = _vector(model, (0, 1), seed=1), _vector(model, (1, 2), seed=2)
    batch = _batch(tok)
    with st.steer(model, b, coef=-0.5, backend="hook"):
        only_b = model(**batch).logits
    first = st.attach(model, a, coef=1.5, backend="fold")
    second = st.attach(model, b, coef=-0.5, backend="fold")
    first.remove()  # not in LIFO order: b must stay fully applied
    torch.testing.assert_close(model(**batch).logits, only_b, atol=2e-5, rtol=1e-5)
    second.remove()
    second.remove()  # idempotent
    _assert_unchanged(model, before, params)


@torch.no_grad()
def test_bias_that_exists_is_restored_in_place(tiny) -> None:
    model, _ = tiny
    target = fold_target(model, 1)
    if isinstance(target, str):
        pytest.skip(target)
    had_bias = target.bias is not None
    original = target.bias
    saved = None if original is None else original.detach().clone()
    delta = torch.full((model.config.get_text_config().hidden_size,), 0.1)
    with fold(model, {1: delta}):
        assert target.bias is not None
        expected = delta if saved is None else saved + delta
        torch.testing.assert_close(target.bias.detach(), expected, atol=0, rtol=0)
        assert (target.bias is original) == had_bias
    assert target.bias is original
    if had_bias:
        assert torch.equal(target.bias, saved)


@torch.no_grad()
def test_mlp_output_site_folds_on_every_arch_with_an_mlp(tiny) -> None:
    model, tok = tiny
    if model.config.model_type == "opt":
        assert "no MLP module" in fold_blocker(model, [0], "mlp_output")
        return
    vec = _vector(model, layers=(1,), site="mlp_output")
    batch = _batch(tok)
    with st.steer(model, vec, coef=2.0, backend="hook"):
        reference = model(**batch).logits
    with st.steer(model, vec, coef=2.0, backend="fold"):  # Gemma 2/3 too: the norm comes after the MLP
        torch.testing.assert_close(model(**batch).logits, reference, atol=2e-5, rtol=1e-5)


def test_hook_only_cases_use_the_hook(llama) -> None:
    model, _ = llama
    vec = _vector(model)
    for kwargs in ({"positions": "generated"}, {"mode": "ablate"}):
        with st.steer(model, vec, **kwargs) as group:
            assert "backend=hook" in repr(group)
        with pytest.raises(st.SteeringError, match="needs the hook backend"):
            st.attach(model, vec, backend="fold", **kwargs)
    model.train()
    try:
        assert "training mode" in fold_blocker(model, [0])
        with st.steer(model, vec) as group:
            assert "backend=hook" in repr(group)
    finally:
        model.eval()
    with pytest.raises(st.SteeringError, match="unknown backend 'fast'"):
        st.attach(model, vec, backend="fast")


def test_zero_coef_changes_nothing(llama) -> None:
    model, _ = llama
    before, params = _snapshot(model), dict(model.named_parameters())
    with st.steer(model, _vector(model), coef=0.0):
        _assert_unchanged(model, before, params)


def test_failed_fold_leaves_nothing(llama) -> None:
    model, _ = llama
    before, params = _snapshot(model), dict(model.named_parameters())
    good = torch.ones(32)
    with pytest.raises(hooks.LayerError, match=r"must be \[32\]"):
        fold(model, {0: good, 1: good, 2: torch.ones(33)})
    _assert_unchanged(model, before, params)
    with pytest.raises(hooks.LayerError, match="layer 7 is out of range"):
        fold(model, {0: good, 7: good})
    _assert_unchanged(model, before, params)


def _in_thread(fn):
    """Run ``fn`` on another thread and return its result (or raise its error here)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="other")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


@torch.no_grad()
def test_fold_refuses_a_model_another_thread_steers(llama) -> None:
    """A fold is process-wide: while another thread steers the model, folding refuses (or auto uses hooks, loudly)."""
    model, tok = llama
    vec = _vector(model)
    before, params = _snapshot(model), dict(model.named_parameters())
    other = _in_thread(lambda: st.attach(model, vec, coef=2.0))  # folded on thread 'other'
    assert "backend=fold" in repr(other)
    folded = _snapshot(model)
    with pytest.raises(FoldConflictError, match="steered by a fold on thread 'other'"):
        fold(model, {1: torch.ones(model.config.hidden_size)})
    with pytest.raises(st.SteeringError, match="backend='fold' is not possible.*thread 'other'"):
        st.attach(model, vec, backend="fold")
    with pytest.warns(RuntimeWarning, match="hooks instead of folding"):
        with st.steer(model, vec, coef=1.0) as group:
            assert "backend=hook" in repr(group)
            for name, value in _snapshot(model).items():  # this thread's steering left the weights alone
                assert torch.equal(value, folded[name]), name
    _in_thread(other.remove)
    with st.steer(model, vec) as group:  # nobody else now: folds again
        assert "backend=fold" in repr(group)
    _assert_unchanged(model, before, params)
    assert fold_conflict(model) is None


@torch.no_grad()
def test_fold_refuses_a_shared_or_served_model(llama) -> None:
    model, _ = llama
    vec = _vector(model)
    width = model.config.hidden_size
    served = _in_thread(lambda: hooks.patch(model, {0: hooks.AddOp(torch.zeros(width))}))  # a server's row hooks
    with pytest.raises(FoldConflictError, match="hooks on thread 'other'"):
        fold(model, {1: torch.ones(width)})
    served.remove()
    shared = share(model, "server engine")
    with pytest.raises(FoldConflictError, match="shared by server engine"):
        fold(model, {1: torch.ones(width)})  # also from the sharer's own thread
    with pytest.warns(RuntimeWarning, match="shared by server engine"):
        st.attach(model, vec).remove()
    shared.remove()
    fold(model, {1: torch.ones(width)}).remove()


def test_concurrent_folds_on_separate_models_restore_everything() -> None:
    """The fold bookkeeping is locked: many threads folding their own models leave nothing behind."""
    models = [make_tiny("llama")[0] for _ in range(4)]
    snapshots = [_snapshot(m) for m in models]

    def work(model) -> None:
        width = model.config.hidden_size
        for _ in range(50):
            with fold(model, {0: torch.ones(width)}), fold(model, {0: torch.ones(width), 1: torch.ones(width)}):
                pass

    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for model, before in zip(models, snapshots):
        after = _snapshot(model)
        assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(m in _STATES or m in _USERS for m in models)
