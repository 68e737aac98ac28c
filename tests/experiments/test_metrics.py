"""Metric functions on tiny models, checked against direct computations."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from tiny_models import make_tiny

import steering as st
from steering import hooks
from steering.experiments.metrics import METRICS, Cell, Context, EvalData
from steering.experiments.metrics.ab import ab_pmatch, build_items, steerability
from steering.experiments.metrics.data import split_pairs
from steering.experiments.metrics.neutral import kl, neutral_ppl
from steering.experiments.metrics.probe import fit_probe, probe_accuracy
from steering.experiments.metrics.text import ScorerError, distinct_n, gen_ppl, generation_score, generations, make_scorer, repetition
from steering.experiments.run import compose_run
from steering.vectors.text import format_prompt

NEUTRAL = [
    "The Danube flows through ten countries.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Paris is the capital of France.",
    "A week has seven days.",
    "The moon orbits the Earth.",
]
PROMPTS = ["Tell me about the sea", "Describe the park.", "Hi"]


def _vector(model, layers=(1,), scale: float = 2.0, seed: int = 1) -> st.SteeringVector:
    width = model.config.get_text_config().hidden_size
    gen = torch.Generator().manual_seed(seed)
    return st.SteeringVector(
        {i: torch.randn(width, generator=gen) * scale for i in layers}, hidden_size=width, num_layers=hooks.num_layers(model)
    )


def _ctx(*overrides: str, data: EvalData | None = None, arch: str = "llama") -> Context:
    model, tok = make_tiny(arch)
    cfg = compose_run(["out_dir=/tmp/unused", "eval.batch_size=2", "eval.max_new_tokens=6", *overrides])
    return Context(model, tok, cfg, data or EvalData(prompts=PROMPTS, neutral=NEUTRAL))


def _cell(ctx: Context, coef: float, layers=(1,), index: int = 1, positions: str = "all") -> Cell:
    return Cell(index, tuple(layers), coef, _vector(ctx.model, layers), positions)


# --------------------------------------------------------------------------- neutral text


@torch.no_grad()
def _manual_neutral(ctx: Context, vector: st.SteeringVector, coef: float) -> tuple[float, float]:
    """(ppl ratio, mean KL) from one unpadded forward per sentence, steering every position."""
    text, _ = format_prompt(ctx.tokenizer, "Tell me a fact.", None)
    prompt_ids = ctx.tokenizer(text, add_special_tokens=False)["input_ids"]
    nll_plain = nll_steered = total_kl = 0.0
    tokens = 0
    for sentence in NEUTRAL:
        reply_ids = ctx.tokenizer(sentence, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + reply_ids])
        start = len(prompt_ids) - 1
        plain = torch.log_softmax(ctx.model(ids).logits[0, start:-1].double(), -1)
        with st.steer(ctx.model, vector, coef=coef):
            steered = torch.log_softmax(ctx.model(ids).logits[0, start:-1].double(), -1)
        target = torch.tensor(reply_ids)
        nll_plain -= float(plain.gather(1, target[:, None]).sum())
        nll_steered -= float(steered.gather(1, target[:, None]).sum())
        total_kl += float((plain.exp() * (plain - steered)).sum())
        tokens += len(reply_ids)
    return math.exp((nll_steered - nll_plain) / tokens), total_kl / tokens


def test_neutral_side_effects_match_direct_computation() -> None:
    ctx = _ctx()
    cell = _cell(ctx, 3.0)
    ppl, divergence = neutral_ppl(ctx, cell)["neutral_ppl"], kl(ctx, cell)["kl"]
    want_ppl, want_kl = _manual_neutral(ctx, cell.vector, cell.layer_coef)
    assert ppl == pytest.approx(want_ppl, rel=1e-4)
    assert divergence == pytest.approx(want_kl, rel=1e-3, abs=1e-6)
    assert divergence > 0.01


def test_baseline_and_zero_coef_have_no_side_effects() -> None:
    ctx = _ctx()
    for cell in (Cell(0), _cell(ctx, 0.0)):
        assert neutral_ppl(ctx, cell) == {"neutral_ppl": 1.0}
        assert kl(ctx, cell) == {"kl": 0.0}


def test_side_effects_grow_with_the_coefficient() -> None:
    ctx = _ctx()
    kls = [kl(ctx, _cell(ctx, c, index=i))["kl"] for i, c in enumerate([0.5, 2.0, 8.0], start=1)]
    assert kls[0] < kls[1] < kls[2]


def test_neutral_unsteered_pass_is_cached_once() -> None:
    ctx = _ctx()
    kl(ctx, _cell(ctx, 1.0))
    first = ctx.cache["neutral"]
    kl(ctx, _cell(ctx, 2.0, index=2))
    assert ctx.cache["neutral"] is first


# --------------------------------------------------------------------------- generations


def test_generations_are_steered_generate_output() -> None:
    ctx = _ctx()
    cell = _cell(ctx, 4.0)
    got = generations(ctx, cell)
    want = st.generate(ctx.model, ctx.tokenizer, PROMPTS, cell.vector, cell.layer_coef, max_new_tokens=6)
    assert got == want
    assert generations(ctx, Cell(0)) == st.generate(ctx.model, ctx.tokenizer, PROMPTS, max_new_tokens=6)
    assert got != generations(ctx, Cell(0))


def test_window_splits_the_coefficient() -> None:
    ctx = _ctx()
    cell = Cell(1, (0, 1), 4.0, _vector(ctx.model, (0, 1)))
    assert cell.layer_coef == 2.0 and cell.label == "0-1"
    want = st.generate(ctx.model, ctx.tokenizer, PROMPTS, cell.vector, 2.0, max_new_tokens=6)
    assert generations(ctx, cell) == want


def test_vader_scorer_signs() -> None:
    cfg = compose_run(["out_dir=/tmp/unused"])
    happy, sad, flat = make_scorer(cfg.metric)(
        ["What a wonderful, happy, lovely day!", "What an awful, miserable, horrible day.", "The table has four legs."]
    )
    assert happy > 0.5 and sad < -0.5 and flat == 0.0


def test_generation_score_with_keyword_scorer_and_preset_texts() -> None:
    ctx = _ctx("metric=keyword", "metric.keywords=[sea,Park]")
    cell = Cell(0)
    cell.cache["generations"] = ["The sea is calm.", "We walked in the park.", "Nothing here.", "seasons change"]
    values = generation_score(ctx, cell)
    assert values["keyword"] == 0.5  # whole words, any case; "seasons" is not "sea"
    assert cell.cache["scores"] == [1.0, 1.0, 0.0, 0.0]


def test_callable_scorer_by_path() -> None:
    ctx = _ctx("metric.scorer=builtins:len", "metric.effect=score")
    cell = Cell(0)
    cell.cache["generations"] = ["abc", "abcdefg"]
    assert generation_score(ctx, cell)["score"] == 5.0


@pytest.mark.parametrize(
    ("scorer", "keywords", "message"),
    [
        ("keyword", [], "metric.keywords"),
        ("no_such_module_xyz:f", [], "cannot import"),
        ("builtins:nothing_here", [], "cannot import"),
        ("nodots", [], "module:function"),
        ("math:pi", [], "not callable"),
    ],
)
def test_bad_scorers_are_named(scorer: str, keywords: list[str], message: str) -> None:
    cfg = compose_run(["out_dir=/tmp/unused", f"metric.scorer={scorer}", f"metric.keywords={keywords}"])
    with pytest.raises(ScorerError, match=message):
        make_scorer(cfg.metric)


def test_scorer_returning_a_non_number_is_an_error() -> None:
    ctx = _ctx("metric.scorer=builtins:str", "metric.effect=score")
    cell = Cell(0)
    cell.cache["generations"] = ["x"]
    with pytest.raises(ScorerError, match="expected a finite number"):
        generation_score(ctx, cell)


def test_distinct_n() -> None:
    assert distinct_n("the cat the cat") == pytest.approx(2 / 3)
    assert distinct_n("a b c d") == 1.0
    assert distinct_n("word") is None
    assert distinct_n("no no no no no") == pytest.approx(1 / 4)


def test_repetition_averages_over_texts() -> None:
    ctx = _ctx()
    cell = Cell(0)
    cell.cache["generations"] = ["the cat the cat", "a b c", "x"]
    assert repetition(ctx, cell)["distinct2"] == pytest.approx((2 / 3 + 1.0) / 2)


@torch.no_grad()
def test_gen_ppl_is_unsteered_perplexity_of_the_generations() -> None:
    ctx = _ctx()
    cell = _cell(ctx, 4.0)
    texts = generations(ctx, cell)
    nll, tokens = 0.0, 0
    for prompt, text in zip(PROMPTS, texts):
        prefix, _ = format_prompt(ctx.tokenizer, prompt, None)
        prompt_ids = ctx.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        reply_ids = ctx.tokenizer(text, add_special_tokens=False)["input_ids"]
        logits = ctx.model(torch.tensor([prompt_ids + reply_ids])).logits[0, len(prompt_ids) - 1 : -1]
        nll -= float(torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(reply_ids)[:, None]).sum())
        tokens += len(reply_ids)
    assert gen_ppl(ctx, cell)["gen_ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)


# --------------------------------------------------------------------------- A/B


def _ab_ctx(ab_file) -> Context:
    items = st.load_pairs(ab_file)
    return _ctx("metric=ab", "data.holdout=0.2", data=EvalData(items=items))


def test_ab_items_read_the_letter_after_the_bracket(ab_file) -> None:
    ctx = _ab_ctx(ab_file)
    items = build_items(ctx.tokenizer, ctx.data.items, None)
    letter_a = ctx.tokenizer("(A", add_special_tokens=False)["input_ids"][-1]
    letter_b = ctx.tokenizer("(B", add_special_tokens=False)["input_ids"][-1]
    assert items[0].reply == "(" and (items[0].match, items[0].other) == (letter_a, letter_b)
    assert (items[1].match, items[1].other) == (letter_b, letter_a)
    assert (items[0].match_label, items[1].match_label) == ("A", "B")


@torch.no_grad()
def test_ab_pmatch_matches_direct_softmax(ab_file) -> None:
    ctx = _ab_ctx(ab_file)
    values = ab_pmatch(ctx, Cell(0))
    items = build_items(ctx.tokenizer, ctx.data.items, None)
    shares, share_a, masses = [], [], []
    for item in items:
        text, _ = format_prompt(ctx.tokenizer, item.prompt, None)
        ids = ctx.tokenizer(text, add_special_tokens=False)["input_ids"] + ctx.tokenizer("(", add_special_tokens=False)["input_ids"]
        probs = torch.softmax(ctx.model(torch.tensor([ids])).logits[0, -1].double(), -1)
        p_match, p_other = float(probs[item.match]), float(probs[item.other])
        shares.append(p_match / (p_match + p_other))
        masses.append(p_match + p_other)
        share_a.append(shares[-1] if item.match_label == "A" else 1 - shares[-1])
    assert values["p_match"] == pytest.approx(np.mean(shares), rel=1e-5)
    assert values["ab_mass"] == pytest.approx(np.mean(masses), rel=1e-5)
    assert values["share_A"] == pytest.approx(np.mean(share_a), rel=1e-5)
    assert values["share_A"] + values["share_B"] == pytest.approx(1.0)
    for label in ("A", "B"):
        want = [s for s, item in zip(shares, items) if item.match_label == label]
        assert values[f"p_match_{label}"] == pytest.approx(np.mean(want), rel=1e-5)


@torch.no_grad()
def test_a_letter_shift_is_not_an_effect_on_the_behaviour(ab_file) -> None:
    """A vector that only favours answer letter A (unembedding row of A minus B's, added at the
    last layer) moves p_match up on items matching A and down on items matching B; scored on
    letter-balanced items the summary does not call that steering."""
    from steering.experiments.summary import letter_effects
    from steering.vectors import swap_letters

    items = st.load_pairs(ab_file)
    ctx = _ctx("metric=ab", data=EvalData(items=[q for p in items for q in (p, swap_letters(p))]))
    ab = build_items(ctx.tokenizer, ctx.data.items, None)
    assert sum(i.match_label == "A" for i in ab) == sum(i.match_label == "B" for i in ab)
    letter_a, letter_b = next((i.match, i.other) for i in ab if i.match_label == "A")
    unembed = ctx.model.get_output_embeddings().weight.detach()
    last = hooks.num_layers(ctx.model) - 1
    width = unembed.shape[1]
    shift = st.SteeringVector({last: unembed[letter_a] - unembed[letter_b]}, hidden_size=width, num_layers=last + 1)
    base = ab_pmatch(ctx, Cell(0))
    shifted = ab_pmatch(ctx, Cell(1, (last,), 4.0, shift))
    assert shifted["share_A"] > base["share_A"] + 0.05
    assert shifted["p_match_A"] > base["p_match_A"] and shifted["p_match_B"] < base["p_match_B"]
    for direction in ("positive", "negative"):
        effects = letter_effects({direction: {"status": "ok", "values": shifted}}, base)
        assert effects[direction]["consistent"] is False
    # An effect on the behaviour moves both letters' items the same way.
    moved = {**base, "p_match_A": base["p_match_A"] + 0.1, "p_match_B": base["p_match_B"] + 0.05}
    effects = letter_effects({"positive": {"status": "ok", "values": moved}, "negative": {"status": "no_effect"}}, base)
    assert effects == {"positive": {"deltas": {"A": pytest.approx(0.1), "B": pytest.approx(0.05)}, "consistent": True}}


def test_ab_pmatch_moves_with_steering(ab_file) -> None:
    ctx = _ab_ctx(ab_file)
    base = ab_pmatch(ctx, Cell(0))["p_match"]
    moved = ab_pmatch(ctx, _cell(ctx, 6.0, layers=(2,)))["p_match"]
    assert abs(moved - base) > 1e-3


def test_steerability_slope_and_wrong_sign() -> None:
    coefs = [0.0, -2.0, -1.0, 1.0, 2.0]
    slopes = np.array([0.5, -0.25, 1.0, 2.0])
    cells = []
    for i, c in enumerate(coefs):
        cell = Cell(i, (1,), c)
        cell.cache["ab_diff"] = 0.3 + slopes * c
        cells.append(cell)
    values = steerability(None, cells)  # type: ignore[arg-type]
    assert values["slope"] == pytest.approx(slopes.mean())
    assert values["wrong_sign"] == pytest.approx(0.25)
    flat = [Cell(0), Cell(1, (1,), 0.0)]
    for cell in flat:
        cell.cache["ab_diff"] = np.zeros(2)
    assert math.isnan(steerability(None, flat)["slope"])  # type: ignore[arg-type]


def test_multi_token_answers_are_rejected_with_the_item_named() -> None:
    _, tok = make_tiny("llama")
    pairs = [st.ContrastPair("(Apples and pears", "(Bananas and kiwis", "Which fruit?")]
    with pytest.raises(st.DatasetError, match="A/B item 0: answer"):
        build_items(tok, pairs, None)


# --------------------------------------------------------------------------- probes


def test_fit_probe_separable_and_random() -> None:
    rng = np.random.default_rng(0)
    x_pos, x_neg = rng.normal(2.0, 1.0, (100, 8)), rng.normal(-2.0, 1.0, (100, 8))
    x, y = np.concatenate([x_pos, x_neg]), np.r_[np.ones(100), np.zeros(100)]
    order = rng.permutation(200)
    train, test = order[:140], order[140:]
    good = fit_probe(x[train], y[train], x[test], y[test])
    assert good == {"probe_accuracy": 1.0, "probe_auroc": 1.0}
    noise = rng.normal(0.0, 1.0, (400, 8))
    labels = rng.integers(0, 2, 400).astype(float)
    chance = fit_probe(noise[:300], labels[:300], noise[300:], labels[300:])
    assert 0.3 < chance["probe_accuracy"] < 0.7 and 0.3 < chance["probe_auroc"] < 0.7


def test_fit_probe_scores_by_hand() -> None:
    # One feature, symmetric training data: the probe is increasing in x with its threshold at 0,
    # so accuracy and AUROC on the test points can be counted by hand.
    x_train = np.r_[1.0:6.0, -5.0:0.0][:, None]
    y_train = np.r_[np.ones(5), np.zeros(5)]
    x_test = np.array([3.0, 2.0, 1.0, -2.0, -3.0, -1.0, 2.5, -0.5])[:, None]
    y_test = np.r_[np.ones(4), np.zeros(4)]
    # right side of 0: positives 3, 2, 1; negatives -3, -1, -0.5 -> 6 of 8
    # positive above negative: 3 beats 4, 2 and 1 beat 3 each, -2 beats 1 -> 11 of 16 pairs
    assert fit_probe(x_train, y_train, x_test, y_test) == pytest.approx({"probe_accuracy": 6 / 8, "probe_auroc": 11 / 16})


def test_fit_probe_auroc_counts_ties_half_as_sklearn_does() -> None:
    # The probe's AUROC is steering.compare.auroc (rank-sum): equal to sklearn's, ties included.
    from sklearn.metrics import roc_auc_score

    from steering.vectors import fit_logistic

    x_train = np.r_[1.0:6.0, -5.0:0.0][:, None]
    y_train = np.r_[np.ones(5), np.zeros(5)]
    x_test = np.array([1.0, 1.0, 0.0, 2.0, 0.0, 1.0, -1.0, 2.0])[:, None]  # tied scores across the classes
    y_test = np.r_[np.ones(4), np.zeros(4)]
    scores = fit_logistic(x_train, y_train).decision_function(x_test)
    assert fit_probe(x_train, y_train, x_test, y_test)["probe_auroc"] == pytest.approx(roc_auc_score(y_test, scores), abs=1e-12)


def test_probe_method_is_the_metric_probe_direction() -> None:
    # One logistic probe: the extraction method's direction is fit_logistic's, signed and scaled.
    from steering.vectors import LayerStats, fit_logistic, get_method

    rng = np.random.default_rng(1)
    pos, neg = torch.from_numpy(rng.normal(1.0, 1.0, (30, 6))), torch.from_numpy(rng.normal(-1.0, 1.0, (30, 6)))
    stats = LayerStats(6, keep_samples=True)
    stats.update(pos, neg)
    got = get_method("probe").fn(stats).double()
    x = torch.cat([pos.float(), neg.float()]).double().numpy()
    direction = torch.from_numpy(fit_logistic(x, np.r_[np.ones(30), np.zeros(30)]).direction)
    assert torch.allclose(got / got.norm(), direction / direction.norm(), atol=1e-6)


def test_one_scorer_type_for_metrics_and_interpolation() -> None:
    from steering import compare as sc
    from steering import scoring
    from steering.scoring import keyword_scorer, per_text

    assert sc.Scorer is scoring.Scorer and sc.sentiment_scorer is scoring.sentiment_scorer
    assert keyword_scorer(["sea"])(["The Sea.", "seasons"]) == [1.0, 0.0]
    assert per_text(len)(["ab", ""]) == [2, 0]
    cfg = compose_run(["out_dir=/tmp/unused", "metric.scorer=builtins:len"])
    assert make_scorer(cfg.metric)(["abc", "a"]) == [3, 1]


@torch.no_grad()
def _last_token_states(model, tok, texts: list[str], layers: list[int]) -> dict[int, np.ndarray]:
    """Each text alone (no padding): the last token's output of each decoder block, read by a plain hook."""
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    blocks = hooks.decoder_layers(model)
    handles = [
        blocks[i].register_forward_hook(lambda m, a, o, i=i: seen[i].append((o[0] if isinstance(o, tuple) else o)[0, -1].double()))
        for i in layers
    ]
    try:
        for text in texts:
            model(**tok(text, return_tensors="pt"))
    finally:
        for handle in handles:
            handle.remove()
    return {i: torch.stack(seen[i]).numpy() for i in layers}


