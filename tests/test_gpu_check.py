"""``benchmarks/gpu_check.py --device cpu``: the GPU check's dry run, every part, on a tiny model in bfloat16.

On the CPU the benchmarks it starts in subprocesses are only asked for
``--help`` (their flags are checked); the parity, compile and split parts run
for real and must meet their goals, so the script that cannot run here is
known to work up to the device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import save_tiny

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_on_cpu(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    folder = save_tiny(tmp_path / "model", "llama")
    out = tmp_path / "gpu-check.json"
    argv = ["--device", "cpu", "--dtype", "bfloat16", "--model", str(folder), "--layers", "0,2", "--pairs", "4", "--tokens", "4"]
    code = gpu_check.main([*argv, "--compile-backend", "eager", "--out", str(out)])
    results = json.loads(out.read_text())
    assert code == 0, {part: results[part] for part in gpu_check.PARTS if "error" in results[part]}
    assert results["machine"]["device"] == "cpu" and results["machine"]["dtype"] == "bfloat16" and results["machine"]["date"]
    parity = results["parity"]
    assert all(parity["extract"][read]["met"] for read in ("last", "mean")), parity["extract"]
    assert parity["steer"]["fold"]["kl_to_reference"] >= 0 and parity["ablate"]["max_share_left_device"] < 0.02
    assert results["compile"]["graph_breaks"] == 0 and results["compile"]["unique_graphs"] >= 1
    split = results["split"]
    assert split["min_cos_met"] and split["hook_same_tokens"] == "3/3" and split["fold_same_tokens"] == "3/3"
    assert "disk" in split["device_map"].values()
    for part in ("generate", "serve"):
        assert results[part]["returncode"] == 0, results[part]["output_tail"]
        assert "--device" in results[part]["output_tail"]


def test_gpu_check_rejects_unknown_parts(capsys, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    with pytest.raises(SystemExit) as exc:
        gpu_check.parse_args(["--parts", "parity,warp"])
    assert exc.value.code == 2 and "unknown parts ['warp']" in capsys.readouterr().err
