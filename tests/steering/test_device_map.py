"""Models spread over devices by accelerate, on CPU: offloaded blocks and models built on ``meta``.

Each tiny model is saved to a folder and loaded twice more beside the plain
in-memory copy: with a ``device_map`` that offloads the middle decoder block
and the embeddings to disk (transformers' ``from_pretrained`` through ``st.load_model``; the
block's weights sit on ``meta`` and accelerate's ``AlignDevicesHook`` loads
them for each forward pass, beside our hooks), and built empty on the meta
device then dispatched with ``load_checkpoint_and_dispatch`` (the last block
offloaded). The reference is the plain model: the same vector (cos >= 0.99999
at every layer, in practice bit-equal) and the same greedy tokens, steered by
the fold and by the hook backend at every block, the offloaded ones included
(there the fold writes the bias into accelerate's weights map).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from real_resources import load_real_model
from tiny_models import make_tiny_tokenizer, save_tiny
from torch import nn

import steering as st
from steering.hooks import input_device, layer_device, layer_dtype
from steering.hooks.fold import fold_blocker
from steering.models import block_device_map

accelerate = pytest.importorskip("accelerate")

ARCHS = ("llama", "gpt2", "opt")  # three block layouts (model.layers, transformer.h, model.decoder.layers), all fold
PAIRS = [
    ("I love this sunny day", "I hate this rainy day"),
    ("What a wonderful film, full of joy", "What a terrible film, sad and boring"),
    ("Thanks for the help, great job", "Sorry, I don't know the answer"),
    ("The birds are singing in the trees", "The cold and rainy winter mornings"),
]
PROMPTS = ["Tell me a story about a dragon", "The weather is"]
TOKENS = 8


def _plain(folder: Path):
    return st.load_model(folder)


def _offloaded(folder: Path, tmp: Path):
    model, _ = st.load_model(folder)
    device_map = block_device_map(model, {1: "disk"})
    # The embeddings on disk too: the first parameter is then on meta, and "the first
    # parameter's device" would send the inputs there.
    embeddings = next(name for name, module in model.named_modules() if module is model.get_input_embeddings())
    device_map[embeddings] = "disk"
    return st.load_model(folder, device_map=device_map, offload_folder=tmp / "offload")


def _meta(folder: Path, tmp: Path):
    from accelerate import init_empty_weights, load_checkpoint_and_dispatch
    from transformers import AutoConfig, AutoModelForCausalLM

    plain, tok = st.load_model(folder)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    assert next(model.parameters()).device.type == "meta"
    model = load_checkpoint_and_dispatch(
        model, str(folder), device_map=block_device_map(plain, {2: "disk"}), offload_folder=str(tmp / "meta-offload")
    )
    model.config._name_or_path = plain.config._name_or_path
    model.generation_config = plain.generation_config
    model.eval()
    return model, tok


def _generate(model, tok, vec=None, **kwargs):
    return st.generate(model, tok, PROMPTS, vec, max_new_tokens=TOKENS, chat=False, **kwargs)


@pytest.fixture(scope="module", params=ARCHS)
def placed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(arch, plain, offloaded-to-disk, built-on-meta) for one architecture; each a (model, tokenizer)."""
    tmp = tmp_path_factory.mktemp(request.param)
    folder = save_tiny(tmp / "model", request.param)
    return request.param, _plain(folder), _offloaded(folder, tmp), _meta(folder, tmp)


def test_placement_is_what_the_tests_claim(placed) -> None:
    arch, _, (offloaded, _), (meta, _) = placed
    assert next(offloaded.parameters()).device.type == "meta"  # the embeddings are on disk
    for model, on_disk in ((offloaded, 1), (meta, 2)):
        assert hasattr(model, "hf_device_map")
        block = st.hooks.decoder_layers(model)[on_disk]
        assert {p.device.type for p in block.parameters()} == {"meta"}, "the block's weights should be offloaded"
        assert layer_device(model, on_disk) == torch.device("cpu")  # the execution device, not meta
        assert input_device(model) == torch.device("cpu")
        assert layer_dtype(model, on_disk) == torch.float32
        assert fold_blocker(model, [on_disk]) is None  # the fold writes into accelerate's weights map


def test_extraction_gives_the_in_memory_vector(placed) -> None:
    arch, (plain, tok), *others = placed
    reference = st.extract(plain, tok, PAIRS, layers=None, batch_size=2)
    for model, _ in others:
        vec = st.extract(model, tok, PAIRS, layers=None, batch_size=2)
        cos = vec.cosine(reference)
        assert min(cos.values()) >= 0.99999, (arch, cos)
        # Offloaded weights are read for the fingerprint: the vector is the plain model's.
        assert vec.model_fingerprint == reference.model_fingerprint
    mean = st.extract(plain, tok, PAIRS, layers=[0, 2], read="mean")
    for model, _ in others:
        assert min(st.extract(model, tok, PAIRS, layers=[0, 2], read="mean").cosine(mean).values()) >= 0.99999


