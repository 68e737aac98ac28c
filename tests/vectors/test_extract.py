"""Tests for vectors.extract and vectors.methods on tiny random models.

Every reference value is computed independently: one text at a time (no
padding), through ``model(..., output_hidden_states=True)``, whose
``hidden_states[i + 1]`` is the output of decoder block ``i`` (except for the
last block, where transformers applies the final norm first).
"""

from __future__ import annotations

import importlib
import types

import numpy as np
import pytest
import torch
from helpers import hook_count
from tiny_models import NUM_LAYERS, make_tiny

import steering.vectors.methods as methods_module
from steering import hooks
from steering.hooks import LayerError, SteeringError, decoder_layers
from steering.vectors import (
    METHODS,
    ContrastPair,
    LayerStats,
    Method,
    SteeringVector,
    as_pairs,
    collect_stats,
    dataset_sha256,
    extract,
    model_fingerprint,
    model_name,
    pair_texts,
)
from steering.vectors.model_info import fingerprint_mismatch, same_checkpoint

# `vectors.extract` the attribute is the function; the module is what hooks are patched on.
vextract = importlib.import_module("steering.vectors.extract")

# Mixed pairs: with and without prompt, very different lengths (so batches pad),
# a CAA-style answer letter, prompts long enough to cross Gemma 2/3's 16-token window.
PAIRS = [
    ContrastPair("I love this wonderful sunny day at the beach with my friends", "I hate it"),
    ContrastPair("good", "bad, terrible and boring in every possible way, really"),
    ContrastPair("Great job, thank you!", "Sorry.", "How did I do on the test today? Please tell me honestly"),
    ContrastPair("(A", "(B", "Pick one.\n(A) Yes\n(B) No"),
    ContrastPair("happy and excited", "sad", "Hi"),
    ContrastPair("The weather is nice and warm; the sky is blue.", "The weather is cold.", "Describe the weather"),
]

EARLY_LAYERS = [0, 1]  # not the last: its hidden_states entry has the final norm applied


# --------------------------------------------------------------------------- independent references


def _texts(tok, pair: ContrastPair):
    """(positive, negative, prefix, add_special_tokens), built without `pair_texts`."""
    if pair.prompt is None:
        return pair.positive, pair.negative, "", True
    if tok.chat_template:
        prefix = tok.apply_chat_template([{"role": "user", "content": pair.prompt}], tokenize=False, add_generation_prompt=True)
        return prefix + pair.positive, prefix + pair.negative, prefix, False
    prefix = pair.prompt if pair.prompt[-1:].isspace() or pair.positive[:1].isspace() else pair.prompt + " "
    return prefix + pair.positive, prefix + pair.negative, prefix, True


@torch.no_grad()
def _hidden(model, tok, text: str, special: bool) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    enc = tok(text, add_special_tokens=special, return_offsets_mapping=True, return_tensors="pt")
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True, use_cache=False)
    return [h[0].double() for h in out.hidden_states], [tuple(o) for o in enc["offset_mapping"][0].tolist()]


def _completion_rows(offsets, prefix: str) -> list[int]:
    """Tokens holding at least one character of the completion (after the prefix)."""
    if not prefix:
        return list(range(len(offsets)))
    return [k for k, (_, end) in enumerate(offsets) if end > len(prefix)]


def manual_acts(model, tok, pairs, layers, position="last"):
    """{layer: (pos [n, d], neg [n, d])} read one text at a time, float64."""
    pos = {i: [] for i in layers}
    neg = {i: [] for i in layers}
    for pair in pairs:
        p_text, n_text, prefix, special = _texts(tok, pair)
        for text, sink in ((p_text, pos), (n_text, neg)):
            states, offsets = _hidden(model, tok, text, special)
            for i in layers:
                h = states[i + 1]
                if position == "last":
                    sink[i].append(h[-1])
                else:
                    rows = _completion_rows(offsets, prefix)
                    assert rows, "every test completion has tokens of its own"
                    sink[i].append(h[rows].mean(0))
    return {i: (torch.stack(pos[i]), torch.stack(neg[i])) for i in layers}


def manual_mean_diff(acts):
    return {i: p.mean(0) - n.mean(0) for i, (p, n) in acts.items()}


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def llama_mod():
    """A tiny Llama shared by the read-only tests of this module."""
    return make_tiny("llama")


