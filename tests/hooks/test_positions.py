"""Absolute positions: every cache convention is read, an unknown one is refused, chat turns start anew."""

from __future__ import annotations

import pytest
import torch
from helpers import hook_count, random_vector
from transformers import DynamicCache

import steering as st
from steering import hooks
from steering.hooks.cache import cache_keyword, past_offset


def _cache_with(model, ids: torch.Tensor) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, **hooks.cache_kwargs(model, cache), use_cache=True)
    return cache


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_offset_is_read_under_each_cache_name(llama, name: str) -> None:
    model, _ = llama
    cache = _cache_with(model, torch.tensor([[5, 6, 7]]))
    assert hooks.past_length({name: cache}) == 3
    assert hooks.past_length({name: None}) == 0  # an explicit empty cache
    assert past_offset({}) is None  # no cache argument at all: the caller decides


def test_cache_position_wins_where_given(llama) -> None:
    model, _ = llama
    cache = _cache_with(model, torch.tensor([[5, 6, 7]]))
    assert hooks.past_length({"cache_position": torch.tensor([9, 10]), "cache": cache}) == 9


def test_legacy_tuple_cache_is_read() -> None:
    legacy = ((torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8)),)
    assert hooks.past_length({"past_key_values": legacy}) == 4


def test_unrecognised_cache_object_is_an_error() -> None:
    with pytest.raises(hooks.LayerError, match="unrecognised KV cache object object"):
        hooks.past_length({"cache": object()})


def test_model_forward_convention_is_what_this_transformers_declares(tiny) -> None:
    model, _ = tiny
    assert cache_keyword(model) in hooks.CACHE_KEYWORDS
    assert cache_keyword(hooks.decoder_stack(model)) in hooks.CACHE_KEYWORDS


def test_unknown_cache_parameter_name_is_refused_at_attach(llama) -> None:
    """A release that renames the cache again must not make positions silently 0."""
    model, _ = llama
    stack = hooks.decoder_stack(model)
    original = stack.forward

    def renamed(input_ids=None, attention_mask=None, kv_state=None, **kwargs):  # a future convention
        return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    stack.forward = renamed
    try:
        baseline = hook_count(model)
        vec = random_vector(model, (1,))
        with pytest.raises(hooks.LayerError, match=r"no KV cache under a known name .*kv_state"):
            st.attach(model, vec, coef=1.0, positions="generated")
        assert hook_count(model) == baseline  # nothing left registered
        with st.steer(model, vec, coef=1.0, positions="all"):  # positions that need no cache still work
            model(input_ids=torch.tensor([[1, 2, 3]]))
    finally:
        del stack.forward


def test_cache_passed_under_an_unknown_keyword_is_refused(llama) -> None:
    model, _ = llama
    cache = _cache_with(model, torch.tensor([[5, 6, 7]]))
    tracker = hooks.PositionTracker(hooks.decoder_stack(model))
    with pytest.raises(hooks.LayerError, match="passed as 'kv_state'"):
        tracker(None, (), {"input_ids": torch.tensor([[1]]), "kv_state": cache})


def test_cache_passed_positionally_is_read(llama) -> None:
    model, _ = llama
    stack = hooks.decoder_stack(model)
    cache = _cache_with(model, torch.tensor([[5, 6, 7, 8]]))
    tracker = hooks.PositionTracker(stack)
    names = hooks.forward_parameters(stack)
    args = [None] * (names.index(cache_keyword(stack)) + 1)
    args[0], args[-1] = torch.tensor([[1]]), cache
    tracker(None, tuple(args), {})
    assert tracker.offset == 4


@torch.no_grad()
def test_next_chat_turn_is_a_new_prompt_under_a_long_lived_attach(llama) -> None:
    """Turn 2 extends turn 1's text; its new prompt tokens must not count as generated."""
    model, tok = llama
    vec = random_vector(model, (1,), scale=6.0)
    first = tok("Tell me about the sea", return_tensors="pt")["input_ids"]
    second = torch.cat([first, torch.tensor([[11, 12, 13, 14, 15]])], dim=1)  # turn 1 text + new user turn

    def run(ids: torch.Tensor) -> torch.Tensor:
        return model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)

    with st.steer(model, vec, coef=1.0, positions="generated"):
        expected = run(second)  # turn 2 alone: a fresh tracker
    group = st.attach(model, vec, coef=1.0, positions="generated")
    try:
        run(first)
        got = run(second)
    finally:
        group.remove()
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.logits, expected.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@torch.no_grad()
def test_refed_text_without_cache_keeps_the_prompt(llama) -> None:
    """generate(use_cache=False) feeds prompt + k tokens on an empty cache: still one prompt."""
    model, tok = llama
    vec = random_vector(model, (1,), scale=6.0)
    ids = tok("Tell me about the sea", return_tensors="pt")["input_ids"]
    with st.steer(model, vec, coef=1.0, positions="generated"):
        cached = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
        uncached = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    plain = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert not torch.equal(plain, cached)  # the steering acts on generated tokens
