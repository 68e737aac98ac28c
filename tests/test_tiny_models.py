"""Sanity checks for the download-free tiny models/tokenizer in ``tiny_models``."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    from tiny_models import (
        ARCHS,
        BOS_ID,
        EOS_ID,
        NUM_LAYERS,
        PAD_ID,
        SLIDING_WINDOW,
        VOCAB_SIZE,
        make_tiny,
        make_tiny_model,
        make_tiny_tokenizer,
    )
except ImportError:  # pragma: no cover - --import-mode=importlib, or tests/ as a package
    from tests.tiny_models import (
        ARCHS,
        BOS_ID,
        EOS_ID,
        NUM_LAYERS,
        PAD_ID,
        SLIDING_WINDOW,
        VOCAB_SIZE,
        make_tiny,
        make_tiny_model,
        make_tiny_tokenizer,
    )

LONG_TEXT = "Once upon a time, there was a little girl who lived in a small house near the forest. She walked to the market every morning."
SHORT_TEXT = "Hi there, how are you?"
ROUND_TRIP_TEXTS = [
    "Hello, World!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "Digits 0123456789 and punctuation: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "Tabs\tand\nnew lines\r\n, UPPER lower MiXeD",
    "Zebra-xylophone quizzically vexed; unseen words like 'flibbertigibbet' too.",
    "",
]


@pytest.mark.parametrize("arch", ARCHS)
def test_model_is_tiny(arch):
    # Size, not wall time, keeps the suite fast: timings belong in benchmarks/.
    model = make_tiny_model(arch, seed=1)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.num_hidden_layers == NUM_LAYERS
    assert model.config.vocab_size == VOCAB_SIZE
    assert model.config._attn_implementation == "eager"
    assert sum(p.numel() for p in model.parameters()) < 200_000
    for cfg in (model.config, model.generation_config):
        assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)


@pytest.mark.parametrize("arch", ARCHS)
def test_seed_determinism(arch):
    a = make_tiny_model(arch, seed=0).state_dict()
    b = make_tiny_model(arch, seed=0).state_dict()
    c = make_tiny_model(arch, seed=1).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_model_build_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny_model("llama", seed=7)
    assert torch.equal(torch.rand(3), expected)


def _strip_after_eos(tokens: list[int]) -> list[int]:
    """Cut a generated continuation after its first EOS (batched rows are then padded)."""
    return tokens[: tokens.index(EOS_ID) + 1] if EOS_ID in tokens else tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batch_generation_matches_solo(arch):
    model, tok = make_tiny(arch)
    tok.padding_side = "left"
    texts = [LONG_TEXT, SHORT_TEXT]
    gen_kwargs = dict(do_sample=False, max_new_tokens=5)

    batch = tok(texts, return_tensors="pt", padding=True)
    lengths = batch["attention_mask"].sum(-1).tolist()
    assert lengths[0] > SLIDING_WINDOW + 8 > lengths[1], lengths  # long prompt crosses the sliding window
    assert batch["attention_mask"][1, 0] == 0  # the short row really is left-padded
    with torch.no_grad():
        batch_out = model.generate(**batch, **gen_kwargs)
    prompt_len = batch["input_ids"].shape[1]

    for row, text in enumerate(texts):
        solo = tok([text], return_tensors="pt")
        with torch.no_grad():
            solo_out = model.generate(**solo, **gen_kwargs)
        solo_new = solo_out[0, solo["input_ids"].shape[1] :].tolist()
        batch_new = batch_out[row, prompt_len:].tolist()
        assert _strip_after_eos(batch_new) == _strip_after_eos(solo_new), (arch, row)
        assert all(t == PAD_ID for t in batch_new[len(_strip_after_eos(batch_new)) :])
    # random weights still give input-dependent, non-constant continuations
    assert len(set(batch_out[:, prompt_len:].flatten().tolist())) > 1


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (what ``generate`` does)."""
    # Kept apart from hooks.tokens.position_ids: these tests check the fixtures, not the library.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_logits_match_solo(arch):
    model, tok = make_tiny(arch)
    tok.padding_side = "left"
    batch = tok([LONG_TEXT, SHORT_TEXT], return_tensors="pt", padding=True)
    solo = tok([SHORT_TEXT], return_tensors="pt")
    n = solo["input_ids"].shape[1]
    with torch.no_grad():
        batch_logits = model(**batch, position_ids=_position_ids(batch["attention_mask"])).logits[1, -n:]
        solo_logits = model(**solo).logits[0]
    torch.testing.assert_close(batch_logits, solo_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_logits_without_position_ids(arch):
    """Plain ``model(**batch)`` on a left-padded batch (no ``position_ids``).

    RoPE models are invariant to the constant position offset that left padding
    introduces and OPT derives positions from ``attention_mask`` itself, so they
    match the solo run.  GPT-2 has learned absolute position embeddings and
    numbers positions 0..T-1 *including* the pads, so a left-padded row differs
    from the solo run unless ``position_ids`` are passed (``generate`` does this
    automatically).  This documents upstream behaviour that forward-pass code
    (e.g. activation collection) must handle.
    """
    model, tok = make_tiny(arch)
    tok.padding_side = "left"
    batch = tok([LONG_TEXT, SHORT_TEXT], return_tensors="pt", padding=True)
    solo = tok([SHORT_TEXT], return_tensors="pt")
    n = solo["input_ids"].shape[1]
    with torch.no_grad():
        batch_logits = model(**batch).logits[1, -n:]
        solo_logits = model(**solo).logits[0]
    close = torch.allclose(batch_logits, solo_logits, rtol=1e-4, atol=1e-4)
    assert close == (arch != "gpt2"), arch


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_sliding_window_is_active(arch):
    model, tok = make_tiny(arch)
    assert "sliding_attention" in model.config.layer_types
    assert model.config.sliding_window == SLIDING_WINDOW
    enc = tok([LONG_TEXT], return_tensors="pt")
    assert enc["input_ids"].shape[1] > SLIDING_WINDOW
    with torch.no_grad():
        windowed = model(**enc).logits
        model.config.sliding_window = 10_000
        full = model(**enc).logits
    # identical inside the window, different once tokens fall out of it
    torch.testing.assert_close(windowed[:, :SLIDING_WINDOW], full[:, :SLIDING_WINDOW])
    assert not torch.allclose(windowed[:, SLIDING_WINDOW + 1 :], full[:, SLIDING_WINDOW + 1 :])


@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_states_count(arch):
    model, tok = make_tiny(arch)
    enc = tok(["hello world", "a longer second sentence here"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    assert len(out.hidden_states) == NUM_LAYERS + 1
    assert all(h.shape == (2, enc["input_ids"].shape[1], model.config.hidden_size) for h in out.hidden_states)
    assert out.logits.shape[-1] == VOCAB_SIZE


def test_tokenizer_basics():
    tok = make_tiny_tokenizer()
    assert len(tok) == VOCAB_SIZE == tok.vocab_size
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert tok("hello")["input_ids"] == make_tiny_tokenizer()("hello")["input_ids"]  # deterministic


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_tokenizer_round_trip(text):
    tok = make_tiny_tokenizer()
    ids = tok(text)["input_ids"]
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_instances_are_independent():
    a = make_tiny_tokenizer()
    a.padding_side = "left"
    a.chat_template = "{{ 'x' }}"
    b = make_tiny_tokenizer()
    assert b.padding_side == "right"
    assert b.chat_template != a.chat_template


def test_chat_template_renders():
    tok = make_tiny_tokenizer(chat_template=True)
    msgs = [{"role": "user", "content": "hi"}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>\nhi</s>\n<|assistant|>\n"
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False) == "<|user|>\nhi</s>\n"
    convo = msgs + [{"role": "assistant", "content": "hello!"}]
    assert tok.apply_chat_template(convo, tokenize=False) == "<|user|>\nhi</s>\n<|assistant|>\nhello!</s>\n"
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == tok(prompt)["input_ids"]
    assert EOS_ID in ids


def test_no_chat_template_for_base_tokenizer():
    tok = make_tiny_tokenizer(chat_template=False)
    assert tok.chat_template is None
    with pytest.raises(ValueError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