@pytest.fixture(scope="module")
def llama_acts(llama_mod):
    model, tok = llama_mod
    return manual_acts(model, tok, PAIRS, EARLY_LAYERS, "last")


# --------------------------------------------------------------------------- texts


def test_pair_texts_matches_chat_template_path(llama_mod):
    _, tok = llama_mod
    for pair in PAIRS:
        assert pair_texts(tok, pair) == _texts(tok, pair)
    pos, neg, prefix, special = pair_texts(tok, PAIRS[2])
    assert prefix.startswith("<|user|>\n" + PAIRS[2].prompt) and prefix.endswith("<|assistant|>\n")
    assert pos == prefix + "Great job, thank you!" and neg == prefix + "Sorry." and special is False


def test_pair_texts_without_chat_template():
    _, tok = make_tiny("llama", chat_template=False)
    assert pair_texts(tok, ContrastPair("yes", "no", "Q?")) == ("Q? yes", "Q? no", "Q? ", True)
    assert pair_texts(tok, ContrastPair(" yes", " no", "Q?")) == ("Q? yes", "Q? no", "Q?", True)
    assert pair_texts(tok, ContrastPair("yes", "no")) == ("yes", "no", "", True)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_mean_diff_last_parity(arch, batch_size):
    model, tok = make_tiny(arch)
    acts = manual_acts(model, tok, PAIRS, EARLY_LAYERS, "last")
    expected = manual_mean_diff(acts)
    v = extract(model, tok, PAIRS, EARLY_LAYERS, method="mean_diff", read="last", batch_size=batch_size, progress=False)
    assert v.layers == EARLY_LAYERS
    for i in EARLY_LAYERS:
        assert float(expected[i].norm()) > 1e-2  # a real, non-zero difference
        torch.testing.assert_close(v.directions[i].double(), expected[i], atol=1e-5, rtol=0)


def test_last_layer_block_output_is_before_final_norm(llama_mod):
    model, tok = llama_mod
    last = NUM_LAYERS - 1
    pairs = PAIRS[:2]
    v = extract(model, tok, pairs, [last], progress=False)
    normed = manual_mean_diff(manual_acts(model, tok, pairs, [last], "last"))[last]  # includes the final norm
    # block_output of the last block is the raw residual stream: not the normed one
    assert not torch.allclose(v.directions[last].double(), normed, atol=1e-3)
    # it is what the last block returns: read it with a hook instead
    block = decoder_layers(model)[last]
    seen = []
    handle = block.register_forward_hook(lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o)[0, -1].double()))
    try:
        for pair in pairs:
            for text in (pair.positive, pair.negative):
                with torch.no_grad():
                    model(**tok(text, return_tensors="pt"))
    finally:
        handle.remove()
    expected = (seen[0] + seen[2]) / 2 - (seen[1] + seen[3]) / 2
    torch.testing.assert_close(v.directions[last].double(), expected, atol=1e-5, rtol=0)


def test_position_mean_matches_manual(llama_mod):
    model, tok = llama_mod
    acts = manual_acts(model, tok, PAIRS, EARLY_LAYERS, "mean")
    expected = manual_mean_diff(acts)
    v = extract(model, tok, PAIRS, EARLY_LAYERS, read="mean", batch_size=3, progress=False)
    last = extract(model, tok, PAIRS, EARLY_LAYERS, read="last", batch_size=3, progress=False)
    for i in EARLY_LAYERS:
        torch.testing.assert_close(v.directions[i].double(), expected[i], atol=1e-5, rtol=0)
        assert cos(v.directions[i], last.directions[i]) < 0.999  # mean really differs from last


def test_negative_layer_index(llama_mod):
    model, tok = llama_mod
    v = extract(model, tok, PAIRS[:2], [-2], progress=False)
    w = extract(model, tok, PAIRS[:2], [NUM_LAYERS - 2], progress=False)
    assert v.layers == [NUM_LAYERS - 2] and torch.equal(v.directions[NUM_LAYERS - 2], w.directions[NUM_LAYERS - 2])


@pytest.mark.parametrize(
    ("layers", "message"), [("12", "is a string"), ([True], "True is not an integer"), ([1.7], "1.7 is not an integer")]
)
def test_layers_that_are_not_integers_are_refused_before_any_forward(llama_mod, layers, message):
    """extract(layers="12") used to extract layers [1, 2]; [True] was layer 1 and [1.7] layer 1."""
    model, tok = llama_mod
    with pytest.raises(LayerError, match=message):
        extract(model, tok, PAIRS[:2], layers, progress=False)
    assert extract(model, tok, PAIRS[:2], [np.int64(-1)], progress=False).layers == [NUM_LAYERS - 1]