@pytest.mark.parametrize("backend", ["fold", "hook"])
def test_steered_generation_gives_the_in_memory_tokens(placed, backend: str) -> None:
    arch, (plain, tok), offloaded, meta = placed
    # Every block, the offloaded ones included (1 on disk in the first, 2 in the second model).
    steered = st.extract(plain, tok, PAIRS, layers=None, batch_size=2)
    with st.steer(plain, steered, coef=8.0, backend=backend):
        expected = _generate(plain, tok)
    assert expected != _generate(plain, tok), "the vector should change the tokens"
    for model, _ in (offloaded, meta):
        with st.steer(model, steered, coef=8.0, backend=backend) as group:
            assert f"backend={backend}" in repr(group)
            assert _generate(model, tok) == expected, arch
        assert _generate(model, tok) == _generate(plain, tok)  # removed cleanly, weights untouched


def test_fold_at_an_offloaded_block_loads_with_the_weights_and_matches_hooks(placed) -> None:
    """The folded bias goes into accelerate's weights map, which the hook loads each forward pass;
    a bias written into the module would be dropped when the hook moves it back to meta."""
    from steering.hooks.devices import OverlaidWeights, offload_slot
    from steering.hooks.fold import fold_target

    arch, (plain, tok), (offloaded, _), _ = placed
    vec = st.extract(plain, tok, PAIRS, layers=[1], batch_size=2)
    with st.steer(plain, vec, coef=8.0, backend="hook"):
        expected = _generate(plain, tok)
    assert expected != _generate(plain, tok), "steering block 1 should change the tokens"
    target = fold_target(offloaded, 1)
    name = next(n for n, m in offloaded.named_modules() if m is target)
    hook, _ = offload_slot(offloaded, f"{name}.weight")  # on the linear layer itself here
    weights_map = hook.weights_map
    names = [name for name, _ in offloaded.named_parameters()]
    fingerprint = st.model_fingerprint(offloaded)
    for backend in ("fold", "auto"):
        with st.steer(offloaded, vec, coef=8.0, backend=backend) as group:
            assert "backend=fold" in repr(group)
            assert isinstance(hook.weights_map, OverlaidWeights) and hook.weights_map.base is weights_map
            assert st.model_fingerprint(offloaded) == fingerprint  # the original bias counts
            assert _generate(offloaded, tok) == expected, arch  # fold == hook on the plain model
        assert hook.weights_map is weights_map and [name for name, _ in offloaded.named_parameters()] == names
    assert _generate(offloaded, tok) == _generate(plain, tok)


def test_ablation_positions_and_record_on_an_offloaded_model(placed) -> None:
    arch, (plain, tok), (offloaded, _), _ = placed
    vec = st.extract(plain, tok, PAIRS, layers=[1, 2], batch_size=2)
    with st.steer(plain, vec, mode="ablate"):
        expected = _generate(plain, tok)
    with st.steer(offloaded, vec, mode="ablate"):
        assert _generate(offloaded, tok) == expected
    with st.steer(plain, vec, coef=8.0, apply_to="generated"):  # positions tracked beside accelerate's hooks
        expected = _generate(plain, tok)
    with st.steer(offloaded, vec, coef=8.0, apply_to="generated"):
        assert _generate(offloaded, tok) == expected
    ids = make_tiny_tokenizer()(PROMPTS[:1], return_tensors="pt")
    with st.record(plain, layers=[1]) as ref, torch.no_grad():
        plain(**ids)
    with st.record(offloaded, layers=[1]) as rec, torch.no_grad():
        offloaded(**ids)
    assert torch.equal(rec[1], ref[1])


