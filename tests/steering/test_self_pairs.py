"""Self-written pairs: the model's own greedy replies under two instructions, against plain ``model.generate``."""

from __future__ import annotations

import logging

import pytest
import torch

import steering as st
from steering.self_pairs import instructed
from steering.vectors.text import format_prompt, tokenize

PROMPTS = ["Describe your day.", "Tell me about the weather.", "What is on the table?"]


def _reference_reply(model, tok, prompt: str, tokens: int) -> str:
    """Greedy reply of plain ``model.generate`` to one prompt, chat-formatted, no batching or padding."""
    text, special = format_prompt(tok, prompt)
    ids = torch.tensor([tokenize(tok, text, special)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_pairs_are_the_models_replies_under_each_instruction(llama) -> None:
    model, tok = llama
    pairs = st.self_written_pairs(model, tok, PROMPTS, "Be happy.", "Be sad.", max_new_tokens=6, batch_size=2)
    assert [p.prompt for p in pairs] == PROMPTS  # the plain prompt, not the instructed one
    for pair, prompt in zip(pairs, PROMPTS):
        assert pair.positive == _reference_reply(model, tok, instructed("Be happy.", prompt), 6)
        assert pair.negative == _reference_reply(model, tok, instructed("Be sad.", prompt), 6)
    assert any(p.positive != p.negative for p in pairs)  # the instruction reaches the replies


def test_a_prompt_with_an_empty_reply_gives_no_pair(llama, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    model, tok = llama

    def fake(model, tok, prompts, vector, **kwargs):  # the second prompt's reply is whitespace under either instruction
        return ["  " if "weather" in p else f"reply to {p[-8:]}" for p in prompts]

    monkeypatch.setattr("steering.self_pairs.generate", fake)
    with caplog.at_level(logging.WARNING, logger="steering.self_pairs"):
        pairs = st.self_written_pairs(model, tok, PROMPTS, "Be happy.", "Be sad.")
    assert [p.prompt for p in pairs] == [PROMPTS[0], PROMPTS[2]]
    assert "1 of 3 prompts got an empty reply" in caplog.text
    monkeypatch.setattr("steering.self_pairs.generate", lambda *a, **k: [" "] * len(a[2]))
    with pytest.raises(st.DatasetError, match="every one of the 3 prompts"):
        st.self_written_pairs(model, tok, PROMPTS, "Be happy.", "Be sad.")


@pytest.mark.parametrize(
    ("prompts", "positive", "negative", "message"),
    [
        ([], "a", "b", "at least one prompt"),
        (PROMPTS, " ", "b", "positive instruction is empty"),
        (PROMPTS, "a", "", "negative instruction"),
    ],
)
def test_bad_input_is_named(llama, prompts, positive, negative, message) -> None:
    model, tok = llama
    with pytest.raises(st.DatasetError, match=message):
        st.self_written_pairs(model, tok, prompts, positive, negative)