def test_all_layers_by_default(llama_mod):
    model, tok = llama_mod
    v = extract(model, tok, PAIRS[:2], progress=False)
    assert v.layers == list(range(NUM_LAYERS))


def test_accepts_dicts_and_tuples(llama_mod):
    model, tok = llama_mod
    as_objects = extract(model, tok, [ContrastPair("good", "bad"), ContrastPair("yes", "no", "Q")], [0], progress=False)
    mixed = extract(model, tok, [("good", "bad"), {"prompt": "Q", "positive": "yes", "negative": "no"}], [0], progress=False)
    assert torch.equal(as_objects.directions[0], mixed.directions[0])
    assert as_objects.dataset_sha256 == mixed.dataset_sha256


def test_other_sites(llama_mod):
    model, tok = llama_mod
    out = extract(model, tok, PAIRS[:3], [1], site="block_output", progress=False)
    inp = extract(model, tok, PAIRS[:3], [1], site="block_input", progress=False)
    prev = extract(model, tok, PAIRS[:3], [0], site="block_output", progress=False)
    attn = extract(model, tok, PAIRS[:3], [1], site="attn_output", progress=False)
    mlp = extract(model, tok, PAIRS[:3], [1], site="mlp_output", progress=False)
    # the input of block 1 is the output of block 0
    torch.testing.assert_close(inp.directions[1], prev.directions[0], atol=1e-6, rtol=0)
    # and output = input + attention + mlp contributions (residual adds)
    torch.testing.assert_close(out.directions[1], inp.directions[1] + attn.directions[1] + mlp.directions[1], atol=1e-4, rtol=0)
    assert attn.site == "attn_output" and mlp.site == "mlp_output" and inp.site == "block_input"


# --------------------------------------------------------------------------- padding


@pytest.mark.parametrize("position", ["last", "mean"])
def test_padding_side_and_batch_size_do_not_matter(tiny, position):
    model, tok = tiny
    # padding really happens in a batch of 4
    lengths = {len(tok(t)["input_ids"]) for p in PAIRS for t in _texts(tok, p)[:2]}
    assert len(lengths) > 4
    for method in ("mean_diff", "pca_diff"):
        ref = extract(model, tok, PAIRS, None, method=method, read=position, batch_size=1, progress=False)
        for side in ("left", "right"):
            tok.padding_side = side
            batched = extract(model, tok, PAIRS, None, method=method, read=position, batch_size=4, progress=False)
            # The parity tests' tolerance. Measured over every architecture: at most 2.3e-6 (gemma3,
            # pca_diff, last), the float32 rounding of a different summation order, on entries of size ~1.
            for layer in ref.layers:
                torch.testing.assert_close(
                    batched.directions[layer],
                    ref.directions[layer],
                    atol=1e-5,
                    rtol=0,
                    msg=lambda m, method=method, side=side, layer=layer: f"{method} {side} layer {layer}: {m}",
                )


