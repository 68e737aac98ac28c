"""Conditional steering: the gate against a numpy reading of recorded prompt activations, exactness per row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_vector
from tiny_models import make_tiny

import steering as st
from steering.conditions import Condition, find_condition, prompt_means

PROMPTS = ["Tell me about the sea", "Hi", "What is the weather like today in the city", "A cat sat"]
COND_LAYER = 1


def _numpy_scores(model, tok, prompts, direction: np.ndarray) -> np.ndarray:
    """Reference: each prompt alone (no padding), mean hidden state at the condition layer, cosine with the direction."""
    means = np.stack([_record_mean(model, tok, p, COND_LAYER) for p in prompts])
    return means @ direction / (np.linalg.norm(means, axis=1) * np.linalg.norm(direction))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("combine", ["and", "or"])
@torch.no_grad()
def test_gate_steers_exactly_the_rows_whose_condition_holds(arch: str, combine: str) -> None:
    model, tok = make_tiny(arch)
    behaviour = random_vector(model, [0, 2], scale=6.0, seed=3)  # a layer before and after the condition layer
    cond_vec = random_vector(model, [COND_LAYER], seed=4)
    scores = _numpy_scores(model, tok, PROMPTS, cond_vec.directions[COND_LAYER].double().numpy())
    cut = float(np.median(scores))  # half the prompts on each side
    first = Condition(cond_vec, COND_LAYER, cut)
    # A second condition that always holds (and) / never holds (or), so the combination equals the first.
    second = Condition(cond_vec, COND_LAYER, -1.0 if combine == "and" else 1.0)
    expected = scores > cut
    assert 0 < expected.sum() < len(PROMPTS)

    plain = st.generate(model, tok, PROMPTS, max_new_tokens=6)
    always = st.generate(model, tok, PROMPTS, behaviour, coef=1.0, max_new_tokens=6)
    gated = st.generate(model, tok, PROMPTS, behaviour, coef=1.0, max_new_tokens=6, condition=[first, second], combine=combine)
    assert plain != always  # the behaviour really acts
    for k in range(len(PROMPTS)):
        assert gated[k] == (always[k] if expected[k] else plain[k]), (k, scores[k], cut)


@torch.no_grad()
def test_gate_reads_the_prompt_once_and_holds_under_the_cache() -> None:
    model, tok = make_tiny("llama")
    behaviour = random_vector(model, [0], scale=6.0)
    cond_vec = random_vector(model, [COND_LAYER], seed=4)
    cond = Condition(cond_vec, COND_LAYER, -1.0)  # always holds
    tok.padding_side = "left"
    batch = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    with st.steer(model, behaviour, coef=1.0, condition=cond):
        with st.record(model, layers=[COND_LAYER]) as rec:
            model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        calls = rec.calls[COND_LAYER]
    # the gate's own pass stops at the condition layer: the prompt is read twice there, then one token per step
    assert [c.shape[1] for c in calls][:2] == [batch["input_ids"].shape[1]] * 2
    assert all(c.shape[1] == 1 for c in calls[2:])
    with pytest.raises(st.SteeringError, match="hook backend"):
        st.attach(model, behaviour, condition=cond, backend="fold")


def test_condition_errors() -> None:
    model, tok = make_tiny("llama")
    cond_vec = random_vector(model, [COND_LAYER])
    with pytest.raises(st.SteeringError, match=r"\[-1, 1\]"):
        Condition(cond_vec, COND_LAYER, 1.5)
    with pytest.raises(st.VectorMismatchError, match="not in this vector"):
        Condition(cond_vec, 0, 0.1)
    with pytest.raises(st.SteeringError, match="combine"):
        st.attach(model, cond_vec, condition=Condition(cond_vec, COND_LAYER, 0.0), combine="xor")  # type: ignore[arg-type]


@torch.no_grad()
def test_find_condition_separates_two_prompt_families_and_matches_numpy() -> None:
    model, tok = make_tiny("llama")
    pos = [f"the sea and the boat number {k}" for k in range(12)]
    neg = [f"a cat sat on mat {k} today" for k in range(12)]
    found = find_condition(model, tok, pos, neg, layers=[0, 1, 2], held_out=0.25)
    assert {r["layer"] for r in found.rows} == {0, 1, 2}
    best = max(r["held_out_accuracy"] for r in found.rows)
    assert best == 1.0  # two families of prompts this different separate at some layer
    cond = found.condition
    # independent check: the chosen condition, recomputed with numpy on unpadded prompts, classifies as reported
    means = prompt_means(model, tok, pos + neg, [cond.layer])[cond.layer].numpy()
    reference = np.stack([_record_mean(model, tok, p, cond.layer) for p in pos[:3] + neg[:3]])
    np.testing.assert_allclose(means[[0, 1, 2, 12, 13, 14]], reference, atol=1e-4, rtol=1e-4)
    d = cond.direction.double().numpy()
    scores = means @ d / (np.linalg.norm(means, axis=1) * np.linalg.norm(d))
    on = scores > cond.threshold if cond.above else scores < cond.threshold
    assert on[:12].mean() >= 0.9 and on[12:].mean() <= 0.1


def _record_mean(model, tok, prompt: str, layer: int) -> np.ndarray:
    ids = torch.tensor([st.vectors.encode_prompt(tok, prompt)])
    with st.record(model, layers=[layer]) as rec:
        model(input_ids=ids)
    return rec[layer][0].double().numpy().mean(0)


def _brute_force(pos: np.ndarray, neg: np.ndarray, max_fpr: float | None) -> tuple[float, float]:
    """Reference: every cut between sorted scores on both sides, plain loops; the best (key, balanced accuracy)."""
    values = sorted(set(pos) | set(neg))
    cuts = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1.0]
    best = (-1.0, -1.0)
    for cut in cuts:
        for above in (True, False):
            tpr = sum((p > cut) if above else (p < cut) for p in pos) / len(pos)
            fpr = sum((n > cut) if above else (n < cut) for n in neg) / len(neg)
            if max_fpr is not None and fpr > max_fpr:
                continue
            key = tpr if max_fpr is not None else 0.5 * (tpr + 1 - fpr)
            best = max(best, (key, 0.5 * (tpr + 1 - fpr)))
    return best


@pytest.mark.parametrize("max_fpr", [None, 0.0, 0.05, 0.2])
@pytest.mark.parametrize("seed", [0, 1])
def test_best_threshold_matches_brute_force_and_respects_the_bound(max_fpr: float | None, seed: int) -> None:
    from steering.conditions import best_threshold

    rng = np.random.default_rng(seed)
    sign = 1.0 if seed == 0 else -1.0  # seed 1: the positives score lower (above=False)
    pos, neg = rng.normal(sign, 1.0, 60).round(2), rng.normal(0.0, 1.0, 90).round(2)  # rounding: tied scores
    cut, above, acc = best_threshold(pos, neg, max_fpr=max_fpr)
    tpr = float(((pos > cut) if above else (pos < cut)).mean())
    fpr = float(((neg > cut) if above else (neg < cut)).mean())
    key, _ = _brute_force(pos, neg, max_fpr)
    assert acc == pytest.approx(0.5 * (tpr + 1 - fpr))
    assert above == (sign > 0)
    if max_fpr is None:
        assert acc == pytest.approx(key)
    else:
        assert fpr <= max_fpr and tpr == pytest.approx(key)
    # a gap between the two sides: the cut sits in its middle
    assert best_threshold(np.array([0.5, 0.9]), np.array([-0.3, 0.1]), max_fpr=max_fpr) == (pytest.approx(0.3), True, 1.0)


@torch.no_grad()
def test_find_condition_probe_is_the_logistic_direction_of_the_fitting_prompts() -> None:
    from sklearn.linear_model import LogisticRegression

    model, tok = make_tiny("llama")
    pos = [f"the sea and the boat number {k}" for k in range(12)]
    neg = [f"a cat sat on mat {k} today" for k in range(16)]
    found = find_condition(model, tok, pos, neg, layers=[1], held_out=0.25, method="probe", seed=3)
    cond = found.condition
    assert cond.vector.method == "condition_probe"
    # reference: the fitting split drawn as documented, unpadded prompts, sklearn on standardised features
    (fit_pos, held_pos), (fit_neg, held_neg) = _split(3, 12, 16)
    x = np.stack([_record_mean(model, tok, p, 1) for p in np.array(pos)[fit_pos].tolist() + np.array(neg)[fit_neg].tolist()])
    y = np.r_[np.ones(len(fit_pos)), np.zeros(len(fit_neg))]
    mean, scale = x.mean(0), x.std(0) + 1e-6
    weight = LogisticRegression(C=1.0, max_iter=2000).fit((x - mean) / scale, y).coef_[0] / scale
    d = cond.direction.double().numpy()
    assert d @ weight / (np.linalg.norm(d) * np.linalg.norm(weight)) > 0.999
    diff = x[: len(fit_pos)].mean(0) - x[len(fit_pos) :].mean(0)
    assert np.linalg.norm(d) == pytest.approx(np.linalg.norm(diff), rel=1e-3)  # scaled to the mean difference
    # the search's reported held-out rates are the gate's on the held-out prompts
    held = [pos[i] for i in held_pos], [neg[i] for i in held_neg]
    row = next(r for r in found.rows if r["layer"] == 1)
    for side, key in zip(held, ("held_out_pos_rate", "held_out_neg_rate")):
        on = cond.holds(torch.from_numpy(np.stack([_record_mean(model, tok, p, 1) for p in side])))
        assert float(on.double().mean()) == pytest.approx(row[key])


def _split(seed: int, n_pos: int, n_neg: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fitting, held-out) indices of each side as `find_condition` draws them (held_out=0.25): positives first."""
    rng = np.random.default_rng(seed)
    orders = [(rng.permutation(n), round(0.25 * n)) for n in (n_pos, n_neg)]
    return [(order[k:], order[:k]) for order, k in orders]


def test_find_condition_option_errors() -> None:
    model, tok = make_tiny("llama")
    with pytest.raises(st.SteeringError, match="unknown condition method 'pca'"):
        find_condition(model, tok, ["a", "b"], ["c", "d"], layers=[1], method="pca")  # type: ignore[arg-type]
    with pytest.raises(st.SteeringError, match="max_fpr"):
        find_condition(model, tok, ["a", "b"], ["c", "d"], layers=[1], max_fpr=1.5)
