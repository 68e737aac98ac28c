"""Extraction that runs a pair's shared prefix once reads the same activations as the plain path."""

from __future__ import annotations

import sys

import pytest
import torch

import steering as st
from steering.vectors import collect_stats
from steering.vectors import prefix as prefix_mod
from steering.vectors.prefix import common_prefix_len, plan_shared

PAIRS = [
    st.ContrastPair(
        prompt="Tell me about your day.", positive="It was a wonderful day, full of joy!", negative="It was a terrible day, sad and boring."
    ),
    st.ContrastPair(prompt="How are you?", positive="I am fine, thank you very much.", negative="I am angry."),
    st.ContrastPair(
        prompt="What is the capital of France?",
        positive="The capital of France is Paris.",
        negative="The capital of France is a dragon who lived in a small house near the forest.",
    ),
    st.ContrastPair(positive="I love sunny days at the beach", negative="I hate sunny days at the beach"),
    st.ContrastPair(positive="Great job! Thanks for the help.", negative="Great job! Sorry, I don't know."),
]


def _samples(model, tok, share: bool, layers=(0, 2), batch_size=3, site="block_output"):
    stats = collect_stats(model, tok, PAIRS, list(layers), site=site, batch_size=batch_size, needs_samples=True, share_prefix=share)
    return {i: (torch.cat(s.pos_samples), torch.cat(s.neg_samples)) for i, s in stats.items()}


@torch.no_grad()
@pytest.mark.parametrize("chat", [True, False])
def test_shared_prefix_reads_the_same_activations(tiny, chat: bool, monkeypatch) -> None:
    model, tok = tiny
    if not chat:
        tok.chat_template = None
    tok.padding_side = "left"
    plain = _samples(model, tok, share=False)
    used = []
    original = prefix_mod.plan_shared

    def spy(*args, **kwargs):
        plan = original(*args, **kwargs)
        used.append(plan is not None)
        return plan

    monkeypatch.setattr(sys.modules["steering.vectors.extract"], "plan_shared", spy)
    shared = _samples(model, tok, share=True)
    assert any(used), "no batch took the shared-prefix path"
    for layer in plain:
        for got, want in zip(shared[layer], plain[layer]):
            torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-4)


@torch.no_grad()
def test_shared_prefix_at_other_sites(llama) -> None:
    model, tok = llama
    for site in ("block_input", "mlp_output"):
        plain = _samples(model, tok, share=False, layers=(1,), site=site)
        shared = _samples(model, tok, share=True, layers=(1,), site=site)
        torch.testing.assert_close(shared[1][0], plain[1][0], atol=5e-5, rtol=1e-4)


def test_plan_layout() -> None:
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2
    assert plan_shared([[5, 6]], [[7, 8]], 0, torch.device("cpu")) is None  # nothing shared
    plan = plan_shared([[1, 2, 3, 4], [1, 9, 9]], [[1, 2, 3, 5, 6], [1, 9, 8]], 0, torch.device("cpu"))
    assert plan is not None
    assert plan.prefix["input_ids"].tolist() == [[1, 2, 3], [0, 1, 9]]  # left-padded
    assert plan.prefix["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    # suffix rows interleaved: pos0, neg0, pos1, neg1; right-padded
    assert plan.suffix["input_ids"].tolist() == [[4, 0], [5, 6], [9, 0], [8, 0]]
    assert plan.suffix["position_ids"].tolist() == [[3, 4], [3, 4], [2, 3], [2, 3]]
    assert plan.read.tolist() == [0, 1, 0, 0]
    assert plan.suffix["attention_mask"].tolist()[1] == [1, 1, 1, 1, 1] and plan.suffix["attention_mask"].tolist()[2] == [0, 1, 1, 1, 0]
    # a text that equals its partner still keeps one token to read
    same = plan_shared([[1, 2, 3]], [[1, 2, 3]], 0, torch.device("cpu"))
    assert same is not None and same.read.tolist() == [0, 0]


@torch.no_grad()
def test_pair_cache_serves_each_layer_once_then_drops_it(tiny) -> None:
    """The suffix pass's keys/values equal a repeated plain cache's, and the cache shrinks layer by layer."""
    from transformers import DynamicCache

    from steering.hooks import cache_kwargs
    from steering.vectors.prefix import new_cache

    model, _ = tiny
    n_layers = model.config.num_hidden_layers
    prefix = torch.randint(3, 50, (2, 5))
    suffix = torch.randint(3, 50, (4, 3))
    pos = torch.arange(5, 8).expand(4, 3)

    def filled(cache):
        model(input_ids=prefix, **cache_kwargs(model, cache), use_cache=True)
        return cache

    reference = filled(DynamicCache(config=model.config))  # transformers' own cache, repeated up front
    reference.batch_repeat_interleave(2)
    paired = filled(new_cache(model))
    paired.pair_up(2)

    held: list[int] = []
    served: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    update = type(paired).update

    def spy(self, k, v, layer_idx, *args, **kwargs):
        out = update(self, k, v, layer_idx, *args, **kwargs)
        if self is paired:
            served[layer_idx] = out
            held.append(sum(layer.keys.numel() for layer in self.layers if layer.is_initialized))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(paired), "update", spy)
        want = model(input_ids=suffix, position_ids=pos, **cache_kwargs(model, reference), use_cache=True).logits
        got = model(input_ids=suffix, position_ids=pos, **cache_kwargs(model, paired), use_cache=True).logits
    torch.testing.assert_close(got, want)
    assert sorted(served) == list(range(n_layers))
    assert held == sorted(held, reverse=True) and held[-1] == 0  # shrinks to nothing
    assert all(not layer.is_initialized for layer in paired.layers)
    assert all(layer.is_initialized for layer in reference.layers)