def test_left_padding_matches_manual(llama_mod):
    model, tok = llama_mod
    tok.padding_side = "left"
    try:
        v = extract(model, tok, PAIRS, EARLY_LAYERS, batch_size=6, progress=False)
    finally:
        tok.padding_side = "right"
    expected = manual_mean_diff(manual_acts(model, tok, PAIRS, EARLY_LAYERS))
    for i in EARLY_LAYERS:
        torch.testing.assert_close(v.directions[i].double(), expected[i], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- methods on a real model


def test_pca_diff_is_top_eigenvector(llama_mod, llama_acts):
    model, tok = llama_mod
    v = extract(model, tok, PAIRS, EARLY_LAYERS, method="pca_diff", batch_size=4, progress=False)
    md = manual_mean_diff(llama_acts)
    for i in EARLY_LAYERS:
        pos, neg = llama_acts[i]
        diffs = (pos - neg).numpy()
        second_moment = diffs.T @ diffs / len(diffs)  # uncentred
        values, vecs = np.linalg.eigh(second_moment)
        assert values[-1] > 1.05 * values[-2]  # a clear top eigenvector
        top = torch.from_numpy(vecs[:, -1])
        d = v.directions[i].double()
        assert abs(cos(d, top)) > 1 - 1e-6
        # positives project higher than negatives on average
        assert float((pos @ d).mean()) > float((neg @ d).mean())
        # magnitude: the mean difference's component along the eigenvector
        torch.testing.assert_close(d, top * float(md[i] @ top), atol=1e-5, rtol=0)
        # the test can tell pca from mean_diff
        assert cos(d, md[i]) < 0.9999


def test_probe_sign_and_norm(llama_mod, llama_acts):
    model, tok = llama_mod
    v = extract(model, tok, PAIRS, EARLY_LAYERS, method="probe", batch_size=4, progress=False)
    md = manual_mean_diff(llama_acts)
    for i in EARLY_LAYERS:
        pos, neg = llama_acts[i]
        d = v.directions[i].double()
        assert float((pos @ d).mean()) > float((neg @ d).mean())
        assert float(d.norm()) == pytest.approx(float(md[i].norm()), rel=1e-4)
    assert v.method == "probe"


def test_probe_finds_separating_direction():
    """Correlated noise: the probe finds the Fisher direction, which the mean difference misses."""
    g = torch.Generator().manual_seed(0)
    d = 16
    w = torch.randn(d, generator=g, dtype=torch.float64)
    w /= w.norm()
    c = torch.randn(d, generator=g, dtype=torch.float64)
    c /= c.norm()
    a = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3
    cov = a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64) + 9 * torch.outer(c, c)
    chol = torch.linalg.cholesky(cov)
    stats = LayerStats(d, keep_samples=True)
    for _ in range(3):
        pos = torch.randn(100, d, generator=g, dtype=torch.float64) @ chol.T + w
        neg = torch.randn(100, d, generator=g, dtype=torch.float64) @ chol.T - w
        stats.update(pos, neg)
    assert stats.n == 300 and len(stats.pos_samples) == 3
    direction = METHODS["probe"].fn(stats).double()
    fisher = torch.linalg.solve(cov, 2 * w)
    assert cos(direction, fisher) > 0.95
    assert cos(stats.mean_diff, fisher) < 0.8  # the case is hard for mean_diff
    assert float(direction @ stats.mean_diff) > 0
    assert float(direction.norm()) == pytest.approx(float(stats.mean_diff.norm()), rel=1e-6)


def test_probe_maps_back_from_standardised_features():
    """Features on very different scales: the direction must be in raw activation units."""
    g = torch.Generator().manual_seed(3)
    d = 8
    scale = torch.logspace(-1, 1, d, dtype=torch.float64)  # std 0.1 .. 10
    shift = 0.5 * scale  # every feature equally informative once standardised
    stats = LayerStats(d, keep_samples=True)
    stats.update(
        torch.randn(400, d, generator=g, dtype=torch.float64) * scale + shift,
        torch.randn(400, d, generator=g, dtype=torch.float64) * scale - shift,
    )
    fisher = 2 * shift / scale**2  # Sigma^-1 (mu_pos - mu_neg) for a diagonal Sigma, ∝ 1/scale
    direction = METHODS["probe"].fn(stats).double()
    assert cos(direction, fisher) > 0.95
    assert cos(torch.ones(d, dtype=torch.float64), fisher) < 0.8  # the standardised-space answer is wrong here


def test_probe_easy_case_aligns_with_true_direction():
    g = torch.Generator().manual_seed(1)
    d = 12
    w = torch.randn(d, generator=g)
    w /= w.norm()
    stats = LayerStats(d, keep_samples=True)
    stats.update(torch.randn(200, d, generator=g) + 2 * w, torch.randn(200, d, generator=g) - 2 * w)
    assert cos(METHODS["probe"].fn(stats), w) > 0.95


def test_pca_diff_on_synthetic_stats():
    g = torch.Generator().manual_seed(2)
    d = 10
    u = torch.zeros(d, dtype=torch.float64)
    u[3] = 1.0
    stats = LayerStats(d, keep_sketch=True)
    base = torch.randn(50, d, generator=g, dtype=torch.float64)
    # differences: mostly along -u (variance) with the mean along -u too
    diffs = -(3 + torch.rand(50, 1, generator=g, dtype=torch.float64)) * u + 0.1 * torch.randn(50, d, generator=g, dtype=torch.float64)
    stats.update(base + diffs, base)
    out = METHODS["pca_diff"].fn(stats).double()
    assert cos(out, -u) > 0.99  # sign follows the positives (mean diff is along -u)
    torch.testing.assert_close(out.norm(), abs(stats.mean_diff @ out / out.norm()), atol=1e-6, rtol=0)