def test_probe_accuracy_per_layer_on_a_tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = [st.ContrastPair(f"I love item {i}, it is wonderful.", f"I hate item {i}, it is awful.", None) for i in range(20)]
    ctx = _ctx("eval.test_fraction=0.25", data=EvalData(pairs=pairs))
    layers = [0, 2]
    probe_module = importlib.import_module("steering.experiments.metrics.probe")
    fitted = []
    monkeypatch.setattr(probe_module, "fit_probe", lambda *args, **kw: fitted.append(args) or fit_probe(*args, **kw))
    values = probe_accuracy(ctx, layers)
    assert sorted(values) == layers and len(fitted) == len(layers)
    # Reference: the same split, activations read one text at a time by a plain hook. The
    # accuracies themselves saturate at 1.0 on this data (64 features, 30 training texts), so
    # compare what the probe was fitted and scored on, then the scores it gave.
    train, test = split_pairs(pairs, 0.25, ctx.seed)
    assert len(test) == 5 and not {p.positive for p in train} & {p.positive for p in test}

    def xy(part):
        states = _last_token_states(ctx.model, ctx.tokenizer, [p.positive for p in part] + [p.negative for p in part], layers)
        return {i: (x, np.r_[np.ones(len(part)), np.zeros(len(part))]) for i, x in states.items()}

    def assert_same_rows(got: np.ndarray, want: np.ndarray) -> None:
        """Equal up to the order of the rows (extraction batches texts by length)."""
        order = [int(np.abs(want - row).max(1).argmin()) for row in got]
        assert sorted(order) == list(range(len(want)))
        np.testing.assert_allclose(got, want[order], atol=1e-5, rtol=0)

    train_xy, test_xy = xy(train), xy(test)
    for i, (x_train, y_train, x_test, y_test) in zip(layers, fitted):
        for x, y, (want_x, want_y) in ((x_train, y_train, train_xy[i]), (x_test, y_test, test_xy[i])):
            np.testing.assert_array_equal(y, want_y)  # positives first, then negatives
            assert_same_rows(x[y == 1], want_x[want_y == 1])
            assert_same_rows(x[y == 0], want_x[want_y == 0])
        assert values[i] == pytest.approx(fit_probe(*train_xy[i], *test_xy[i], seed=ctx.seed), abs=1e-6), i
    # "love"/"hate" at a fixed spot: the final-token state separates them once attention mixed them in.
    assert values[2]["probe_auroc"] >= 0.75