def test_server_engine_compare_and_metrics_on_an_offloaded_model(placed) -> None:
    """The other places that feed a model: the serving engine (per-row steering and ablation
    tables placed per layer), compare's text features, and the experiment metrics' reply log-probs."""
    from steering.compare.activations import text_features
    from steering.experiments.metrics.replies import encode_replies, reply_logprobs
    from steering.server import Codec, Engine, GenerationRequest, Term, build_row_deltas

    arch, (plain, tok), (offloaded, _), _ = placed
    vec = st.extract(plain, tok, PAIRS, layers=[0, 1, 2], batch_size=2)
    terms = (Term(vec, 6.0, (0, 1)), Term(vec, 1.0, (2,), mode="ablate"))
    ids = tuple(tok(PROMPTS[0])["input_ids"])

    def serve(model: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
        engine = Engine(model, Codec(tok, []), max_batch_size=2).start()
        try:
            steered = engine.generate(GenerationRequest(ids, TOKENS, steering=build_row_deltas(terms)), timeout=120)
            unsteered = engine.generate(GenerationRequest(ids, TOKENS), timeout=120)
        finally:
            engine.close()
        return steered.token_ids, unsteered.token_ids

    assert serve(offloaded) == serve(plain)
    for read in ("last", "mean"):
        got, expected = (text_features(m, tok, PROMPTS, [1, 2], read=read) for m in (offloaded, plain))
        assert all((got[i] == expected[i]).all() for i in (1, 2))
    batches = encode_replies(tok, PROMPTS, ["It was fine.", "sunny"], chat=False)
    for batch in batches:
        assert torch.equal(reply_logprobs(offloaded, batch), reply_logprobs(plain, batch))


def test_offloaded_weights_are_read_once_for_the_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from steering.vectors import model_info

    folder = save_tiny(tmp_path / "model", "llama")
    plain, _ = st.load_model(folder)
    model, _ = st.load_model(folder, device_map=block_device_map(plain, {1: "disk"}), offload_folder=tmp_path / "offload")
    calls: list[str] = []
    real = model_info.offloaded_tensor
    monkeypatch.setattr(model_info, "offloaded_tensor", lambda m, name: calls.append(name) or real(m, name))
    first = st.model_fingerprint(model)
    read = len(calls)
    assert read == len(list(st.hooks.decoder_layers(plain)[1].parameters()))  # every weight of the block on disk
    assert st.model_fingerprint(model) == first == st.model_fingerprint(plain)
    assert len(calls) == read  # the second time from the samples kept


def test_load_model_placement_errors(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "model", "llama")
    with pytest.raises(st.ModelLoadError, match="not both"):
        st.load_model(folder, device="cpu", device_map="auto")
    with pytest.raises(st.ModelLoadError, match="give device_map too"):
        st.load_model(folder, offload_folder=tmp_path / "off")
    model, _ = st.load_model(folder, dtype="bfloat16", device_map={"": "cpu"})
    assert layer_dtype(model, 0) == torch.bfloat16 and input_device(model) == torch.device("cpu")


@pytest.mark.slow
def test_smollm2_offloaded_gives_the_in_memory_vector_and_tokens(tmp_path: Path) -> None:
    plain, tok = load_real_model("smollm2-135m-instruct")
    device_map = block_device_map(plain, dict.fromkeys(range(8, 14), "disk"))  # six blocks on disk, the steered 12 among them
    model, _ = st.load_model("smollm2-135m-instruct", device_map=device_map, offload_folder=tmp_path / "offload")
    pairs = st.load_pairs("sentiment")[:8]
    reference = st.extract(plain, tok, pairs, layers=[6, 12], batch_size=4)
    vec = st.extract(model, tok, pairs, layers=[6, 12], batch_size=4)
    assert min(vec.cosine(reference).values()) >= 0.99999
    assert vec.model_fingerprint == reference.model_fingerprint
    prompt = "Tell me about your weekend."
    completions = {}
    for backend in ("fold", "hook"):  # layer 12 on disk: the fold goes into accelerate's weights map there
        with st.steer(plain, reference, coef=4.0, backend=backend):
            completions[backend] = st.generate(plain, tok, prompt, max_new_tokens=12)
        with st.steer(model, reference, coef=4.0, backend=backend) as group:
            assert f"backend={backend}" in repr(group)
            assert st.generate(model, tok, prompt, max_new_tokens=12) == completions[backend]
    assert completions["fold"] == completions["hook"] != st.generate(plain, tok, prompt, max_new_tokens=12)


def test_block_device_map_names_every_part(tmp_path: Path) -> None:
    from tiny_models import make_tiny_model

    llama = make_tiny_model("llama")
    assert block_device_map(llama, {-1: "disk"}) == {
        "model.layers.0": "cpu",
        "model.layers.1": "cpu",
        "model.layers.2": "disk",
        "model.embed_tokens": "cpu",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    opt = make_tiny_model("opt")  # blocks two levels down: model.decoder.layers
    placed = block_device_map(opt, {0: 0}, rest="cpu")
    assert placed["model.decoder.layers.0"] == 0 and placed["model.decoder.embed_tokens"] == "cpu" and placed["lm_head"] == "cpu"
    with pytest.raises(st.LayerError, match="out of range"):
        block_device_map(llama, {3: "disk"})