@pytest.mark.parametrize("n", [5, 40, 400])  # fewer pairs than the sketch's rank, and more
def test_pca_diff_sketch_matches_exact_pca(n):
    """hidden 256 > rank 32: the Nyström sketch gives the exact top eigenvector of the uncentred second moment."""
    g = torch.Generator().manual_seed(n)
    d = 256
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u /= u.norm()
    # a spectrum like real pair differences: one strong direction, a slowly decaying tail
    tail = torch.randn(d, d, generator=g, dtype=torch.float64) * torch.logspace(0, -2, d, dtype=torch.float64)
    diffs = (2 + torch.rand(n, 1, generator=g, dtype=torch.float64)) * u + 0.02 * torch.randn(n, d, generator=g, dtype=torch.float64) @ tail
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    sketched = LayerStats(d, keep_sketch=True, sketch_rank=32)
    for k in range(0, n, 7):  # batches of any size add up
        sketched.update(base[k : k + 7] + diffs[k : k + 7], base[k : k + 7])
    assert sketched.diff_sketch is not None and sketched.diff_sketch.shape == (d, 32)
    values, vecs = torch.linalg.eigh(diffs.T @ diffs / n)
    assert values[-1] > 2 * values[-2]  # a clear top eigenvector
    top = vecs[:, -1]
    assert abs(cos(diffs.mean(0), top)) < 0.99999  # pca is not simply the mean difference here
    out = METHODS["pca_diff"].fn(sketched).double()
    assert abs(cos(out, top)) > 0.9999
    assert float(out @ sketched.mean_diff) > 0
    # magnitude: the mean difference's component along it
    assert float(out.norm()) == pytest.approx(abs(float(sketched.mean_diff @ top)), rel=1e-3)


def test_pca_diff_sketch_is_a_sum_over_shards():
    """Stats of two halves, added, are the stats of all pairs (what data-parallel extraction reduces)."""
    g = torch.Generator().manual_seed(7)
    pos, neg = torch.randn(30, 200, generator=g), torch.randn(30, 200, generator=g)
    whole, a, b = (LayerStats(200, keep_sketch=True, sketch_rank=16) for _ in range(3))
    whole.update(pos, neg)
    a.update(pos[:11], neg[:11])
    b.update(pos[11:], neg[11:])
    assert whole.diff_sketch is not None and a.diff_sketch is not None and b.diff_sketch is not None
    torch.testing.assert_close(a.diff_sketch + b.diff_sketch, whole.diff_sketch)


def test_mean_diff_method_on_stats():
    stats = LayerStats(3)
    stats.update(torch.tensor([[1.0, 2, 3], [3.0, 2, 1]]), torch.tensor([[0.0, 0, 0], [2.0, 2, 2]]))
    stats.update(torch.tensor([[5.0, 5, 5]]), torch.tensor([[1.0, 1, 1]]))
    assert stats.n == 3
    torch.testing.assert_close(METHODS["mean_diff"].fn(stats), torch.tensor([(9 - 3) / 3, (9 - 3) / 3, (9 - 3) / 3]))
    assert METHODS["mean_diff"].fn(stats).dtype == torch.float32


# --------------------------------------------------------------------------- early stop and hook hygiene


class Counter:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1


def _counters(model):
    return Counter(decoder_layers(model)[-1]), Counter(model.get_output_embeddings())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gpt_neox"])
def test_forward_stops_after_deepest_layer(arch):
    model, tok = make_tiny(arch)
    last_block, head = _counters(model)
    baseline = hook_count(model)
    with torch.no_grad():
        model(**tok("hello there", return_tensors="pt"))
    assert (last_block.calls, head.calls) == (1, 1)  # the counters work

    extract(model, tok, PAIRS[:4], [0], batch_size=2, progress=False)
    assert (last_block.calls, head.calls) == (1, 1)  # neither the last block nor the head ran
    assert hook_count(model) == baseline

    extract(model, tok, PAIRS[:4], [0, NUM_LAYERS - 1], batch_size=2, progress=False)
    # the last block ran again (once per forward pass: a batch whose pairs share a prefix
    # takes two, see vectors/prefix.py), the head never
    assert last_block.calls > 1 and head.calls == 1
    assert hook_count(model) == baseline

    for c in (last_block, head):
        c.handle.remove()
    with torch.no_grad():  # the model still runs normally afterwards
        out = model(**tok("hello there", return_tensors="pt"))
    assert out.logits.shape[-1] == model.config.vocab_size


