"""Batched reply scoring equals scoring each text alone; positions act as in generation."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny

import steering as st
from steering import hooks
from steering.experiments.metrics.replies import encode_replies, reply_logprobs, token_logprobs
from steering.vectors.text import format_prompt

PROMPTS = ["Tell me about the sea", "Hi", "What is the weather like today in the city", "Hi"]
REPLIES = ["The sea is blue.", "", "It is warm and sunny, and the birds are singing in the trees today.", "Hello there, friend!"]


def _vector(model, layer: int = 1, scale: float = 3.0) -> st.SteeringVector:
    width = model.config.get_text_config().hidden_size
    gen = torch.Generator().manual_seed(1)
    return st.SteeringVector({layer: torch.randn(width, generator=gen) * scale}, hidden_size=width, num_layers=hooks.num_layers(model))


@torch.no_grad()
def _single(model, tok, prompt: str, reply: str, chat: bool) -> torch.Tensor:
    """Reference: one unpadded forward over prompt + reply, log-probs from the last prompt token on."""
    text, special = format_prompt(tok, prompt, chat)
    prompt_ids = tok(text, add_special_tokens=special)["input_ids"]
    if reply and not chat:
        reply = " " + reply
    reply_ids = tok(reply, add_special_tokens=False)["input_ids"] if reply else []
    logits = model(torch.tensor([prompt_ids + reply_ids])).logits[0, len(prompt_ids) - 1 :]
    return torch.log_softmax(logits.float(), -1)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma2", "opt"])
@pytest.mark.parametrize("chat", [True, False])
def test_batched_scores_equal_single_forward(arch: str, chat: bool) -> None:
    model, tok = make_tiny(arch, chat_template=chat)
    batches = encode_replies(tok, PROMPTS, REPLIES, chat=chat, batch_size=3)
    assert sorted(i for b in batches for i in b.rows) == list(range(len(PROMPTS)))
    for batch in batches:
        logprobs = reply_logprobs(model, batch)
        for row, index in enumerate(batch.rows):
            reference = _single(model, tok, PROMPTS[index], REPLIES[index], chat)
            torch.testing.assert_close(logprobs[row, : reference.shape[0]], reference, atol=2e-4, rtol=0)


def test_shared_prompt_runs_once_and_matches() -> None:
    model, tok = make_tiny("llama")
    replies = ["One fact.", "Water boils at one hundred degrees.", "Cats purr."]
    (batch,) = encode_replies(tok, ["Tell me a fact."] * 3, replies, batch_size=8)
    assert batch.shared and batch.prompt_ids.shape[0] == 1
    logprobs = reply_logprobs(model, batch)
    for row, index in enumerate(batch.rows):
        reference = _single(model, tok, "Tell me a fact.", replies[index], True)
        torch.testing.assert_close(logprobs[row, : reference.shape[0]], reference, atol=2e-4, rtol=0)


def test_token_logprobs_pick_the_reply_tokens() -> None:
    model, tok = make_tiny("llama")
    (batch,) = encode_replies(tok, ["Hi", "Hi there"], ["Good morning.", "Yes"], batch_size=4)
    logprobs = reply_logprobs(model, batch)
    picked, mask = token_logprobs(batch, logprobs)
    assert mask.sum(1).tolist() == batch.reply_mask.sum(1).tolist()
    row = 0
    first = batch.reply_ids[row, 0]
    assert picked[row, 0] == logprobs[row, 0, first]


@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_positions_steer_the_parts_generation_would(positions: str) -> None:
    model, tok = make_tiny("llama")
    (batch,) = encode_replies(tok, ["Tell me about the sea"], ["The sea is wide and blue."], batch_size=1)
    plain = reply_logprobs(model, batch)
    with st.steer(model, _vector(model), coef=1.0, positions=positions):
        steered = reply_logprobs(model, batch)
    after_prompt_changed = not torch.allclose(plain[:, 0], steered[:, 0], atol=1e-5)
    # Column 0 reads the prompt pass only: it moves unless just the generated part is steered.
    assert after_prompt_changed == (positions != "generated")
    assert not torch.allclose(plain[:, 1:], steered[:, 1:], atol=1e-5)


def test_mismatched_lengths_and_empty_prompts_are_errors() -> None:
    _, tok = make_tiny("llama", chat_template=False)
    with pytest.raises(ValueError, match="2 prompts but 1 replies"):
        encode_replies(tok, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="no tokens"):
        encode_replies(tok, [""], ["x"], chat=False)