def test_registry_lists_every_metric_the_issue_names() -> None:
    assert {"ab_pmatch", "generation_score", "neutral_ppl", "kl", "repetition", "gen_ppl", "probe_accuracy"} <= set(METRICS)
    assert METRICS["probe_accuracy"].kind == "layer"
    assert METRICS["ab_pmatch"].row is steerability


def test_neutral_cache_holds_no_vocabulary_sized_tensors() -> None:
    """The unsteered pass keeps running sums, not [tokens, vocab] log-probs for the whole set."""
    ctx = _ctx()
    kl(ctx, _cell(ctx, 1.0))
    vocab = ctx.model.config.vocab_size
    kept = [v for v in vars(ctx.cache["neutral"]).values() if isinstance(v, (list, torch.Tensor))]
    flat = [t for v in kept for t in (v if isinstance(v, list) else [v])]
    assert not any(isinstance(t, torch.Tensor) and t.shape[-1] == vocab for t in flat)


def test_negative_kl_beyond_rounding_raises() -> None:
    from steering.experiments.metrics.neutral import KL_TOLERANCE, kl_sum

    reference = torch.log_softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(0)), -1)
    assert kl_sum(reference, reference) == 0.0
    assert kl_sum(reference, reference + KL_TOLERANCE / 10) == 0.0  # rounding-sized: counted as 0
    with pytest.raises(ArithmeticError, match="below -0.0001.*not normalised"):
        kl_sum(reference, reference + 0.5)  # not a distribution: KL would be -0.5 per token
