"""Capture and patch mechanics: parity with HF hidden states, cleanup, output shapes."""

from __future__ import annotations

import pytest
import torch
from helpers import hook_count

from steering import hooks


def _batch(tok, texts=("The cat sat on the mat", "Hello")):
    tok.padding_side = "right"
    return tok(list(texts), return_tensors="pt", padding=True)


@torch.no_grad()
def test_block_sites_match_hidden_states(tiny) -> None:
    model, tok = tiny
    batch = _batch(tok)
    n = hooks.num_layers(model)
    with hooks.record(model, site="block_output") as out, hooks.record(model, site="block_input") as inp:
        hs = model(**batch, output_hidden_states=True).hidden_states
    for i in range(n):
        torch.testing.assert_close(inp[i], hs[i], atol=1e-6, rtol=0)
        if i < n - 1:  # the last entry of hidden_states has the final norm applied
            torch.testing.assert_close(out[i], hs[i + 1], atol=1e-6, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("site", ["attn_output", "mlp_output"])
def test_submodule_sites_record_residual_shape(tiny, site: str) -> None:
    model, tok = tiny
    batch = _batch(tok)
    if site == "mlp_output" and model.config.model_type == "opt":
        with pytest.raises(hooks.LayerError, match="OPTDecoderLayer has none of the submodules mlp"):
            hooks.site_module(model, 0, site)
        return
    with hooks.record(model, [0, 2], site=site) as rec:
        model(**batch)
    width = model.config.get_text_config().hidden_size
    assert rec.layers() == [0, 2]
    assert rec[2].shape == (2, batch["input_ids"].shape[1], width)


@torch.no_grad()
def test_hooks_removed_after_context_and_exception(tiny) -> None:
    model, tok = tiny
    batch = _batch(tok)
    # transformers installs its own output-capturing hooks on first use; they are
    # part of the baseline and must survive our cleanup.
    model(**batch, output_hidden_states=True)
    baseline = hook_count(model)
    with hooks.record(model, [0, 1]):
        assert hook_count(model) == baseline + 2
        model(**batch, output_hidden_states=True)
    assert hook_count(model) == baseline
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.record(model, [0]):
            raise RuntimeError("boom")
    assert hook_count(model) == baseline
    group = hooks.patch(model, {0: hooks.AddOp(torch.zeros(model.config.get_text_config().hidden_size))}, positions="generated")
    assert hook_count(model) == baseline + 2  # the layer hook and the position tracker
    group.remove()
    group.remove()  # idempotent
    assert hook_count(model) == baseline
    # output_hidden_states still works: transformers' own hooks were left alone
    assert len(model(**batch, output_hidden_states=True).hidden_states) == hooks.num_layers(model) + 1


def test_failed_registration_leaves_nothing(llama) -> None:
    model, _ = llama
    baseline = hook_count(model)
    op = hooks.AddOp(torch.zeros(32))
    with pytest.raises(hooks.LayerError, match="layer 7 is out of range"):
        hooks.patch(model, {0: op, 1: op, 7: op}, positions="prompt")
    assert hook_count(model) == baseline


def test_nested_groups_keep_others(llama) -> None:
    model, _ = llama
    baseline = hook_count(model)
    foreign = hooks.decoder_layers(model)[0].register_forward_hook(lambda *a: None)
    op = hooks.AddOp(torch.zeros(32))
    with hooks.patch(model, {0: op}) as outer:
        with hooks.patch(model, {0: op, 1: op}):
            assert hook_count(model) == baseline + 4
        assert hook_count(model) == baseline + 2
        assert "1 hooks" in repr(outer)
    assert hook_count(model) == baseline + 1  # the foreign hook survives
    foreign.remove()
    assert "removed" in repr(outer)


def test_unpack_round_trips_structures() -> None:
    h = torch.ones(1, 2, 3)
    new = torch.zeros(1, 2, 3)
    hidden, repack = hooks.unpack(h)
    assert hidden is h and repack(new) is new
    extra = object()
    hidden, repack = hooks.unpack((h, extra))
    assert hidden is h and repack(new)[0] is new and repack(new)[1] is extra and isinstance(repack(new), tuple)
    hidden, repack = hooks.unpack([h, extra])
    assert isinstance(repack(new), list) and repack(new)[1] is extra
    with pytest.raises(hooks.SteeringError, match="dict"):
        hooks.unpack({"a": h})
    args, kwargs = hooks.unpack_inputs((), {"hidden_states": h, "x": 1})[1](new)
    assert kwargs["hidden_states"] is new and kwargs["x"] == 1


@torch.no_grad()
def test_stop_forward_skips_later_layers(llama) -> None:
    model, tok = llama
    calls = []
    last = hooks.decoder_layers(model)[-1].register_forward_hook(lambda *a: calls.append(1))
    seen = []
    with hooks.capture(model, [0], lambda i, h: seen.append(i), stop_after_last=True):
        assert hooks.run_until_stopped(model, **_batch(tok)) is None
    last.remove()
    assert seen == [0] and calls == []


@torch.no_grad()
def test_add_and_ablate_ops_math() -> None:
    hidden = torch.randn(2, 5, 8)
    delta = torch.randn(8)
    mask = torch.tensor([False, False, True, True, True])
    out = hooks.AddOp(delta)(hidden, mask)
    torch.testing.assert_close(out[:, :2], hidden[:, :2])
    torch.testing.assert_close(out[:, 2:], hidden[:, 2:] + delta)
    per_row = torch.randn(2, 8)
    torch.testing.assert_close(hooks.AddOp(per_row)(hidden, None), hidden + per_row[:, None])
    with pytest.raises(hooks.LayerError, match="3 rows but the batch has 2"):
        hooks.AddOp(torch.randn(3, 8))(hidden, None)
    directions = torch.randn(2, 8)
    ablated = hooks.AblateOp(directions)(hidden, None)
    assert (ablated @ directions.T).abs().max() < 1e-5
    # ablating twice changes nothing more
    torch.testing.assert_close(hooks.AblateOp(directions)(ablated, None), ablated, atol=1e-6, rtol=0)


def test_remove_runs_every_handle_and_finalizer_when_one_fails(llama) -> None:
    """One failing finalizer must not leave the other hooks and finalizers registered."""
    model, _ = llama
    baseline = hook_count(model)
    ran: list[str] = []
    group = hooks.patch(model, {0: hooks.AddOp(torch.zeros(32)), 1: hooks.AddOp(torch.zeros(32))})
    group.on_remove(lambda: ran.append("first"))
    group.on_remove(lambda: (_ for _ in ()).throw(RuntimeError("finalizer 2 broke")))
    group.on_remove(lambda: (_ for _ in ()).throw(ValueError("finalizer 3 broke")))
    group.on_remove(lambda: ran.append("last"))
    with pytest.raises(ValueError, match="finalizer 3 broke"):  # the first error, in removal order (reversed)
        group.remove()
    assert ran == ["last", "first"]
    assert hook_count(model) == baseline and not group.active
    group.remove()  # still idempotent
    assert ran == ["last", "first"]


def test_patch_refuses_two_keys_for_one_layer(llama) -> None:
    model, _ = llama
    baseline = hook_count(model)
    op = hooks.AddOp(torch.zeros(32))
    last = hooks.num_layers(model) - 1
    with pytest.raises(hooks.LayerError, match=f"layers {last} and -1 both name layer {last}"):
        hooks.patch(model, {last: op, -1: op})
    assert hook_count(model) == baseline
    with hooks.patch(model, {-1: op}) as group:  # a negative index alone is fine, normalised
        assert len(group) == 1 and len(hooks.decoder_layers(model)[last]._forward_hooks) == 1