def test_hooks_removed_when_extraction_raises_inside_forward(llama_mod, monkeypatch):
    model, tok = llama_mod
    baseline = hook_count(model)
    during = []

    def boom(hidden, how):
        during.append(hook_count(model))
        raise RuntimeError("boom inside the hook")

    monkeypatch.setattr(vextract, "read_rows", boom)
    with pytest.raises(RuntimeError, match="boom inside the hook"):
        extract(model, tok, PAIRS, [0, 1], progress=False)
    assert during and during[0] > baseline  # hooks were live during the forward pass
    assert hook_count(model) == baseline


def test_hooks_removed_when_batching_fails_midway(llama_mod, monkeypatch):
    model, tok = llama_mod
    baseline = hook_count(model)
    real_encode = vextract.encode_texts
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("tokenizer failed on batch 2")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(vextract, "encode_texts", flaky)
    with pytest.raises(ValueError, match="batch 2"):
        extract(model, tok, PAIRS, [1], batch_size=2, progress=False)
    assert len(calls) == 2
    assert hook_count(model) == baseline


def test_hooks_removed_when_method_fails(llama_mod, monkeypatch):
    model, tok = llama_mod
    baseline = hook_count(model)

    def broken(stats):
        raise ArithmeticError("method failed")

    monkeypatch.setitem(methods_module._METHODS, "broken", Method(broken))
    with pytest.raises(ArithmeticError, match="method failed"):
        extract(model, tok, PAIRS[:2], [0], method="broken", progress=False)
    assert hook_count(model) == baseline

    monkeypatch.setitem(methods_module._METHODS, "nan", Method(lambda s: torch.full((s.hidden_size,), float("nan"))))
    with pytest.raises(SteeringError, match=r"'nan'.*non-finite.*layer 0"):
        extract(model, tok, PAIRS[:2], [0], method="nan", progress=False)
    assert hook_count(model) == baseline


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        (dict(method="meandiff"), SteeringError, "'meandiff'"),
        (dict(read="first"), SteeringError, "'first'"),
        (dict(site="residual"), LayerError, "'residual'"),
        (dict(layers=[NUM_LAYERS]), LayerError, f"layer {NUM_LAYERS}"),
        (dict(layers=[-NUM_LAYERS - 1]), LayerError, f"layer {-NUM_LAYERS - 1}"),
        (dict(batch_size=0), SteeringError, "batch_size"),
    ],
)
def test_bad_arguments_name_the_value(llama_mod, kwargs, error, needle):
    model, tok = llama_mod
    baseline = hook_count(model)
    kwargs = {"layers": [0], **kwargs}
    with pytest.raises(error) as info:
        extract(model, tok, PAIRS[:2], progress=False, **kwargs)
    assert needle in str(info.value)
    assert hook_count(model) == baseline


def test_unknown_method_lists_choices(llama_mod):
    model, tok = llama_mod
    with pytest.raises(SteeringError) as info:
        extract(model, tok, PAIRS[:2], [0], method="nope", progress=False)
    for name in ("mean_diff", "pca_diff", "probe"):
        assert name in str(info.value)


def test_tokenizer_without_pad_token(llama_mod):
    model, _ = llama_mod
    _, tok = make_tiny("llama")
    tok.pad_token = None
    with pytest.raises(SteeringError, match="pad token"):
        extract(model, tok, PAIRS[:2], [0], progress=False)


def test_no_pairs(llama_mod):
    model, tok = llama_mod
    with pytest.raises(SteeringError, match="no pairs"):
        extract(model, tok, [], [0], progress=False)


# --------------------------------------------------------------------------- metadata


