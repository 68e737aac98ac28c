"""Tests for vectors.interop: llama.cpp / repeng GGUF and CAA .pt, both ways."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tiny_models import HIDDEN_SIZE, NUM_LAYERS

import steering as st
from steering.vectors import SteeringVector, VectorFileError, model_fingerprint, model_name
from steering.vectors.interop import export_gguf, export_pt, import_gguf, import_pt, read_any_vector, write_any_vector

D = HIDDEN_SIZE


def make_vector(layers=(1, 2), seed=0, **kw) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    fields = {
        "hidden_size": D,
        "num_layers": NUM_LAYERS,
        "model": "tiny-llama",
        "model_fingerprint": "0123456789abcdef",
        "method": "pca_diff",
        "read": "last",
        "n_pairs": 9,
        "dataset_sha256": "d" * 64,
        "extra": {"note": "x"},
    }
    fields.update(kw)
    return SteeringVector({i: torch.randn(D, generator=g) for i in layers}, **fields)


def write_foreign_gguf(path: Path, directions: dict[int, np.ndarray], *, hint: str | None = "llama", arch: str = "controlvector") -> Path:
    """A control vector as repeng's export_gguf writes it: hint, layer_count, direction.N."""
    writer = gguf.GGUFWriter(str(path), arch)
    if hint is not None:
        writer.add_string(f"{arch}.model_hint", hint)
    writer.add_uint32(f"{arch}.layer_count", len(directions))
    for layer, array in directions.items():
        writer.add_tensor(f"direction.{layer}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ----------------------------------------------------------------------- GGUF
def test_gguf_round_trip_is_bit_exact_and_keeps_metadata(tmp_path: Path) -> None:
    vec = make_vector()
    back = import_gguf(export_gguf(vec, tmp_path / "v.gguf"))
    assert back.layers == vec.layers
    for i in vec.layers:
        assert torch.equal(back.directions[i], vec.directions[i])
    for f in ("hidden_size", "num_layers", "model", "model_fingerprint", "site", "method", "read", "n_pairs", "dataset_sha256"):
        assert getattr(back, f) == getattr(vec, f), f
    assert back.extra["note"] == "x" and back.extra["source_format"] == "gguf-controlvector"


def test_gguf_file_is_what_llama_cpp_loads(tmp_path: Path) -> None:
    """llama.cpp's loader: arch controlvector, tensors direction.N (N >= 1), F32, 1-D."""
    vec = make_vector(layers=(1, 2))
    reader = gguf.GGUFReader(str(export_gguf(vec, tmp_path / "v.gguf", model_hint="llama")))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "llama"
    assert reader.fields["controlvector.layer_count"].contents() == 2
    names = sorted(t.name for t in reader.tensors)
    assert names == ["direction.1", "direction.2"]
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [D]
        layer = int(t.name.split(".")[1])
        np.testing.assert_array_equal(np.asarray(t.data), vec.directions[layer].numpy())


def test_gguf_export_refuses_layer_zero_for_llama_cpp(tmp_path: Path) -> None:
    vec = make_vector(layers=(0, 2))
    with pytest.raises(VectorFileError, match=r"direction\.0.*select\(\[2\]\).*llama_cpp=False"):
        export_gguf(vec, tmp_path / "v.gguf")
    assert not (tmp_path / "v.gguf").exists()
    back = import_gguf(export_gguf(vec, tmp_path / "v.gguf", llama_cpp=False))  # for repeng, which accepts it
    assert back.layers == [0, 2] and torch.equal(back.directions[0], vec.directions[0])


def test_gguf_export_refuses_other_sites(tmp_path: Path) -> None:
    with pytest.raises(VectorFileError, match="block outputs only.*'mlp_output'"):
        export_gguf(make_vector(site="mlp_output"), tmp_path / "v.gguf")


def test_gguf_export_is_atomic(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "v.gguf"
    export_gguf(make_vector(seed=1), path)
    before = path.read_bytes()

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(make_vector(seed=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.gguf"]  # no temp file left


def test_foreign_gguf_metadata_is_unknown_or_inferred(tmp_path: Path) -> None:
    arrays = {3: np.arange(D, dtype=np.float32), 5: -np.ones(D, dtype=np.float32)}
    vec = import_gguf(write_foreign_gguf(tmp_path / "repeng.gguf", arrays))
    assert vec.layers == [3, 5]
    np.testing.assert_array_equal(vec.directions[3].numpy(), arrays[3])
    assert (vec.model, vec.model_fingerprint, vec.method, vec.read, vec.dataset_sha256) == ("unknown",) * 5
    assert vec.site == "block_output" and vec.hidden_size == D
    assert vec.num_layers == 6 and vec.extra["num_layers_source"] == "inferred"
    assert vec.extra["model_hint"] == "llama" and vec.extra["source_file"] == "repeng.gguf"

    given = import_gguf(tmp_path / "repeng.gguf", model_id="my-model", num_layers=24)
    assert given.model == "my-model" and given.num_layers == 24 and "num_layers_source" not in given.extra


def test_foreign_gguf_onto_a_model_fills_and_validates(tmp_path: Path, llama) -> None:
    model, _ = llama
    path = write_foreign_gguf(tmp_path / "v.gguf", {1: np.ones(D, dtype=np.float32)}, hint="llama")
    vec = import_gguf(path, model)
    assert vec.model == model_name(model) and vec.model_fingerprint == model_fingerprint(model)
    assert vec.num_layers == NUM_LAYERS

    wide = write_foreign_gguf(tmp_path / "wide.gguf", {1: np.ones(D * 2, dtype=np.float32)})
    with pytest.raises(VectorFileError, match=rf"wide.gguf: hidden size {2 * D} does not match the model\'s {D}"):
        import_gguf(wide, model)
    deep = write_foreign_gguf(tmp_path / "deep.gguf", {7: np.ones(D, dtype=np.float32)})
    with pytest.raises(VectorFileError, match=r"deep.gguf: layers \[7\] are out of range .* 3 layers"):
        import_gguf(deep, model)
    qwen = write_foreign_gguf(tmp_path / "qwen.gguf", {1: np.ones(D, dtype=np.float32)}, hint="qwen2")
    with pytest.raises(VectorFileError, match=r"model_hint 'qwen2' does not match model .*\(type 'llama'\)"):
        import_gguf(qwen, model)
    assert import_gguf(qwen, model, allow_model_mismatch=True).layers == [1]


def test_our_gguf_checks_fingerprint_against_model(tmp_path: Path, llama) -> None:
    model, _ = llama
    path = export_gguf(make_vector(), tmp_path / "v.gguf")  # fingerprint of another model
    with pytest.raises(VectorFileError, match="made on 'tiny-llama'.*allow_model_mismatch"):
        import_gguf(path, model)
    assert import_gguf(path, model, allow_model_mismatch=True).model == "tiny-llama"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            lambda p: write_foreign_gguf(p, {1: np.ones(D, dtype=np.float32)}, arch="llama"),
            "'general.architecture' is 'llama', expected 'controlvector'",
        ),
        (lambda p: write_foreign_gguf(p, {1: np.ones(D, dtype=np.float16)}), "'direction.1' has type F16, expected F32"),
        (
            lambda p: write_foreign_gguf(p, {1: np.ones(D, dtype=np.float32), 2: np.ones(D + 1, dtype=np.float32)}),
            r"different sizes \[32, 33\]",
        ),
        (lambda p: write_foreign_gguf(p, {1: np.full(D, np.nan, dtype=np.float32)}), "layer 1 contains NaN"),
        (lambda p: p.write_bytes(b"not a gguf file at all"), "not a readable GGUF file"),
    ],
)
def test_bad_gguf_files_name_file_and_field(tmp_path: Path, setup, message) -> None:
    path = tmp_path / "bad.gguf"
    setup(path)
    with pytest.raises(VectorFileError, match=message) as info:
        import_gguf(path)
    assert "bad.gguf" in str(info.value)


def test_bad_gguf_tensor_name(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "controlvector")
    writer.add_tensor("steer.1", np.ones(D, dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(VectorFileError, match="unexpected tensor 'steer.1'"):
        import_gguf(tmp_path / "v.gguf")


@torch.no_grad()
def test_imported_vector_steers_the_same_block(tmp_path: Path, llama) -> None:
    """direction.N lands on block N's output: steering with the import equals steering with the original."""
    model, tok = llama
    vec = dataclasses.replace(make_vector(layers=(1, 2)), model=model_name(model), model_fingerprint=model_fingerprint(model))
    back = import_gguf(export_gguf(vec, tmp_path / "v.gguf"), model)
    ids = tok("the cat sat on the mat", return_tensors="pt")
    with st.steer(model, vec, coef=3.0):
        expected = model(**ids).logits
    with st.steer(model, back, coef=3.0):
        got = model(**ids).logits
    assert torch.equal(expected, got)
    assert not torch.allclose(expected, model(**ids).logits)  # the steering did something


# ------------------------------------------------------------------------ .pt
def test_pt_folder_round_trip_uses_caa_names(tmp_path: Path) -> None:
    vec = make_vector(layers=(0, 2), model="org/Llama-2-7b-chat-hf")
    folder = export_pt(vec, tmp_path / "sycophancy")
    assert sorted(p.name for p in folder.iterdir()) == ["vec_layer_0_Llama-2-7b-chat-hf.pt", "vec_layer_2_Llama-2-7b-chat-hf.pt"]
    back = import_pt(folder)
    assert back.layers == [0, 2]
    for i in vec.layers:
        assert torch.equal(back.directions[i], vec.directions[i])
    assert back.extra["model_hint"] == "Llama-2-7b-chat-hf" and back.model == "unknown"


def test_pt_single_file_round_trip(tmp_path: Path) -> None:
    vec = make_vector(layers=(1, 2))
    back = import_pt(export_pt(vec, tmp_path / "v.pt"), model_id="m", num_layers=NUM_LAYERS)
    assert back.model == "m" and back.num_layers == NUM_LAYERS
    for i in vec.layers:
        assert torch.equal(back.directions[i], vec.directions[i])


def test_pt_layouts_and_keys(tmp_path: Path) -> None:
    t = torch.randn(D)
    torch.save(t, tmp_path / "vec_layer_13_Llama-2-7b-chat-hf.pt")
    one = import_pt(tmp_path / "vec_layer_13_Llama-2-7b-chat-hf.pt")
    assert one.layers == [13] and torch.equal(one.directions[13], t) and one.extra["model_hint"] == "Llama-2-7b-chat-hf"
    torch.save({"layers.4": t, "6": 2 * t}, tmp_path / "d.pt")
    assert import_pt(tmp_path / "d.pt").layers == [4, 6]
    torch.save(t[None, :].to(torch.bfloat16), tmp_path / "batch.pt")
    bf = import_pt(tmp_path / "batch.pt", layer=2)
    assert bf.directions[2].dtype == torch.float32 and bf.extra["source_dtype"] == "bfloat16"
    assert torch.equal(bf.directions[2], t.to(torch.bfloat16).float())


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (_Evil(), {}, r"weights_only=True"),
        (torch.randn(D), {}, "its layer is unknown; pass layer="),
        (torch.randn(2, D), {"layer": 1}, r"expected a 1-D tensor \[hidden_size\], got shape \(2, 32\)"),
        (torch.arange(D), {"layer": 1}, "expected a float tensor, got torch.int64 tensor"),
        ({"encoder": torch.randn(D)}, {}, "key 'encoder' is not a layer index"),
    ],
)
def test_bad_pt_files(tmp_path: Path, content, kwargs, message, capsys) -> None:
    path = tmp_path / "v.pt"
    torch.save(content, path)
    with pytest.raises(VectorFileError, match=message) as info:
        import_pt(path, **kwargs)
    assert "v.pt" in str(info.value)
    assert "unpickled code ran" not in capsys.readouterr().out


def test_pt_folder_with_several_models_needs_a_choice(tmp_path: Path) -> None:
    for suffix in ("Llama-2-7b-chat-hf", "Llama-2-13b-chat-hf"):
        torch.save(torch.randn(D), tmp_path / f"vec_layer_10_{suffix}.pt")
    with pytest.raises(VectorFileError, match="several models.*model_suffix="):
        import_pt(tmp_path)
    assert import_pt(tmp_path, model_suffix="Llama-2-13b-chat-hf").layers == [10]
    with pytest.raises(VectorFileError, match="no files for model_suffix='x'"):
        import_pt(tmp_path, model_suffix="x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VectorFileError, match="no CAA vector files"):
        import_pt(tmp_path / "empty")


def test_pt_onto_a_model_validates_sizes(tmp_path: Path, llama) -> None:
    model, _ = llama
    torch.save({1: torch.randn(D + 8)}, tmp_path / "v.pt")
    with pytest.raises(VectorFileError, match=f"hidden size {D + 8} does not match"):
        import_pt(tmp_path / "v.pt", model)
    torch.save({1: torch.randn(D)}, tmp_path / "ok.pt")
    vec = import_pt(tmp_path / "ok.pt", model)
    assert vec.model_fingerprint == model_fingerprint(model) and vec.num_layers == NUM_LAYERS


def test_read_any_vector_dispatches_by_suffix(tmp_path: Path) -> None:
    vec = make_vector()
    for path in (
        vec.save(tmp_path / "v.safetensors"),
        export_gguf(vec, tmp_path / "v.gguf"),
        export_pt(vec, tmp_path / "v.pt"),
        export_pt(vec, tmp_path / "caa"),
    ):
        back = read_any_vector(path, num_layers=NUM_LAYERS)
        assert all(torch.equal(back.directions[i], vec.directions[i]) for i in vec.layers), path
    (tmp_path / "v.npy").write_bytes(b"")
    with pytest.raises(VectorFileError, match="unknown vector file type '.npy'"):
        read_any_vector(tmp_path / "v.npy")


def test_write_any_vector_is_the_mirror_of_read_any_vector(tmp_path: Path) -> None:
    vec = make_vector()
    for name in ("v.safetensors", "v.gguf", "v.pt", "v.pth", "caa"):
        path = write_any_vector(vec, tmp_path / name)
        back = read_any_vector(path, num_layers=NUM_LAYERS)
        assert back.layers == vec.layers and all(torch.equal(back.directions[i], vec.directions[i]) for i in vec.layers), name
    assert (tmp_path / "v.pth").is_file() and (tmp_path / "caa").is_dir()
    assert sorted(f.name for f in (tmp_path / "caa").iterdir()) == ["vec_layer_1_tiny-llama.pt", "vec_layer_2_tiny-llama.pt"]
    with pytest.raises(VectorFileError, match="unknown vector file type '.npy'"):
        write_any_vector(vec, tmp_path / "v.npy")
    with pytest.raises(TypeError, match="unknown options \\['colour'\\]"):
        write_any_vector(vec, tmp_path / "w.gguf", colour="blue")
    assert not (tmp_path / "v.npy").exists() and not (tmp_path / "w.gguf").exists()


def test_export_pt_into_an_existing_folder_leaves_no_stale_layers(tmp_path: Path) -> None:
    """Re-exporting fewer layers must not let import_pt merge the old files back in."""
    folder = tmp_path / "caa"
    export_pt(make_vector(layers=(0, 1, 2)), folder)
    torch.save(torch.randn(D), folder / "vec_layer_5_other-model.pt")  # another model's file stays
    export_pt(make_vector(layers=(1,), seed=3), folder)
    assert import_pt(folder, model_suffix="tiny-llama").layers == [1]
    assert sorted(f.name for f in folder.iterdir()) == ["vec_layer_1_tiny-llama.pt", "vec_layer_5_other-model.pt"]


def test_pt_only_options_are_refused_where_the_file_names_its_layers(tmp_path: Path) -> None:
    vec = make_vector(layers=(1, 2))
    gguf_path = export_gguf(vec, tmp_path / "v.gguf")
    with pytest.raises(VectorFileError, match="layer applies to CAA .pt files only.*vector.select"):
        read_any_vector(gguf_path, num_layers=NUM_LAYERS, layer=2)
    with pytest.raises(VectorFileError, match="model_suffix applies to CAA .pt files only"):
        read_any_vector(gguf_path, num_layers=NUM_LAYERS, model_suffix="x")
    assert read_any_vector(gguf_path, num_layers=NUM_LAYERS, layer=None).layers == [1, 2]
    with pytest.raises(VectorFileError, match="layer=2 applies to a file holding one tensor"):
        import_pt(export_pt(vec, tmp_path / "v.pt"), layer=2)
    with pytest.raises(VectorFileError, match="this folder names its layers"):
        import_pt(export_pt(vec, tmp_path / "caa"), layer=2)
