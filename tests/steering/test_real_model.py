"""End to end on the real SmolLM2-135M-Instruct: extraction parity and a visible sentiment effect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import steering as st
from steering.experiments.cli import main

pytestmark = pytest.mark.slow

N_PAIRS = 48  # enough for a stable direction, small enough for CI on 2 cores


@pytest.fixture(scope="module")
def sentiment_vector(smollm2) -> st.SteeringVector:
    model, tok = smollm2
    return st.extract(model, tok, st.load_pairs("sentiment")[:N_PAIRS], layers=[12])


@torch.no_grad()
def test_cli_mean_diff_matches_hidden_states(smollm2, tmp_path: Path, capsys) -> None:
    """Acceptance: CLI vector at layer 12 == an independent hidden_states mean difference."""
    model, tok = smollm2
    pairs = st.load_pairs("sentiment")[:24]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "positive": p.positive, "negative": p.negative}) + "\n" for p in pairs))
    out = tmp_path / "v.safetensors"
    assert main(["extract", f"data={data}", "layers=[12]", "method=mean_diff", "read=last", f"out={out}", "batch_size=5"]) == 0
    cli = st.SteeringVector.load(out, model).directions[12]

    def last_hidden(prompt: str, completion: str) -> torch.Tensor:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text + completion, add_special_tokens=False, return_tensors="pt")
        return model(**ids, output_hidden_states=True).hidden_states[13][0, -1]

    reference = torch.stack([last_hidden(p.prompt, p.positive) - last_hidden(p.prompt, p.negative) for p in pairs]).mean(0)
    cosine = torch.nn.functional.cosine_similarity(cli, reference, dim=0).item()
    assert cosine >= 0.999, cosine
    assert abs(cli.norm().item() / reference.norm().item() - 1) < 1e-3


def test_sentiment_vector_moves_vader_score(smollm2, sentiment_vector) -> None:
    """+coef makes held-out completions more positive, -coef more negative (VADER compound)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    model, tok = smollm2
    prompts = st.load_lines("sentiment_eval_prompts.txt")[:8]
    training_prompts = {p.prompt for p in st.load_pairs("sentiment")}
    assert not training_prompts & set(prompts)
    analyzer = SentimentIntensityAnalyzer()

    def score(coef: float) -> float:
        texts = st.generate(model, tok, prompts, sentiment_vector, coef, max_new_tokens=32)
        return sum(analyzer.polarity_scores(t)["compound"] for t in texts) / len(texts)

    neutral, happy, sad = score(0.0), score(4.0), score(-4.0)
    assert happy > neutral + 0.05, (sad, neutral, happy)
    assert sad < neutral - 0.3, (sad, neutral, happy)


@torch.no_grad()
def test_real_model_exactness(smollm2, sentiment_vector) -> None:
    """coef 0 == plain generate; a left-padded steered batch == one prompt at a time."""
    model, tok = smollm2
    prompts = ["Describe a cup of tea.", "What is a river?"]
    plain = st.generate(model, tok, prompts, max_new_tokens=12)
    assert st.generate(model, tok, prompts, sentiment_vector, 0.0, max_new_tokens=12) == plain
    batched = st.generate(model, tok, prompts, sentiment_vector, 4.0, max_new_tokens=12, apply_to="generated")
    assert batched == [st.generate(model, tok, p, sentiment_vector, 4.0, max_new_tokens=12, apply_to="generated") for p in prompts]
