"""`steering compare` end to end on a tiny model: numbers, PNGs, report.html; and compare_vectors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from tiny_models import save_tiny

import steering as st
from steering import compare as sc
from steering.experiments.cli import main
from steering.experiments.config import compose_config
from steering.interop import export_gguf, export_pt
from steering.vectors import SteeringVector

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAIRS = [
    {"prompt": "How was your day?", "positive": "It was a wonderful, happy day.", "negative": "It was an awful, sad day."},
    {"prompt": "Describe the park.", "positive": "The park is lovely and bright.", "negative": "The park is dreary and grim."},
    {"positive": "I love this song", "negative": "I hate this song"},
    {"positive": "what a great gift", "negative": "what a terrible gift"},
    {"positive": "so glad to see you", "negative": "so upset to see you"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny model folder, a pairs file and three vectors made on that model (one is another's negation)."""
    root = tmp_path_factory.mktemp("compare")
    model, tok = st.load_model(str(save_tiny(root / "tiny")))
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    pairs = st.load_pairs(root / "pairs.jsonl")
    md = st.extract(model, tok, pairs, layers=None)
    files = {
        "md": md.save(root / "md.safetensors"),
        "pca": st.extract(model, tok, pairs, layers=None, method="pca_diff").save(root / "pca.safetensors"),
        "neg": (-md).select([1, 2]).save(root / "neg.safetensors"),
    }
    return {"root": root, "pairs": root / "pairs.jsonl", **files}


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["compare", *args])
    out, err = capsys.readouterr()
    return code, out, err


def vectors_arg(setup, *names: str) -> str:
    return "vectors=[" + ",".join(str(setup[n]) for n in names) + "]"


def referenced(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html)


