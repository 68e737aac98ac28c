"""Steering at inference: exactness against references, positions under the KV cache, cleanup."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import hook_count, random_vector
from tiny_models import make_tiny

import steering as st
from steering import hooks

PROMPTS = ["Tell me about the sea", "Hi", "What is the weather like today in the city"]


def _vector(model, layers=(1,), scale=3.0, seed=0) -> st.SteeringVector:
    return random_vector(model, layers, scale=scale, seed=seed)


def _plain_generate(model, tok, prompts, max_new_tokens=6):
    tok.padding_side = "left"
    batch = tok.pad({"input_ids": [tok(p)["input_ids"] for p in prompts]}, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[:, batch["input_ids"].shape[1] :]


@torch.no_grad()
def test_coef_zero_gives_plain_generate_tokens(tiny) -> None:
    model, tok = tiny
    vec = _vector(model, layers=(0, 1, 2))
    plain = _plain_generate(model, tok, PROMPTS)
    with st.steer(model, vec, coef=0.0):
        steered = _plain_generate(model, tok, PROMPTS)
    assert torch.equal(plain, steered)
    with st.steer(model, vec, coef=8.0):
        moved = _plain_generate(model, tok, PROMPTS)
    assert not torch.equal(plain, moved)  # the vector really acts


@torch.no_grad()
def test_add_then_subtract_cancels(tiny) -> None:
    model, tok = tiny
    vec = _vector(model, layers=(0, 1))
    batch = tok(PROMPTS[:1], return_tensors="pt")
    with st.record(model, site="block_output") as ref:
        model(**batch)
    with st.steer(model, vec, coef=2.5), st.steer(model, -vec, coef=2.5), st.record(model, site="block_output") as rec:
        model(**batch)
    for layer in range(hooks.num_layers(model)):
        torch.testing.assert_close(rec[layer], ref[layer], atol=1e-5, rtol=0)
    # and the combined form cancels exactly
    with st.steer(model, [(vec, 1.0), (vec, -1.0)]):
        logits = model(**batch).logits
    torch.testing.assert_close(logits, model(**batch).logits, atol=0, rtol=0)


@torch.no_grad()
def test_patch_equals_manual_addition(tiny) -> None:
    """block_output[i] steered == unsteered block_output[i] + coef * v, seen as block_input[i+1]."""
    model, tok = tiny
    vec = _vector(model, layers=(1,))
    batch = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    with st.record(model, [1]) as ref:
        model(**batch)
    with st.steer(model, vec, coef=-1.5), st.record(model, [2], site="block_input") as rec:
        model(**batch)
    torch.testing.assert_close(rec[2], ref[1] - 1.5 * vec.directions[1], atol=1e-5, rtol=1e-5)


def _reference_generate(model, tok, prompt, delta_layer, delta, positions, steps=6):
    """Greedy decoding without a KV cache, adding ``delta`` by slicing the full sequence."""
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    prompt_len = ids.shape[1]
    block = hooks.decoder_layers(model)[delta_layer]

    def hook(module, args, output):
        hidden, repack = hooks.unpack(output)
        hidden = hidden.clone()
        if positions == "prompt":
            hidden[:, :prompt_len] += delta
        else:
            hidden[:, prompt_len:] += delta
        return repack(hidden)

    handle = block.register_forward_hook(hook)
    try:
        for _ in range(steps):
            logits = model(input_ids=ids, use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    finally:
        handle.remove()
    return ids[0, prompt_len:]


@torch.no_grad()
@pytest.mark.parametrize("positions", ["prompt", "generated"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_positions_match_full_sequence_reference(tiny, positions: str, use_cache: bool) -> None:
    model, tok = tiny
    vec = _vector(model, layers=(1,), scale=6.0)
    expected = _reference_generate(model, tok, PROMPTS[0], 1, vec.directions[1], positions)
    with st.steer(model, vec, coef=1.0, apply_to=positions):
        out = model.generate(**tok(PROMPTS[0], return_tensors="pt"), max_new_tokens=6, do_sample=False, use_cache=use_cache)
    got = out[0, -6:]
    assert torch.equal(got, expected)


@torch.no_grad()
def test_generated_positions_leave_prompt_logits_alone(llama) -> None:
    model, tok = llama
    vec = _vector(model, layers=(0, 1), scale=10.0)
    batch = tok(PROMPTS[0], return_tensors="pt")
    plain = model(**batch).logits
    with st.steer(model, vec, coef=1.0, apply_to="generated"):
        steered = model(**batch).logits
    with st.steer(model, vec, coef=1.0, apply_to="prompt"):
        prompt_steered = model(**batch).logits
    torch.testing.assert_close(steered, plain, atol=0, rtol=0)
    assert not torch.allclose(prompt_steered, plain)


@torch.no_grad()
def test_left_padded_batch_equals_one_by_one(tiny) -> None:
    model, tok = tiny
    vec = _vector(model, layers=(0, 2), scale=2.0)
    for positions in ("all", "generated"):
        batched = st.generate(model, tok, PROMPTS, vec, coef=1.0, max_new_tokens=6, apply_to=positions)
        alone = [st.generate(model, tok, p, vec, coef=1.0, max_new_tokens=6, apply_to=positions) for p in PROMPTS]
        assert batched == alone


@torch.no_grad()
def test_ablate_removes_the_direction(tiny) -> None:
    model, tok = tiny
    vec = _vector(model, layers=(1,))
    batch = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    unit = vec.directions[1] / vec.directions[1].norm()
    with st.record(model, [1]) as ref:
        model(**batch)
    assert (ref[1] @ unit).abs().max() > 1e-3
    with st.steer(model, vec, mode="ablate"), st.record(model, [2], site="block_input") as rec:
        model(**batch)
    assert (rec[2] @ unit).abs().max() < 1e-4
    torch.testing.assert_close(rec[2], ref[1] - (ref[1] @ unit)[..., None] * unit, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_several_vectors_sum(llama) -> None:
    model, tok = llama
    a, b = _vector(model, (0, 1), seed=1), _vector(model, (1, 2), seed=2)
    batch = tok(PROMPTS[:1], return_tensors="pt")
    with st.steer(model, [(a, 1.5), (b, -0.5)]):
        together = model(**batch).logits
    with st.steer(model, 1.5 * a - 0.5 * b, coef=1.0):
        combined = model(**batch).logits
    torch.testing.assert_close(together, combined, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_layers_subset(llama) -> None:
    model, tok = llama
    vec = _vector(model, (0, 2))
    batch = tok(PROMPTS[:1], return_tensors="pt")
    with st.steer(model, vec, coef=3.0, layers=[2]):
        subset = model(**batch).logits
    with st.steer(model, vec.select([2]), coef=3.0):
        selected = model(**batch).logits
    torch.testing.assert_close(subset, selected, atol=0, rtol=0)
    with pytest.raises(st.LayerError, match=r"layers \[1\] are not in the vector"):
        st.steer(model, vec, layers=[1]).__enter__()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"coef": float("nan")}, "coef=nan is not a finite number"),
        ({"coef": math.inf}, "coef=inf is not a finite number"),
        ({"coef": 1e30}, r"coef=1e\+30 is out of range"),
        ({"coef": True}, "coef=True is not a number"),
        ({"mode": "scale"}, "unknown mode 'scale'"),
        ({"apply_to": "middle"}, "unknown apply_to 'middle'"),
    ],
)
def test_bad_arguments_raise_and_leave_no_hooks(llama, kwargs, message) -> None:
    model, _ = llama
    baseline = hook_count(model)
    with pytest.raises(st.SteeringError, match=message):
        with st.steer(model, _vector(model), **kwargs):
            pass
    assert hook_count(model) == baseline


def test_vector_for_another_model_shape(llama) -> None:
    model, _ = llama
    wide = st.SteeringVector({0: torch.ones(64)}, hidden_size=64, num_layers=3)
    with pytest.raises(st.VectorMismatchError, match="hidden size 64 does not match the model's 32"):
        st.attach(model, wide)
    deep = st.SteeringVector({10: torch.ones(32)}, hidden_size=32, num_layers=30)
    with pytest.raises(st.LayerError, match=r"layers \[10\] are out of range for a model with 3 layers"):
        st.attach(model, deep)


def test_attach_handle_repr_and_idempotent_remove(llama) -> None:
    model, tok = llama
    baseline = hook_count(model)
    group = st.attach(model, _vector(model, (0, 2)), coef=2.0, apply_to="generated")
    assert "layers=[0, 2]" in repr(group) and "coef=2.0" in repr(group) and "apply_to=generated" in repr(group)
    assert hook_count(model) == baseline + 3
    group.remove()
    group.remove()
    assert hook_count(model) == baseline


def test_exception_inside_steer_removes_hooks(tiny) -> None:
    model, tok = tiny
    baseline = hook_count(model)
    with pytest.raises(ValueError, match="inside"):
        with st.steer(model, _vector(model, (0, 1, 2)), coef=1.0, apply_to="prompt"):
            model(**tok(PROMPTS[:1], return_tensors="pt"))
            raise ValueError("inside")
    assert hook_count(model) == baseline


@pytest.mark.parametrize("call", ["steer", "attach", "generate"])
def test_coef_policy_applies_to_every_entry_point(llama, call) -> None:
    """coef=1e30 used to overflow to NaN logits and an empty completion; now it is refused up front."""
    model, tok = llama
    baseline = hook_count(model)
    big = _vector(model, (0,), scale=1.0) * 2e4  # finite, but coef 10 makes a delta far past MAX_DELTA_NORM
    for vec, coef, message in [(_vector(model), 1e30, "out of range"), (big, 10.0, "out of range for a vector of norm")]:
        with pytest.raises(st.SteeringError, match=message):
            if call == "steer":
                st.steer(model, vec, coef).__enter__()
            elif call == "attach":
                st.attach(model, vec, coef)
            else:
                st.generate(model, tok, "Hi", vec, coef, max_new_tokens=2)
        assert hook_count(model) == baseline


@torch.no_grad()
def test_negative_layers_count_from_the_models_end(llama) -> None:
    model, tok = llama
    vec = _vector(model, (0, 2))
    batch = tok(PROMPTS[:1], return_tensors="pt")
    with st.steer(model, vec, coef=3.0, layers=[-1]):
        last = model(**batch).logits
    with st.steer(model, vec, coef=3.0, layers=[2]):
        two = model(**batch).logits
    torch.testing.assert_close(last, two, atol=0, rtol=0)
    with pytest.raises(st.LayerError, match="'2' is a string"):
        st.steer(model, vec, layers="2").__enter__()


def test_generate_applies_a_vector_given_without_coef(llama) -> None:
    """One default everywhere: coef=1.0 in generate, as in steer, attach and the server."""
    model, tok = llama
    vec = _vector(model, (0, 1, 2), scale=30.0)
    plain = st.generate(model, tok, PROMPTS, max_new_tokens=6)
    default = st.generate(model, tok, PROMPTS, vec, max_new_tokens=6)
    assert default == st.generate(model, tok, PROMPTS, vec, 1.0, max_new_tokens=6)
    assert default != plain


@pytest.mark.parametrize("prompts", ["", ["Hi", ""]])
def test_empty_prompt_without_chat_template_is_a_clear_error(llama, prompts) -> None:
    model, tok = llama  # its tokenizer adds no BOS: "" is zero tokens without the chat template
    with pytest.raises(st.SteeringError, match=r"\(''\) is empty after tokenization.*chat=True"):
        st.generate(model, tok, prompts, chat=False, max_new_tokens=2)
    assert st.generate(model, tok, "", chat=True, max_new_tokens=2) is not None  # the template gives tokens


@torch.no_grad()
def test_steer_refuses_a_vector_from_another_checkpoint(llama) -> None:
    """A vector records the checkpoint it was made on; steering another one (same shape) is refused."""
    model, tok = llama
    tuned, _ = make_tiny("llama")
    tuned.model.layers[2].mlp.up_proj.weight.mul_(1.01)  # a fine-tune that froze the embeddings
    vec = random_vector(model, (0, 2))
    baseline = hook_count(tuned)
    for backend in ("hook", "fold"):
        with pytest.raises(st.VectorMismatchError) as info:
            st.attach(tuned, vec, backend=backend)
        message = str(info.value)
        assert vec.model_fingerprint in message and st.model_fingerprint(tuned) in message and "check_model=False" in message
        assert hook_count(tuned) == baseline
    with st.steer(tuned, vec, coef=2.0, check_model=False) as group:  # the escape hatch
        assert group.active
    with st.steer(model, vec, coef=2.0):  # its own model
        pass


class _FrozenTokenizer:
    """A tokenizer proxy that fails the test on any attribute assignment (as a shared one must not change)."""

    def __init__(self, tok) -> None:
        object.__setattr__(self, "_tok", tok)

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)

    def __setattr__(self, name, value) -> None:
        raise AssertionError(f"generate assigned tokenizer.{name} = {value!r}")


@torch.no_grad()
def test_generate_left_pads_without_touching_the_tokenizer(llama) -> None:
    """A tokenizer shared with other threads keeps its padding_side; rows are still left-padded."""
    model, tok = llama
    tok.padding_side = "right"
    vec = _vector(model, layers=(0, 2), scale=2.0)
    frozen = _FrozenTokenizer(tok)
    batched = st.generate(model, frozen, PROMPTS, vec, coef=1.0, max_new_tokens=6)
    assert batched == [st.generate(model, frozen, p, vec, coef=1.0, max_new_tokens=6) for p in PROMPTS]
    assert tok.padding_side == "right"


@torch.no_grad()
def test_old_positions_keyword_warns_and_gives_the_same_result(llama) -> None:
    """``positions=`` (before issue 11) still works in steer, attach and generate, naming ``apply_to``."""
    model, tok = llama
    vec = _vector(model, layers=(0, 1), scale=10.0)
    batch = tok(PROMPTS[0], return_tensors="pt")
    with st.steer(model, vec, coef=1.0, apply_to="prompt"):
        new = model(**batch).logits
    with pytest.warns(DeprecationWarning, match="use apply_to="), st.steer(model, vec, coef=1.0, positions="prompt"):
        old = model(**batch).logits
    torch.testing.assert_close(old, new, atol=0, rtol=0)
    with pytest.warns(DeprecationWarning, match="use apply_to="):
        group = st.attach(model, vec, coef=1.0, positions="generated")
    assert "apply_to=generated" in repr(group)
    group.remove()
    with pytest.warns(DeprecationWarning, match="use apply_to="):
        old_text = st.generate(model, tok, PROMPTS[1], vec, 1.0, max_new_tokens=5, positions="generated")
    assert old_text == st.generate(model, tok, PROMPTS[1], vec, 1.0, max_new_tokens=5, apply_to="generated")
    with pytest.raises(TypeError, match="give only apply_to"):
        st.attach(model, vec, coef=1.0, apply_to="prompt", positions="generated")
