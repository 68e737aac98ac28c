"""The `steering` command line: extract -> info -> generate, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny, save_tiny

import steering as st
from steering.experiments.cli import main

PAIRS = [
    {"prompt": "How was your day?", "positive": "It was a wonderful, happy day.", "negative": "It was an awful, sad day."},
    {"prompt": "Describe the park.", "positive": "The park is lovely and bright.", "negative": "The park is dreary and grim."},
    {"positive": "I love this song", "negative": "I hate this song"},
]


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return save_tiny(tmp_path / "tiny-llama")


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what fixtures printed
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_extract_info_generate(capsys, tmp_path: Path, tiny_folder: Path, pairs_file: Path) -> None:
    out_file = tmp_path / "vec.safetensors"
    code, out, err = _run(
        capsys, "extract", f"model={tiny_folder}", f"data={pairs_file}", "layers=[0,-1]", "method=pca_diff", f"out={out_file}"
    )
    assert code == 0, err
    assert f"saved {out_file}" in out
    vec = st.SteeringVector.load(out_file)
    assert vec.layers == [0, 2] and vec.method == "pca_diff" and vec.n_pairs == 3

    code, out, err = _run(capsys, "info", str(out_file))
    assert code == 0, err
    assert "method: pca_diff" in out and "layers (2): [0, 2]" in out and "layer   2:" in out

    code, out, err = _run(
        capsys,
        "generate",
        f"model={tiny_folder}",
        f"vector={out_file}",
        "coef=[3,-3]",
        "compare=true",
        "prompt=Hello, world: how are [you]?",
        "max_new_tokens=5",
    )
    assert code == 0, err
    assert out.count("--- ") == 3 and "--- unsteered ---" in out and "--- coef +3 ---" in out and "--- coef -3 ---" in out


def test_generate_cli_matches_library(capsys, tmp_path: Path, tiny_folder: Path, pairs_file: Path) -> None:
    out_file = tmp_path / "vec.safetensors"
    assert main(["extract", f"model={tiny_folder}", f"data={pairs_file}", "layers=[1]", f"out={out_file}"]) == 0
    capsys.readouterr()
    code, out, _ = _run(
        capsys, "generate", f"model={tiny_folder}", f"vector={out_file}", "coef=2", "prompt=Tell me a story", "max_new_tokens=6"
    )
    assert code == 0
    model, tok = st.load_model(str(tiny_folder))
    expected = st.generate(model, tok, "Tell me a story", st.SteeringVector.load(out_file), 2.0, max_new_tokens=6)
    assert out.strip() == expected.strip()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", "data=sentiment"], "missing required value 'out': add out=... to the command"),
        (["extract", "layers=[99]", "out=x.safetensors"], "layer 99 is out of range"),
        (["extract", "out=x.txt"], "must end in .safetensors"),
        (["extract", "method=magic", "out=x.safetensors"], "unknown method 'magic'"),
        (["extract", "data=no_such_set", "out=x.safetensors"], "'no_such_set' is neither a dataset file nor a bundled set"),
        (["extract", "colour=blue", "out=x.safetensors"], "unknown key 'colour' for steering extract"),
        (["generate", "prompt=hi", "vector=missing.safetensors"], "missing.safetensors: no such vector file"),
        (["info", "missing.safetensors"], "missing.safetensors: no such vector file"),
        (["info"], "info takes one vector file"),
    ],
)
def test_errors_are_one_line_without_traceback(capsys, monkeypatch, tmp_path: Path, tiny_folder: Path, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    if args[0] in ("extract", "generate"):
        args = [*args, f"model={tiny_folder}"]
    code, out, err = _run(capsys, *args)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0] and lines[0].startswith(f"steering {args[0]}: error:")
    assert "Traceback" not in err


def test_convert_between_formats_and_info_reads_them(capsys, tmp_path: Path, tiny_folder: Path, pairs_file: Path) -> None:
    ours = tmp_path / "vec.safetensors"
    assert _run(capsys, "extract", f"model={tiny_folder}", f"data={pairs_file}", "layers=[0,1,2]", f"out={ours}")[0] == 0
    vec = st.SteeringVector.load(ours)

    # to llama.cpp: layer 0 is refused (no slot for block 0 there), a subset is fine
    code, _, err = _run(capsys, "convert", f"input={ours}", f"out={tmp_path / 'v.gguf'}")
    assert code == 1 and "direction.0" in err and not (tmp_path / "v.gguf").exists()
    code, out, err = _run(capsys, "convert", f"input={ours}", f"out={tmp_path / 'v.gguf'}", "layers=[1,2]")
    assert code == 0 and f"wrote {tmp_path / 'v.gguf'}" in out, err
    code, out, err = _run(capsys, "info", str(tmp_path / "v.gguf"))
    assert code == 0 and "layers (2): [1, 2]" in out and "method: mean_diff" in out, err

    # CAA .pt folder (no metadata) and back, validated against the model, which fills the metadata in
    code, _, err = _run(capsys, "convert", f"input={ours}", f"out={tmp_path / 'caa'}", "model_suffix=tiny")
    assert code == 0 and sorted(f.name for f in (tmp_path / "caa").iterdir()) == [f"vec_layer_{i}_tiny.pt" for i in range(3)], err
    back = tmp_path / "back.safetensors"
    code, _, err = _run(capsys, "convert", f"input={tmp_path / 'caa'}", f"out={back}", f"model={tiny_folder}")
    assert code == 0, err
    loaded = st.SteeringVector.load(back)
    assert all(torch.equal(loaded.directions[i], vec.directions[i]) for i in range(3))
    assert loaded.model_fingerprint == vec.model_fingerprint and loaded.method == "unknown"
    assert loaded.extra["source_format"] == "caa-pt"


def test_extract_bipo_takes_its_settings(capsys, tmp_path: Path, tiny_folder: Path, pairs_file: Path) -> None:
    out_file = tmp_path / "bipo.safetensors"
    args = ["extract", f"model={tiny_folder}", f"data={pairs_file}", "layers=[1]", "method=bipo"]
    code, out, err = _run(capsys, *args, "bipo={seed: 3, epochs: 1}", f"out={out_file}")
    assert code == 0, err
    vec = st.SteeringVector.load(out_file)
    assert (vec.method, vec.extra["bipo_seed"], vec.extra["bipo_epochs"]) == ("bipo", "3", "1")
    model, tok = st.load_model(tiny_folder)
    expected = st.bipo_directions(model, tok, st.load_pairs(pairs_file), [1], options=st.BipoOptions(seed=3, epochs=1))
    torch.testing.assert_close(vec.directions[1], expected[1])
    code, _, err = _run(capsys, *args, "bipo={sed: 3}", f"out={tmp_path / 'no.safetensors'}")
    assert code == 1 and "bipo has no option 'sed'" in err and not (tmp_path / "no.safetensors").exists(), err
    code, _, err = _run(capsys, *args[:-1], "method=mean_diff", "bipo={seed: 3}", f"out={tmp_path / 'no.safetensors'}")
    assert code == 1 and "bipo={'seed': 3} are BiPO's settings; method=mean_diff takes none" in err, err
    code, _, err = _run(capsys, *args, "bipo=5", f"out={tmp_path / 'no.safetensors'}")
    assert code == 1 and "bipo=5: a mapping of BiPO's settings" in err, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["convert", "out=x.gguf"], "missing required value 'input'"),
        (["convert", "input=missing.gguf", "out=x.safetensors"], "missing.gguf"),
        (["convert", "input=v.safetensors", "out=v.safetensors"], "same file as input"),
        (["convert", "input=v.safetensors", "out=v.npy"], "unknown vector file type '.npy'"),
        (
            ["convert", "input=v.safetensors", "out=w.safetensors", "layers=[7]"],
            "layer 7 is out of range for a vector made on 'other' with 3 layers",
        ),
        (["convert", "input=v.safetensors", "out=w.safetensors", "model=MODEL"], "hidden size"),
    ],
)
def test_convert_errors_are_one_line(capsys, monkeypatch, tmp_path: Path, tiny_folder: Path, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    st.SteeringVector({1: torch.ones(8)}, hidden_size=8, num_layers=3, model="other").save(tmp_path / "v.safetensors")
    args = [a.replace("MODEL", str(tiny_folder)) for a in args]
    code, _, err = _run(capsys, *args)
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "w.safetensors").exists() and not (tmp_path / "v.npy").exists()


def test_malformed_dataset_line_is_named(capsys, tmp_path: Path, tiny_folder: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + '{"positive": "x"}\n')
    code, _, err = _run(capsys, "extract", f"model={tiny_folder}", f"data={bad}", f"out={tmp_path / 'v.safetensors'}")
    assert code == 1 and f"{bad}:2: missing field 'negative'" in err
    assert not (tmp_path / "v.safetensors").exists()


def test_vector_for_another_model(capsys, tmp_path: Path, tiny_folder: Path) -> None:
    other, _ = make_tiny("llama", seed=1)
    vec = st.SteeringVector({0: torch.ones(32)}, hidden_size=32, num_layers=3, model="other", model_fingerprint=st.model_fingerprint(other))
    path = vec.save(tmp_path / "other.safetensors")
    code, _, err = _run(capsys, "generate", f"model={tiny_folder}", f"vector={path}", "prompt=hi", "max_new_tokens=2")
    assert code == 1 and "fingerprint" in err and "allow_model_mismatch" in err
    code, _, err = _run(
        capsys, "generate", f"model={tiny_folder}", f"vector={path}", "prompt=hi", "max_new_tokens=2", "allow_model_mismatch=true"
    )
    assert code == 0, err


def test_debug_shows_traceback(monkeypatch) -> None:
    monkeypatch.setenv("STEERING_DEBUG", "1")
    with pytest.raises(Exception, match="no such vector file"):
        main(["info", "missing.safetensors"])


def test_usage_and_unknown_command(capsys) -> None:
    assert main([]) == 2
    assert "usage: steering" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_output_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """`steering info big.safetensors | head -1`: no traceback or error line once the reader has gone."""
    n = 20_000  # one line per layer, ~450 KB: far more than a pipe buffer (64 KiB) holds
    path = st.SteeringVector({i: torch.ones(2) for i in range(n)}, hidden_size=2, num_layers=n).save(tmp_path / "big.safetensors")
    proc = subprocess.Popen(
        [sys.executable, "-m", "steering.experiments.cli", "info", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"file: ")
    proc.stdout.close()  # what `head -1` does after its line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == b"", err.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", "layers=[12.5]"], "layers=[12.5]: 12.5 is not an integer layer index"),  # was: layer 12
        (["extract", "layers=abc"], "layers=abc: expected a layer index or a list of them"),
        (["extract", "layers=[]"], "layers=[]: the list of layers is empty"),
        (["extract", "+layer=12"], "unknown key 'layer' for steering extract; did you mean layers=...?"),  # was ignored
        (["extract", "layer=12"], "unknown key 'layer' for steering extract; did you mean layers=...?"),
        (["extract", "batch_size=0"], "batch_size=0: must be >= 1"),
        (["generate", "chat=maybe"], "chat=maybe: expected true or false"),  # was true
        (["generate", "coef=[]"], "coef=[]: the list of coefficients is empty"),  # was exit 0, nothing printed
        (["generate", "coef=abc"], "coef='abc' is not a number"),
        (["generate", "coef=[1,abc]"], "coef[1]='abc' is not a number"),
        (["generate", "coef=1e30"], "coef=1e+30 is out of range"),  # was exit 0, empty completion
        (["generate", "coef=nan"], "coef=nan is not a finite number"),
        (["generate", "max_new_tokens=abc"], "max_new_tokens=abc: expected an integer"),
        (["generate", "max_new_tokens=5.5"], "max_new_tokens=5.5: expected an integer"),
        (["generate", "layers=[true]"], "layers=[true]: true is not an integer layer index"),
        (["generate", "top_p=2"], "top_p=2: must be between 0 and 1"),
        (["convert", "input=v.safetensors", "layers=[1.5]"], "layers=[1.5]: 1.5 is not an integer layer index"),
        (["compare", "vectors=[v.safetensors]", "interpolate.coef=abc"], "interpolate.coef='abc' is not a number"),
        (
            ["compare", "vectors=[v.safetensors]", "+interpolate.cof=3"],
            "unknown key 'interpolate.cof' for steering compare; did you mean interpolate.coef",
        ),
    ],
)
def test_bad_values_are_one_line_naming_key_and_value_before_the_model_loads(capsys, monkeypatch, tmp_path: Path, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    loads: list[object] = []
    monkeypatch.setattr(st, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("the model was loaded"))
    extra = {
        "extract": ["data=sentiment", "out=v.safetensors"],
        "generate": ["prompt=hi", "vector=v.safetensors"],
        "convert": ["out=w.gguf"],
        "compare": ["out=o"],
    }
    code, out, err = _run(capsys, *args, *extra[args[0]], "model=no-such-model")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert loads == []


def test_empty_prompt_without_chat_is_a_clear_error(capsys, tiny_folder: Path) -> None:
    code, _, err = _run(capsys, "generate", f"model={tiny_folder}", "prompt=", "chat=false", "max_new_tokens=2")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "the prompt ('') is empty after tokenization" in err and "reshape" not in err


def test_cli_mean_centred_corpus_and_affine_mode(capsys, tmp_path: Path, tiny_folder: Path, pairs_file: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The train leaves at noon.\nA map of the town.\n")
    out_file = tmp_path / "vec.safetensors"
    code, out, err = _run(
        capsys,
        "extract",
        f"model={tiny_folder}",
        f"data={pairs_file}",
        "layers=[1]",
        "method=mean_centred",
        f"corpus={corpus}",
        f"out={out_file}",
    )
    assert code == 0, err
    vec = st.SteeringVector.load(out_file)
    assert vec.method == "mean_centred" and vec.reference is not None and vec.layers == [1]
    model, tok = st.load_model(str(tiny_folder))
    want = st.generate(model, tok, "Hello there", vec, coef=2.0, mode="affine_add", max_new_tokens=5)
    code, out, err = _run(
        capsys,
        "generate",
        f"model={tiny_folder}",
        f"vector={out_file}",
        "coef=2",
        "mode=affine_add",
        "prompt=Hello there",
        "max_new_tokens=5",
    )
    assert code == 0, err
    assert out.strip() == want.strip()
    code, out, err = _run(
        capsys, "extract", f"model={tiny_folder}", f"data={pairs_file}", "layers=[1]", "method=mean_centred", f"out={out_file}"
    )
    assert code != 0 and "needs a generic corpus" in err


def test_placement_keys_reach_load_model(capsys, monkeypatch, tmp_path: Path, tiny_folder: Path, pairs_file: Path) -> None:
    """device_map, max_memory, offload_folder and dtype on the command line reach `st.load_model`
    (extract for real, with a block on disk; generate and run up to the load)."""
    seen: list[dict] = []
    real = st.load_model
    monkeypatch.setattr(st, "load_model", lambda name, **kw: seen.append(kw) or real(name, **kw))
    out_file = tmp_path / "vec.safetensors"
    offload = tmp_path / "offload"
    placement = ["device_map={model.layers.1: disk, model.layers.0: cpu, model.layers.2: cpu, model.embed_tokens: cpu,"
                 " model.norm: cpu, model.rotary_emb: cpu, lm_head: cpu}", f"offload_folder={offload}"]  # fmt: skip
    code, _, err = _run(capsys, "extract", f"model={tiny_folder}", f"data={pairs_file}", "layers=[0,1,2]", f"out={out_file}", *placement)
    assert code == 0, err
    assert seen[-1]["device_map"]["model.layers.1"] == "disk" and seen[-1]["offload_folder"] == str(offload)
    plain = st.extract(*real(tiny_folder), st.load_pairs(pairs_file), layers=[0, 1, 2])
    assert min(st.SteeringVector.load(out_file).cosine(plain).values()) >= 0.99999

    def stop(name, **kw):
        seen.append(kw)
        raise st.ModelLoadError("stopped after the keys arrived")

    monkeypatch.setattr(st, "load_model", stop)
    keys = ["dtype=bfloat16", "device_map=auto", "max_memory={0: 20GiB, cpu: 1GiB}", f"offload_folder={offload}"]
    expected = {"device": None, "dtype": "bfloat16", "device_map": "auto", "max_memory": {0: "20GiB", "cpu": "1GiB"}}
    expected["offload_folder"] = str(offload)
    code, _, err = _run(capsys, "generate", f"model={tiny_folder}", "prompt=Hi", *keys)
    assert code != 0 and "stopped after the keys arrived" in err and seen[-1] == expected
    run = ["run", "experiment=sentiment_sweep", "debug=default", f"model.name={tiny_folder}", f"hydra.run.dir={tmp_path / 'run'}"]
    with pytest.raises(SystemExit):  # `steering run` logs the one-line error and exits 1
        _run(capsys, *run, *(f"model.{k}" for k in keys))
    assert seen[-1] == expected