def test_result_metadata(llama_mod):
    model, tok = llama_mod
    pairs = [PAIRS[0], ("yes", "no"), {"prompt": "Q", "positive": "a", "negative": "b"}]
    v = extract(model, tok, pairs, [0, 2], method="pca_diff", read="mean", site="attn_output", progress=False)
    assert isinstance(v, SteeringVector)
    assert v.model == model_name(model) == "LlamaForCausalLM"
    assert v.model_fingerprint == model_fingerprint(model)
    assert v.hidden_size == 32 and v.num_layers == NUM_LAYERS
    assert v.n_pairs == 3
    assert v.method == "pca_diff" and v.read == "mean" and v.site == "attn_output"
    assert v.dataset_sha256 == dataset_sha256(as_pairs(pairs))
    assert v.layers == [0, 2]
    assert all(t.dtype == torch.float32 for t in v.directions.values())


def test_model_name_from_config_path(llama_mod):
    model, tok = make_tiny("llama")
    model.config._name_or_path = "org/tiny-llama"
    assert extract(model, tok, PAIRS[:2], [0], progress=False).model == "org/tiny-llama"


def test_fingerprint_tells_seeds_apart():
    a, _ = make_tiny("llama", seed=0)
    b, _ = make_tiny("llama", seed=1)
    c, _ = make_tiny("llama", seed=0)
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) == model_fingerprint(c)


@torch.no_grad()
def test_fingerprint_tells_a_fine_tune_with_frozen_embeddings_apart():
    """Only a decoder layer changed (embeddings frozen): another checkpoint all the same."""
    base, _ = make_tiny("llama", seed=0)
    tuned, _ = make_tiny("llama", seed=0)
    tuned.model.layers[1].mlp.down_proj.weight.add_(1e-2)
    assert torch.equal(base.get_input_embeddings().weight, tuned.get_input_embeddings().weight)
    assert model_fingerprint(base) != model_fingerprint(tuned)
    assert model_fingerprint(base).startswith("fp3:")
    assert not same_checkpoint(model_fingerprint(base), model_fingerprint(tuned))  # neither half agrees


@torch.no_grad()
def test_fingerprint_ignores_dtype_and_active_folds():
    """One checkpoint in float32, bfloat16 or float16, steered by a fold or not: one checkpoint."""
    model, _ = make_tiny("llama", seed=0)
    expected = model_fingerprint(model)
    with hooks.fold(model, {0: torch.ones(32), 1: torch.ones(32)}):  # adds a bias to down_proj
        assert model_fingerprint(model) == expected
    half = {dtype: model_fingerprint(make_tiny("llama", seed=0)[0].to(dtype)) for dtype in (torch.bfloat16, torch.float16)}
    for dtype, fingerprint in half.items():
        assert same_checkpoint(fingerprint, expected) and fingerprint_mismatch(expected, make_tiny("llama", seed=0)[0].to(dtype)) is None
        assert fingerprint_mismatch(fingerprint, model) is None, dtype  # and the other way round
    # The reference: float16 breaks the bf16-rounded half (format 2 alone) on this float32 checkpoint.
    assert half[torch.float16].split(".")[0] != expected.split(".")[0]
    assert half[torch.bfloat16].split(".")[0] == expected.split(".")[0]
    # A format-2 file (that half alone) is still checked in its own format, and agrees with format 3's first half.
    old = model_fingerprint(model, version=2)
    assert old == "fp2:" + expected[4:].split(".")[0] and fingerprint_mismatch(old, model) is None
    assert same_checkpoint(old, expected)


def test_extract_does_not_change_model(llama_mod):
    model, tok = llama_mod
    before = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    extract(model, tok, PAIRS, None, method="probe", progress=False)
    assert model.training == was_training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------------------------- memory


def test_stats_keep_samples_only_when_needed(llama_mod):
    model, tok = llama_mod
    lean = collect_stats(
        model,
        tok,
        PAIRS,
        [0, 1],
        batch_size=4,
        needs_sketch=METHODS["mean_diff"].needs_sketch,
        needs_samples=METHODS["mean_diff"].needs_samples,
    )
    assert set(lean) == {0, 1}
    for s in lean.values():
        assert s.n == len(PAIRS)
        assert s.pos_samples == [] and s.neg_samples == []
        assert s.diff_sketch is None
        assert s.pos_sum.dtype == torch.float64

    probe = METHODS["probe"]
    full = collect_stats(model, tok, PAIRS, [0, 1], batch_size=4, needs_sketch=probe.needs_sketch, needs_samples=probe.needs_samples)
    for i, s in full.items():
        assert s.n == len(PAIRS)
        assert sum(t.shape[0] for t in s.pos_samples) == len(PAIRS)
        assert sum(t.shape[0] for t in s.neg_samples) == len(PAIRS)
        assert torch.cat(s.pos_samples).shape == (len(PAIRS), 32)
        torch.testing.assert_close(s.mean_diff, lean[i].mean_diff)

    pca = METHODS["pca_diff"]
    sketched = collect_stats(model, tok, PAIRS, [0], batch_size=4, needs_sketch=pca.needs_sketch, needs_samples=pca.needs_samples)
    assert sketched[0].diff_sketch is not None and sketched[0].diff_sketch.shape == (32, 32)  # hidden 32 <= rank: exact
    assert sketched[0].pos_samples == []


