"""Tests for vectors.io: safetensors round trips, atomic writes, validated reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import NUM_LAYERS, make_tiny, make_tiny_model

import steering.vectors.io as vio
from steering.vectors import (
    FORMAT,
    FORMAT_VERSION,
    SteeringVector,
    VectorFileError,
    load_vector,
    model_fingerprint,
    model_name,
    save_vector,
)
from steering.vectors.io import REQUIRED, atomic_write
from steering.vectors.model_info import same_checkpoint

D = 32  # tiny models' hidden size


def make_vector(model=None, layers=(0, 2), seed=0, **kw) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    fields = dict(
        hidden_size=D,
        num_layers=NUM_LAYERS,
        model="tiny-llama",
        model_fingerprint="0123456789abcdef",
        site="block_output",
        method="mean_diff",
        read="last",
        n_pairs=7,
        dataset_sha256="d" * 64,
        extra={"note": "hello"},
    )
    if model is not None:
        fields.update(model=model_name(model), model_fingerprint=model_fingerprint(model))
    fields.update(kw)
    return SteeringVector({i: torch.randn(D, generator=g) for i in layers}, **fields)


def good_meta(**overrides) -> dict[str, str]:
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model": "m",
        "model_fingerprint": "unknown",
        "hidden_size": str(D),
        "num_layers": str(NUM_LAYERS),
        "site": "block_output",
        "method": "mean_diff",
        "read": "last",
        "n_pairs": "3",
        "dataset_sha256": "abc",
        "steering_version": "0.1.0",
    }
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


def write(path: Path, tensors=None, **meta_overrides) -> Path:
    if tensors is None:
        tensors = {"layers.1": torch.ones(D)}
    save_file(tensors, str(path), metadata=good_meta(**meta_overrides))
    return path


def load_error(path, model=None, **kw) -> str:
    with pytest.raises(VectorFileError) as info:
        load_vector(path, model, **kw)
    message = str(info.value)
    assert str(path) in message, message
    return message


@pytest.fixture(scope="module")
def llama():
    # module-scoped: loading tests never modify the model
    return make_tiny("llama")


# --------------------------------------------------------------------------- round trip


def test_round_trip(tmp_path):
    v = make_vector()
    path = save_vector(v, tmp_path / "sub" / "v.safetensors")
    assert path == tmp_path / "sub" / "v.safetensors" and path.is_file()
    w = load_vector(path)
    assert w.layers == v.layers
    for i in v.layers:
        assert torch.equal(w.directions[i], v.directions[i])
        assert w.directions[i].dtype == torch.float32
    for field in ("hidden_size", "num_layers", "model", "model_fingerprint", "site", "method", "read", "n_pairs", "dataset_sha256"):
        assert getattr(w, field) == getattr(v, field), field
    assert w.extra["note"] == "hello"
    assert "steering_version" in w.extra
    # a second round trip is a fixed point
    w2 = load_vector(w.save(tmp_path / "v2.safetensors"))
    assert w2.metadata() == w.metadata()


def test_methods_on_vector(tmp_path):
    v = make_vector()
    p = v.save(tmp_path / "v.safetensors")
    w = SteeringVector.load(p)
    assert w.metadata()["model"] == v.model and torch.equal(w.directions[2], v.directions[2])


def test_file_metadata_fields(tmp_path):
    v = make_vector()
    path = save_vector(v, tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = sorted(f.keys())
        tensor = f.get_tensor("layers.0")
    for field in REQUIRED:
        assert field in meta, field
    assert set(REQUIRED) >= {
        "format",
        "format_version",
        "model",
        "model_fingerprint",
        "hidden_size",
        "num_layers",
        "site",
        "method",
        "read",
        "n_pairs",
        "dataset_sha256",
        "steering_version",
    }
    assert meta["format"] == "steering-vector"
    assert meta["format_version"] == "1"  # no reference mean: the oldest version that holds it
    assert meta["model"] == "tiny-llama" and meta["model_fingerprint"] == "0123456789abcdef"
    assert meta["hidden_size"] == str(D) and meta["num_layers"] == str(NUM_LAYERS)
    assert meta["method"] == "mean_diff" and meta["read"] == "last" and meta["site"] == "block_output"
    assert meta["n_pairs"] == "7" and meta["dataset_sha256"] == "d" * 64
    assert meta["steering_version"]
    assert meta["note"] == "hello"
    assert keys == ["layers.0", "layers.2"]
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (D,)


def test_round_trip_with_model(tmp_path, llama):
    model, _ = llama
    v = make_vector(model)
    w = load_vector(v.save(tmp_path / "v.safetensors"), model)
    assert w.model_fingerprint == model_fingerprint(model)
    assert torch.equal(w.directions[0], v.directions[0])


def test_save_overwrites(tmp_path):
    path = tmp_path / "v.safetensors"
    make_vector(seed=0).save(path)
    second = make_vector(seed=1, layers=(1,))
    second.save(path)
    w = load_vector(path)
    assert w.layers == [1] and torch.equal(w.directions[1], second.directions[1])


# --------------------------------------------------------------------------- atomic writes


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "v.safetensors"
    make_vector(seed=0).save(path)
    before = path.read_bytes()
    names_before = sorted(os.listdir(tmp_path))

    calls = []

    def broken_save_file(tensors, filename, metadata=None):
        calls.append(filename)
        assert Path(filename) != path  # writes go to a temp file, never the target
        assert Path(filename).parent == path.parent
        with open(filename, "wb") as fh:
            fh.write(b"\x00garbage, half written")
        raise OSError("disk full")

    monkeypatch.setattr(vio, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        make_vector(seed=1).save(path)
    assert calls, "save_file was not called through vectors.io.save_file"
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == names_before
    assert torch.equal(load_vector(path).directions[0], make_vector(seed=0).directions[0])


def test_failed_first_write_creates_nothing(tmp_path, monkeypatch):
    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt  # BaseException too

    monkeypatch.setattr(vio, "save_file", broken)
    with pytest.raises(KeyboardInterrupt):
        save_vector(make_vector(), tmp_path / "new.safetensors")
    assert os.listdir(tmp_path) == []


def test_atomic_write_helper(tmp_path):
    target = tmp_path / "deep" / "f.txt"
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert not target.exists()
        tmp.write_text("done")

    assert atomic_write(target, write) == target
    assert target.read_text() == "done"
    assert seen[0] != target and not seen[0].exists()
    assert os.listdir(target.parent) == ["f.txt"]


# --------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "missing.safetensors")
    assert "no such" in message


def test_random_bytes(tmp_path):
    path = tmp_path / "rand.safetensors"
    g = torch.Generator().manual_seed(0)
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).tolist()))
    assert "not a readable safetensors" in load_error(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    load_error(path)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.99])
def test_truncated_file(tmp_path, keep):
    full = make_vector().save(tmp_path / "full.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(full[: int(len(full) * keep)])
    load_error(path)


def test_plain_safetensors_without_our_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"layers.0": torch.ones(D)}, str(path))
    message = load_error(path)
    assert "'format'" in message


def test_wrong_format_value(tmp_path):
    message = load_error(write(tmp_path / "f.safetensors", format="something-else"))
    assert "'format'" in message and "something-else" in message


@pytest.mark.parametrize("field", [f for f in REQUIRED if f != "format"])
def test_each_required_field_missing(tmp_path, field):
    path = write(tmp_path / "v.safetensors", **{field: None})
    message = load_error(path)
    assert repr(field) in message and "missing" in message


@pytest.mark.parametrize("field", ["hidden_size", "num_layers", "n_pairs", "format_version"])
@pytest.mark.parametrize("value", ["32.0", "abc", ""])
def test_non_integer_fields(tmp_path, field, value):
    path = write(tmp_path / "v.safetensors", **{field: value})
    message = load_error(path)
    assert repr(field) in message and "not an integer" in message


def test_future_format_version(tmp_path):
    path = write(tmp_path / "v.safetensors", format_version=str(FORMAT_VERSION + 1))
    message = load_error(path)
    assert "format_version" in message and str(FORMAT_VERSION + 1) in message


def test_older_format_version_is_read(tmp_path):
    # format_version is an integer; the current one must load.
    path = write(tmp_path / "v.safetensors", format_version=str(FORMAT_VERSION))
    assert load_vector(path).layers == [1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values(tmp_path, bad):
    t = torch.ones(D)
    t[5] = bad
    path = write(tmp_path / "v.safetensors", {"layers.0": torch.ones(D), "layers.2": t})
    message = load_error(path)
    assert "'layers.2'" in message and "NaN or inf" in message


@pytest.mark.parametrize("shape", [(D + 1,), (1, D), (D, 2), ()])
def test_wrong_tensor_shape(tmp_path, shape):
    path = write(tmp_path / "v.safetensors", {"layers.0": torch.ones(D), "layers.1": torch.ones(shape)})
    message = load_error(path)
    assert "'layers.1'" in message and "shape" in message


@pytest.mark.parametrize("name", ["layer.0", "layers.x", "weights", "layers.1.bias", "layers.-1"])
def test_unexpected_tensor_name(tmp_path, name):
    path = write(tmp_path / "v.safetensors", {"layers.0": torch.ones(D), name: torch.ones(D)})
    message = load_error(path)
    assert repr(name) in message and "unexpected tensor" in message


def test_integer_tensor(tmp_path):
    path = write(tmp_path / "v.safetensors", {"layers.0": torch.ones(D, dtype=torch.int32)})
    message = load_error(path)
    assert "'layers.0'" in message and "dtype" in message


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_load_as_float32(tmp_path, dtype):
    path = write(tmp_path / "v.safetensors", {"layers.0": torch.full((D,), 0.5, dtype=dtype)})
    v = load_vector(path)
    assert v.directions[0].dtype == torch.float32 and torch.equal(v.directions[0], torch.full((D,), 0.5))


def test_layer_beyond_num_layers(tmp_path):
    path = write(tmp_path / "v.safetensors", {"layers.0": torch.ones(D), f"layers.{NUM_LAYERS}": torch.ones(D)})
    message = load_error(path)
    assert f"'layers.{NUM_LAYERS}'" in message and "num_layers" in message


def test_no_layer_tensors(tmp_path):
    path = tmp_path / "v.safetensors"
    save_file({}, str(path), metadata=good_meta())
    assert "no 'layers." in load_error(path)


def test_errors_are_value_errors():
    assert issubclass(VectorFileError, ValueError)


# --------------------------------------------------------------------------- checks against a model


def _wide_llama(hidden: int = 48) -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def test_model_hidden_size_mismatch(tmp_path, llama):
    path = make_vector(llama[0]).save(tmp_path / "v.safetensors")
    wide = _wide_llama(48)
    message = load_error(path, wide)
    assert "hidden size 32" in message and "48" in message
    # not overridable: the tensors cannot be added to that model
    load_error(path, wide, allow_model_mismatch=True)


def test_model_layer_out_of_range(tmp_path, llama):
    model, _ = llama
    # a file made on a deeper model of the same width
    v = make_vector(layers=(0, 4), num_layers=6, model_fingerprint="unknown")
    path = v.save(tmp_path / "deep.safetensors")
    message = load_error(path, model)
    assert "[4]" in message and f"{NUM_LAYERS} layers" in message
    load_error(path, model, allow_model_mismatch=True)  # sizes are always checked


def test_model_num_layers_mismatch_can_be_allowed(tmp_path, llama):
    model, _ = llama
    v = make_vector(layers=(1,), num_layers=6, model_fingerprint="unknown")
    path = v.save(tmp_path / "deep.safetensors")
    message = load_error(path, model)
    assert "num_layers 6" in message and "allow_model_mismatch" in message
    assert load_vector(path, model, allow_model_mismatch=True).layers == [1]


def test_model_fingerprint_mismatch(tmp_path, llama):
    model, _ = llama
    other = make_tiny_model("llama", seed=1)
    assert model_fingerprint(other) != model_fingerprint(model)
    path = make_vector(model).save(tmp_path / "v.safetensors")
    message = load_error(path, other)
    assert "fingerprint" in message and model_fingerprint(model) in message and model_fingerprint(other) in message
    assert "allow_model_mismatch" in message
    v = load_vector(path, other, allow_model_mismatch=True)
    assert v.model_fingerprint == model_fingerprint(model)  # the file's provenance is kept
    # and the right model loads it without complaint
    assert load_vector(path, model).layers == [0, 2]


def test_old_format_fingerprint_is_checked_in_its_own_format(tmp_path, llama):
    """Files from before fingerprint format 2 still load, checked with the format-1 hash."""
    model, _ = llama
    old = model_fingerprint(model, version=1)
    assert len(old) == 16 and old != model_fingerprint(model)
    path = make_vector(model, model_fingerprint=old).save(tmp_path / "v.safetensors")
    assert load_vector(path, model).model_fingerprint == old
    other = make_tiny_model("llama", seed=1)
    message = load_error(path, other)
    assert old in message and model_fingerprint(other, version=1) in message


def test_unknown_fingerprint_format_loads_with_a_warning(tmp_path, llama):
    model, _ = llama
    path = make_vector(model, model_fingerprint="fp9:0123456789abcdef").save(tmp_path / "v.safetensors")
    with pytest.warns(RuntimeWarning, match="format 9"):
        assert load_vector(path, model).layers == [0, 2]


def test_unknown_fingerprint_loads_on_any_same_shape_model(tmp_path, llama):
    v = make_vector(model_fingerprint="unknown")
    path = v.save(tmp_path / "v.safetensors")
    assert load_vector(path, make_tiny_model("llama", seed=3)).layers == [0, 2]


def test_fingerprint_same_across_dtypes(llama, tmp_path):
    model, _ = llama
    for dtype in (torch.bfloat16, torch.float16):  # one half of the fingerprint agrees (see model_info)
        half = make_tiny_model("llama").to(dtype)
        assert same_checkpoint(model_fingerprint(half), model_fingerprint(model)), dtype
        path = make_vector(model_fingerprint=model_fingerprint(model)).save(tmp_path / f"{dtype}.safetensors")
        assert load_vector(path, half).layers == [0, 2]  # the float32 vector passes the check on the half model


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_every_written_file_honours_the_umask(tmp_path, umask):
    """Like a plain open(): 0644 under umask 022, 0640 under 027, for every format and writer.

    safetensors' save_file replaces the temp file with its own 0600 file, so a
    chmod before the write was lost and every .safetensors came out 0600.
    """
    import stat

    from steering.vectors.interop import write_any_vector

    v = SteeringVector({1: torch.ones(4), 2: torch.ones(4)}, hidden_size=4, num_layers=3, model="m")
    written = [
        v.save(tmp_path / "v.safetensors"),
        write_any_vector(v, tmp_path / "v.gguf"),
        write_any_vector(v, tmp_path / "v.pt"),
        *sorted(write_any_vector(v, tmp_path / "caa", model_suffix="m").iterdir()),
        atomic_write(tmp_path / "m.json", lambda tmp: tmp.write_text("{}"), suffix=".json"),
        atomic_write(tmp_path / "m.csv", lambda tmp: tmp.write_text("a,b\n"), suffix=".csv"),
    ]
    assert len(written) == 7
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_files_written_before_the_rename_load_with_position_as_read(tmp_path):
    """Files from before issue 11 carry ``position``; they load, and are written back with ``read``."""
    from safetensors.torch import load_file, save_file

    path = make_vector().save(tmp_path / "new.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
    meta["position"] = meta.pop("read")
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata=meta)
    old = load_vector(tmp_path / "old.safetensors")
    assert old.read == "last" and "position" not in old.extra
    resaved = old.save(tmp_path / "again.safetensors")
    with safe_open(str(resaved), framework="pt") as handle:
        again = handle.metadata()
    assert again["read"] == "last" and "position" not in again
