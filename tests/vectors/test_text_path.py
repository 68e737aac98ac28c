"""One text path: a pair and a prompt reach the model as the same ids everywhere.

Extraction (`vectors.collect_stats`), generation (`steering.generate`), the
server (`Codec`) and the metrics (`encode_replies`) each tokenise through
`vectors.text`; here the ids each one actually feeds the model (caught by a
forward pre-hook) are compared, for a chat-template tokenizer and a plain one.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_models import make_tiny

import steering as st
from steering.experiments.metrics.replies import encode_replies
from steering.hooks import completion_mask, pad_ids, position_ids, read_indices, read_rows
from steering.server.text import Codec
from steering.vectors import ContrastPair, collect_stats
from steering.vectors.text import pair_texts, prefix_tokens, tokenize_with_offsets

PAIRS = [
    ContrastPair("I love it, a wonderful film.", "I hate it.", "How was the film?"),
    ContrastPair(" Great job!", " Sorry.", "Tell me a story "),
    ContrastPair("happy", "sad"),
]


def _fed_ids(model: Any, run: Any) -> list[list[int]]:
    """The unpadded ``input_ids`` rows of the first forward pass ``run()`` makes."""
    seen: list[list[int]] = []

    def hook(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        if not seen:
            ids = kwargs["input_ids"]
            # generate may drop an all-ones mask
            mask = kwargs.get("attention_mask", torch.ones_like(ids)).bool()
            seen.extend(ids[r][mask[r]].tolist() for r in range(ids.shape[0]))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen


def _paths(model: Any, tok: Any, pair: ContrastPair) -> dict[str, list[list[int]]]:
    """Ids of ``pair`` through each path: prompt alone, and prompt + each completion."""
    assert pair.prompt is not None
    chat = bool(tok.chat_template)
    codec = Codec(tok, [])
    server = codec.encode_chat([{"role": "user", "content": pair.prompt}]) if chat else codec.encode_prompt(pair.prompt)
    (batch,) = encode_replies(tok, [pair.prompt] * 2, [pair.positive, pair.negative], batch_size=2)
    prompt = batch.prompt_ids[0][batch.prompt_mask[0].bool()].tolist()
    order = {row: k for k, row in enumerate(batch.rows)}
    replies = [prompt + batch.reply_ids[order[r]][batch.reply_mask[order[r]].bool()].tolist() for r in (0, 1)]
    return {
        "generate": _fed_ids(model, lambda: st.generate(model, tok, pair.prompt, max_new_tokens=1)),
        "server": [server],
        "metrics prompt": [prompt],
        "extract": _fed_ids(model, lambda: collect_stats(model, tok, [pair], [0], share_prefix=False)),
        "metrics replies": replies,
    }


@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "plain"])
def test_same_ids_through_every_path(chat: bool) -> None:
    model, tok = make_tiny("llama", chat_template=chat)
    assert bool(tok.chat_template) is chat
    for pair in PAIRS[:2]:
        ids = _paths(model, tok, pair)
        assert ids["generate"] == ids["server"] == ids["metrics prompt"], pair
        assert ids["extract"] == ids["metrics replies"], pair
        # Extraction's texts begin with exactly the prompt ids the other paths feed.
        assert all(row[: len(ids["server"][0])] == ids["server"][0] for row in ids["extract"])


@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "plain"])
def test_mean_read_covers_the_scored_reply_tokens(chat: bool) -> None:
    """``position="mean"`` averages exactly the tokens the metrics score as the reply."""
    _, tok = make_tiny("llama", chat_template=chat)
    for pair in PAIRS[:2]:
        (batch,) = encode_replies(tok, [pair.prompt], [pair.positive])
        text, _, prefix, special = pair_texts(tok, pair)
        _, offsets = tokenize_with_offsets(tok, text, special)
        assert prefix_tokens(tok, text, prefix, special, offsets) == int(batch.prompt_mask.sum())
    # Without offsets (slow tokenizers) the prefix is tokenised alone, rstripped: exact unless it ends in whitespace.
    text, _, prefix, special = pair_texts(tok, PAIRS[0])
    assert prefix_tokens(tok, text, prefix, special, None) == len(encode_replies(tok, [PAIRS[0].prompt], [""])[0].prompt_ids[0])


def test_prompt_free_pair_is_plain_text_with_special_tokens() -> None:
    model, tok = make_tiny("llama", chat_template=True)
    (pos, neg) = _fed_ids(model, lambda: collect_stats(model, tok, [PAIRS[2]], [0], share_prefix=False))
    assert pos == tok("happy")["input_ids"] and neg == tok("sad")["input_ids"]


def test_tokenizer_is_only_read() -> None:
    model, tok = make_tiny("llama")
    before = (tok.padding_side, tok.truncation_side, tok.chat_template)
    _paths(model, tok, PAIRS[0])
    assert (tok.padding_side, tok.truncation_side, tok.chat_template) == before


# --------------------------------------------------------------------------- hooks.tokens


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_positions_and_reads(side: str) -> None:
    rows = [[5, 6, 7], [8], []]
    ids, mask = pad_ids(rows, pad_id=0, side=side)
    assert [r[m.bool()].tolist() for r, m in zip(ids, mask)] == rows
    assert (ids[~mask.bool()] == 0).all()
    assert [p[m.bool()].tolist() for p, m in zip(position_ids(mask), mask)] == [[0, 1, 2], [0], []]
    hidden = ids[..., None].float().expand(-1, -1, 2)
    last = read_rows(hidden[:2], read_indices(mask[:2]))
    assert last[:, 0].tolist() == [7.0, 8.0]
    mean = read_rows(hidden[:2], completion_mask(mask[:2], torch.tensor([1, 0])))
    assert mean[:, 0].tolist() == [6.5, 8.0]


def test_pad_ids_rejects_unknown_side() -> None:
    with pytest.raises(ValueError, match="side"):
        pad_ids([[1]], 0, side="middle")  # type: ignore[arg-type]


@pytest.mark.slow
def test_same_ids_through_every_path_smollm2(smollm2) -> None:
    model, tok = smollm2
    assert tok.chat_template
    pair = st.load_pairs("sentiment")[0]
    ids = _paths(model, tok, pair)
    assert ids["generate"] == ids["server"] == ids["metrics prompt"]
    assert ids["extract"] == ids["metrics replies"]
