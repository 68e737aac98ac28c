"""Issue 14 evaluation: per-prompt results, degeneration, base-model neutral text, prompting cells, capability."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny

import steering as st
from steering import hooks
from steering.experiments.metrics import Cell, Context, EvalData
from steering.experiments.metrics.capability import capability
from steering.experiments.metrics.data import load_capability
from steering.experiments.metrics.neutral import kl, neutral_ppl
from steering.experiments.metrics.text import generation_score, generations, repetition
from steering.experiments.run import compose_run
from steering.vectors.text import format_prompt

NEUTRAL = ["The Danube flows through ten countries.", "A week has seven days.", "The moon orbits the Earth."]
PROMPTS = ["Tell me about the sea", "Describe the park.", "Hi"]


def _ctx(*overrides: str, chat: bool = True, data: EvalData | None = None) -> Context:
    model, tok = make_tiny("llama", chat_template=chat)
    cfg = compose_run(["out_dir=/tmp/unused", "eval.batch_size=2", "eval.max_new_tokens=6", *overrides])
    return Context(model, tok, cfg, data or EvalData(prompts=PROMPTS, neutral=NEUTRAL))


def _vector(model, layers=(1,), scale: float = 2.0) -> st.SteeringVector:
    width = model.config.hidden_size
    gen = torch.Generator().manual_seed(1)
    return st.SteeringVector(
        {i: torch.randn(width, generator=gen) * scale for i in layers}, hidden_size=width, num_layers=hooks.num_layers(model)
    )


# --------------------------------------------------------------------------- per prompt


def test_per_prompt_change_and_wrong_way_against_hand_values() -> None:
    ctx = _ctx("metric=keyword", "metric.keywords=[sea]")
    base = Cell(0)
    base.cache["generations"] = ["sea", "no", "sea", "no", "no"]  # scores 1 0 1 0 0
    up = Cell(1, (1,), 2.0, _vector(ctx.model))
    up.cache["generations"] = ["sea", "sea", "no", "sea", "no"]  # scores 1 1 0 1 0: changes 0 +1 -1 +1 0
    assert generation_score(ctx, base)["wrong_way"] == 0.0
    values = generation_score(ctx, up)
    assert values["keyword"] == pytest.approx(0.6)
    assert values["wrong_way"] == pytest.approx(1 / 5)  # one prompt moved down under a positive coef
    assert values["delta_median"] == 0.0
    assert values["delta_p10"] == pytest.approx(-1 + 0.4 * 1)  # numpy's linear rule on sorted [-1, 0, 0, 1, 1]
    assert values["delta_p90"] == 1.0
    down = Cell(2, (1,), -2.0, _vector(ctx.model))
    down.cache["generations"] = up.cache["generations"]
    assert generation_score(ctx, down)["wrong_way"] == pytest.approx(2 / 5)  # the two that went up


def test_per_prompt_values_without_a_measured_baseline_generate_it() -> None:
    ctx = _ctx("metric.scorer=builtins:len", "metric.effect=score")
    cell = Cell(3, (1,), 4.0, _vector(ctx.model))
    values = generation_score(ctx, cell)
    plain = st.generate(ctx.model, ctx.tokenizer, PROMPTS, max_new_tokens=6, batch_size=2)
    changes = sorted(len(a) - len(b) for a, b in zip(generations(ctx, cell), plain))
    assert values["delta_median"] == changes[1]
    assert values["wrong_way"] == pytest.approx(sum(c < 0 for c in changes) / 3)


def test_degenerate_counts_prompts_that_turned_repetitive() -> None:
    ctx = _ctx()
    base = Cell(0)
    base.cache["generations"] = ["I walked to the shop and bought bread.", "A.\n\nA.\n\nA.\n\nA.", "It was a calm day by the sea."]
    steered = Cell(1, (1,), 2.0, _vector(ctx.model))
    steered.cache["generations"] = ["A.\n\nA.\n\nA.\n\nA.", "A.\n\nA.\n\nA.\n\nA.", "the sea the sea the sea the sea"]
    assert repetition(ctx, base)["degenerate"] == 0.0
    values = repetition(ctx, steered)
    assert values["degenerate"] == pytest.approx(2 / 3)  # the second was repetitive unsteered too


# --------------------------------------------------------------------------- neutral text


@torch.no_grad()
def _manual(ctx: Context, prefix_ids: list[int], vector: st.SteeringVector | None, coef: float, prompt_ids=None) -> tuple[float, float]:
    """(ppl ratio, mean KL): sentences after ``prefix_ids`` unsteered vs after ``prompt_ids`` (default: the same) steered."""
    nll_plain = nll_other = total = 0.0
    tokens = 0
    for sentence in NEUTRAL:
        reply = ctx.tokenizer(sentence, add_special_tokens=False)["input_ids"]
        plain = torch.log_softmax(ctx.model(torch.tensor([prefix_ids + reply])).logits[0, len(prefix_ids) - 1 : -1].double(), -1)
        other_ids = prefix_ids if prompt_ids is None else prompt_ids
        if vector is None:
            other = torch.log_softmax(ctx.model(torch.tensor([other_ids + reply])).logits[0, len(other_ids) - 1 : -1].double(), -1)
        else:
            with st.steer(ctx.model, vector, coef=coef):
                other = torch.log_softmax(ctx.model(torch.tensor([other_ids + reply])).logits[0, len(other_ids) - 1 : -1].double(), -1)
        target = torch.tensor(reply)[:, None]
        nll_plain -= float(plain.gather(1, target).sum())
        nll_other -= float(other.gather(1, target).sum())
        total += float((plain.exp() * (plain - other)).sum())
        tokens += len(reply)
    return math.exp((nll_other - nll_plain) / tokens), total / tokens


def test_base_model_reads_neutral_text_from_bos_not_after_a_user_turn() -> None:
    ctx = _ctx(chat=False)
    vector = _vector(ctx.model)
    cell = Cell(1, (1,), 3.0, vector)
    want_ppl, want_kl = _manual(ctx, [ctx.tokenizer.bos_token_id], vector, 3.0)
    assert neutral_ppl(ctx, cell)["neutral_ppl"] == pytest.approx(want_ppl, rel=1e-4)
    assert kl(ctx, cell)["kl"] == pytest.approx(want_kl, rel=1e-3, abs=1e-6)
    batch = ctx.cache["neutral"].batches[0]
    assert batch.prompt_ids.tolist() == [[ctx.tokenizer.bos_token_id]]  # no "Tell me a fact." before the text


def test_prompting_cell_neutral_side_effects_are_those_of_the_instruction() -> None:
    ctx = _ctx()
    cell = Cell(1, (), 1.0, None, instruction="Be cheerful.")
    plain_text, _ = format_prompt(ctx.tokenizer, "Tell me a fact.", None)
    asked_text, _ = format_prompt(ctx.tokenizer, "Be cheerful.\n\nTell me a fact.", None)
    plain = ctx.tokenizer(plain_text, add_special_tokens=False)["input_ids"]
    asked = ctx.tokenizer(asked_text, add_special_tokens=False)["input_ids"]
    want_ppl, want_kl = _manual(ctx, plain, None, 0.0, prompt_ids=asked)
    assert neutral_ppl(ctx, cell)["neutral_ppl"] == pytest.approx(want_ppl, rel=1e-4)
    assert kl(ctx, cell)["kl"] == pytest.approx(want_kl, rel=1e-3, abs=1e-6)
    assert want_kl > 1e-4  # the instruction does change the next-token distributions


def test_prompting_cell_generates_from_the_instructed_prompts() -> None:
    ctx = _ctx()
    cell = Cell(1, (), -1.0, None, instruction="Be gloomy.")
    want = st.generate(ctx.model, ctx.tokenizer, [f"Be gloomy.\n\n{p}" for p in PROMPTS], max_new_tokens=6, batch_size=2)
    assert generations(ctx, cell) == want and not cell.is_baseline and not cell.steers


# --------------------------------------------------------------------------- capability


MMLU = [
    {"prompt": "Is the sky blue?\n\nChoices:\n(A) Yes\n(B) No", "correct": "(A)", "incorrect": "(B)"},
    {"prompt": "Is ice hot?\n\nChoices:\n(A) Yes\n(B) No", "correct": "(B)", "incorrect": "(A)"},
    {"prompt": "Do fish swim?\n\nChoices:\n(A) No\n(B) Yes", "correct": "(B)", "incorrect": "(A)"},
    {"prompt": "Is two more than one?\n\nChoices:\n(A) Yes\n(B) No", "correct": "(A)", "incorrect": "(B)"},
]


@torch.no_grad()
def test_capability_is_two_choice_accuracy_by_direct_softmax(tmp_path: Path) -> None:
    path = tmp_path / "mmlu.json"
    path.write_text(json.dumps(MMLU))
    ctx = _ctx("eval.chat=true", data=EvalData(capability=load_capability(str(path), None)))
    vector = _vector(ctx.model, scale=4.0)
    for cell in (Cell(0), Cell(1, (1,), 6.0, vector)):
        right = 0
        for item in MMLU:
            text, _ = format_prompt(ctx.tokenizer, item["prompt"], True)
            ids = ctx.tokenizer(text + "(", add_special_tokens=False)["input_ids"]
            with cell.steering(ctx.model):
                logits = ctx.model(torch.tensor([ids])).logits[0, -1]
            letter = {x: ctx.tokenizer("(" + x, add_special_tokens=False)["input_ids"][-1] for x in "AB"}
            right += bool(logits[letter[item["correct"][1]]] > logits[letter[item["incorrect"][1]]])
        values = capability(ctx, cell)
        assert values["capability"] == pytest.approx(right / len(MMLU))
    assert values["capability_drop"] == pytest.approx(ctx.cache["capability_base"] - values["capability"])


@pytest.mark.parametrize(
    ("content", "message"),
    [("[]", "non-empty JSON list"), ('[{"prompt": "q"}]', "item 0 needs the strings"), ("{", "invalid JSON")],
)
def test_bad_capability_files_are_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(st.DatasetError, match=message):
        load_capability(str(path), None)
    with pytest.raises(st.DatasetError, match="no such file"):
        load_capability(str(tmp_path / "absent.json"), None)


@pytest.mark.slow
@torch.no_grad()
def test_gemma3_neutral_text_is_read_from_bos(gemma3) -> None:
    """Gemma-3-270M has no chat template: neutral sentences follow its BOS alone, as in training."""
    model, tok = gemma3
    cfg = compose_run(["out_dir=/tmp/unused", "eval.batch_size=2", "model=gemma3"])
    ctx = Context(model, tok, cfg, EvalData(neutral=NEUTRAL))
    assert neutral_ppl(ctx, Cell(0))["neutral_ppl"] == 1.0
    assert ctx.cache["neutral"].batches[0].prompt_ids.tolist() == [[tok.bos_token_id]]
    nll = 0.0
    for sentence in NEUTRAL:  # the same perplexity from a plain forward over tok(sentence) (BOS added by the tokenizer)
        ids = tok(sentence, return_tensors="pt")["input_ids"]
        assert ids[0, 0] == tok.bos_token_id
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        nll -= float(logprobs.gather(1, ids[0, 1:, None]).sum())
    assert ctx.cache["neutral"].nll == pytest.approx(nll, rel=1e-4)