def test_compare_writes_numbers_pngs_and_a_report(setup, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    code, stdout, err = run(
        capsys, vectors_arg(setup, "md", "pca", "neg"), f"out={out}", f"data={setup['pairs']}", "embed=[pca]", "plot_layers=[1,2]"
    )
    assert code == 0, err
    assert "md: best separation AUROC" in stdout and "(in-sample)" in stdout

    numbers = json.loads((out / "numbers.json").read_text())
    assert numbers["names"] == ["md", "pca", "neg"]
    raw = {n: load_file(str(setup[n])) for n in ("md", "pca", "neg")}
    for layer, matrix in numbers["cosine"].items():
        for i, a in enumerate(numbers["names"]):
            for j, b in enumerate(numbers["names"]):
                key = f"layers.{layer}"
                if key not in raw[a] or key not in raw[b]:
                    assert matrix[i][j] is None  # NaN -> null in JSON
                    continue
                x, y = raw[a][key].astype(np.float64), raw[b][key].astype(np.float64)
                assert matrix[i][j] == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), abs=1e-6)
    assert numbers["cosine"]["1"][0][2] == pytest.approx(-1.0)
    sep = numbers["separation"]
    for layer in ("1", "2"):
        assert sep["md"][layer] + sep["neg"][layer] == pytest.approx(1.0)
    assert numbers["in_sample"] == {"md": True, "pca": True, "neg": True}

    with open(out / "cosine.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 + 3 + 1  # layers 1 and 2: three pairs each; layer 0: md/pca only
    with open(out / "auroc.csv") as f:
        assert {(r["vector"], r["layer"]) for r in csv.DictReader(f)} == {
            ("md", "0"),
            ("md", "1"),
            ("md", "2"),
            ("pca", "0"),
            ("pca", "1"),
            ("pca", "2"),
            ("neg", "1"),
            ("neg", "2"),
        }

    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == {
        "cosine_heatmaps.png",
        "cosine_over_layers.png",
        "layer_similarity.png",
        "norms.png",
        "auroc.png",
        "scatter_pca.png",
        "projections.png",
    }
    import matplotlib.image

    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE, png
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    html = (out / "report.html").read_text()
    refs = referenced(html)
    assert refs, "the report links its plots and data"
    for ref in refs:
        assert "/" not in ref and ":" not in ref, ref  # relative, inside the folder, nothing remote
        assert (out / ref).is_file(), ref
    assert {p.name for p in pngs} <= set(refs)
    assert not list(out.glob(".*"))  # no temp files left behind


def test_report_with_embedded_images_is_one_file(setup, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    assert run(capsys, vectors_arg(setup, "md", "pca"), f"out={out}", "embed_images=true")[0] == 0
    html = (out / "report.html").read_text()
    images = re.findall(r"<img src='([^']+)'", html)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert all((out / ref).is_file() for ref in referenced(html) if not ref.startswith("data:"))


def test_plots_false_writes_numbers_only(setup, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    assert run(capsys, vectors_arg(setup, "md", "pca"), f"out={out}", "plots=false")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["cosine.csv", "layer_similarity.csv", "norms.csv", "numbers.json"]


def test_cross_model_vectors_get_a_clear_error(setup, tmp_path: Path, capsys) -> None:
    other = SteeringVector(
        {1: torch.randn(32)}, hidden_size=32, num_layers=3, model="qwen2-0.5b", model_fingerprint="fp2:" + "0" * 16
    )  # the current format: compared
    other.save(tmp_path / "qwen.safetensors")
    out = tmp_path / "cmp"
    code, _, err = run(capsys, f"vectors=[{setup['md']},{tmp_path / 'qwen.safetensors'}]", f"out={out}")
    assert code == 1
    assert "come from different models" in err and "'qwen'" in err and "behaviour profiles" in err
    assert not out.exists()


def test_foreign_vector_is_compared_with_ours(setup, tmp_path: Path, capsys) -> None:
    """A control-vector GGUF (as repeng/llama.cpp write it) is compared in our space."""
    md = SteeringVector.load(setup["md"])
    gguf_path = export_gguf(md.select([1, 2]), tmp_path / "md.gguf")
    out = tmp_path / "cmp"
    code, _, err = run(capsys, f"vectors=[{setup['md']},{gguf_path}]", "names=[ours,theirs]", f"out={out}", "plots=false")
    assert code == 0, err
    numbers = json.loads((out / "numbers.json").read_text())
    assert numbers["cosine"]["1"][0][1] == pytest.approx(1.0, abs=1e-12)
    assert numbers["vectors"]["theirs"]["source_format"] == "gguf-controlvector"


def test_interpolation_and_analogy_through_the_command(setup, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me about the park.\nHow was the film?\n")
    code, _, err = run(
        capsys,
        vectors_arg(setup, "md", "pca", "neg"),
        f"out={out}",
        "analogies=[[md,pca,neg,pca]]",
        "interpolate.a=md",
        "interpolate.b=pca",
        "interpolate.ts=[0,1]",
        "interpolate.max_new_tokens=3",
        f"interpolate.prompts={prompts}",
    )
    assert code == 1 and "expected vector 'pca' is also an input" in err
    code, _, err = run(
        capsys,
        vectors_arg(setup, "md", "pca", "neg"),
        f"out={out}",
        "interpolate.a=md",
        "interpolate.b=pca",
        "interpolate.ts=[0,1]",
        "interpolate.max_new_tokens=3",
        f"interpolate.prompts={prompts}",
    )
    assert code == 0, err
    with open(out / "interpolation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["t"]), r["scorer"]) for r in rows] == [
        (0.0, "projection on md (layer 1)"),
        (1.0, "projection on md (layer 1)"),
        (0.0, "projection on pca (layer 1)"),
        (1.0, "projection on pca (layer 1)"),
    ]
    texts = json.loads((out / "interpolation_texts.json").read_text())
    assert texts["prompts"] == ["Tell me about the park.", "How was the film?"] and len(texts["by_t"]["0.0"]) == 2
    assert "interpolation.png" in referenced((out / "report.html").read_text())


def test_profiles_only(tmp_path: Path, capsys) -> None:
    for model, effects in (("smollm2", [0.4, 0.1, 0.05, 0.3]), ("qwen", [0.5, 0.3, 0.01, 0.2])):
        names = ["sentiment", "formality", "refusal", "confidence"]
        (tmp_path / f"{model}.json").write_text(json.dumps({"model": model, "effects": dict(zip(names, effects))}))
    out = tmp_path / "cmp"
    code, _, err = run(capsys, f"profiles=[{tmp_path / 'smollm2.json'},{tmp_path / 'qwen.json'}]", f"out={out}")
    assert code == 0, err
    with open(out / "profile_correlation.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["pearson"]) == pytest.approx(np.corrcoef([0.4, 0.1, 0.05, 0.3], [0.5, 0.3, 0.01, 0.2])[0, 1], abs=1e-5)
    assert (out / "profiles.png").read_bytes()[:8] == PNG_SIGNATURE
    assert all((out / ref).is_file() for ref in referenced((out / "report.html").read_text()))


def test_command_errors(setup, tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, f"out={tmp_path / 'x'}")
    assert code == 1 and "nothing to compare" in err
    code, _, err = run(capsys, vectors_arg(setup, "md", "md"), f"out={tmp_path / 'x'}")
    assert code == 1 and "several vectors are called ['md']" in err
    caa = export_pt(SteeringVector.load(setup["md"]), tmp_path / "caa")  # tensors only: no model recorded
    code, _, err = run(capsys, f"vectors=[{caa}]", f"out={tmp_path / 'x'}", f"data={setup['pairs']}")
    assert code == 1 and "none records its model; pass model=" in err
    code, _, err = run(
        capsys,
        f"vectors=[{caa}]",
        f"out={tmp_path / 'x'}",
        f"data={setup['pairs']}",
        f"model={setup['root'] / 'tiny'}",
        "plots=false",
        "embed=[pca]",
    )
    assert code == 0, err
    code, _, err = run(capsys, f"vectors=[{setup['md']}]", f"out={tmp_path / 'x'}", "layers=[7]")
    assert code == 1 and "layers [7] are in none of the vectors" in err


def test_config_composes() -> None:
    cfg = compose_config("compare", ["vectors=[a.safetensors,dir/b.gguf]", "out=o", "interpolate.a=a", "analogies=[[a,b,c,d]]"])
    assert list(cfg.vectors) == ["a.safetensors", "dir/b.gguf"] and cfg.interpolate.a == "a" and cfg.plots is True


# ------------------------------------------------------------ compare_vectors
def test_compare_vectors_plain_data(setup) -> None:
    vecs = {n: SteeringVector.load(setup[n]) for n in ("md", "pca", "neg")}
    res = sc.compare_vectors(vecs)
    assert res["layers"] == [0, 1, 2] and sorted(res["cosine"]) == [0, 1, 2]
    assert res["layer_similarity"]["neg"]["layers"] == [1, 2]
    assert "separation" not in res
    only = sc.compare_vectors(vecs, layers=[2])
    assert list(only["cosine"]) == [2] and list(only["norms"]["md"]) == [2]
    with pytest.raises(st.SteeringError, match=r"layers \[5\] are in none"):
        sc.compare_vectors(vecs, layers=[5])
    jsonable = sc.to_jsonable({1: np.array([np.nan, 1.0]), "b": np.bool_(True), "c": (np.int64(3),)})
    assert jsonable == {"1": [None, 1.0], "b": True, "c": [3]}
    assert sc.spread_layers(list(range(30))) == [7, 14, 22] and sc.spread_layers([4, 2]) == [2, 4]