def test_method_registry_flags():
    assert not METHODS["mean_diff"].needs_samples and not METHODS["mean_diff"].needs_sketch
    assert METHODS["pca_diff"].needs_sketch and not METHODS["pca_diff"].needs_samples
    assert METHODS["probe"].needs_samples


def test_collect_stats_respects_pair_split(llama_mod):
    """Positives and negatives are never mixed up by the length-sorting of batches."""
    model, tok = llama_mod
    swapped = [ContrastPair(p.negative, p.positive, p.prompt) for p in PAIRS]
    v = extract(model, tok, PAIRS, [1], batch_size=4, progress=False)
    w = extract(model, tok, swapped, [1], batch_size=4, progress=False)
    torch.testing.assert_close(w.directions[1], -v.directions[1], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- known bug (see report)


def test_position_mean_without_chat_template_keeps_first_completion_token():
    """Base-model path: ``prompt + " " + completion``.

    The byte-level BPE merges the inserted space into the first completion token
    ("Ġhappy"), but `encode_texts` counts prefix tokens by tokenising ``"prompt "`` on its
    own, which ends in a separate "Ġ" token: one token too many, so the first
    completion token is dropped from the mean.
    """
    model, tok = make_tiny("llama", chat_template=False)
    pairs = [
        ContrastPair("happy and excited today", "sad and tired", "How are you?"),
        ContrastPair("Great job, thank you!", "Sorry about that.", "How did I do?"),
    ]
    expected = manual_mean_diff(manual_acts(model, tok, pairs, [0], "mean"))
    v = extract(model, tok, pairs, [0], read="mean", batch_size=1, progress=False)
    torch.testing.assert_close(v.directions[0].double(), expected[0], atol=1e-5, rtol=0)


def test_register_method_takes_a_plain_pairs_callable(llama_mod, monkeypatch):
    """``(positives, negatives) -> direction`` registers as is, and sees the pairs in order."""
    model, tok = llama_mod
    monkeypatch.setattr(methods_module, "_METHODS", dict(methods_module._METHODS))
    monkeypatch.setattr(methods_module, "METHODS", types.MappingProxyType(methods_module._METHODS))
    seen = {}

    def plain_mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        seen["shape"] = tuple(pos.shape)
        return pos.mean(0) - neg.mean(0)

    methods_module.register_method("plain_mean_diff", plain_mean_diff)
    plain = extract(model, tok, PAIRS, [0, 1], method="plain_mean_diff", progress=False)
    streaming = extract(model, tok, PAIRS, [0, 1], method="mean_diff", progress=False)
    assert seen["shape"] == (len(PAIRS), model.config.hidden_size)
    for layer in (0, 1):
        torch.testing.assert_close(plain.directions[layer], streaming.directions[layer], rtol=1e-5, atol=1e-6)
    with pytest.raises(SteeringError, match="already registered"):
        methods_module.register_method("plain_mean_diff", plain_mean_diff)


def test_methods_registry_is_read_only():
    with pytest.raises(TypeError):
        METHODS["x"] = METHODS["mean_diff"]  # type: ignore[index]


def test_old_position_keyword_warns_and_gives_the_same_vector(llama_mod):
    model, tok = llama_mod
    new = extract(model, tok, PAIRS, [0, 1], read="mean", progress=False)
    with pytest.warns(DeprecationWarning, match="use read="):
        old = extract(model, tok, PAIRS, [0, 1], position="mean", progress=False)
    assert old.read == new.read == "mean"
    for layer in (0, 1):
        torch.testing.assert_close(old.directions[layer], new.directions[layer], atol=0, rtol=0)
    with pytest.warns(DeprecationWarning, match="use .read"):
        assert new.position == "mean"
