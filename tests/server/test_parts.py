"""Unit tests of the server's parts: text streaming, vector store, sampling, per-row deltas, config."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import hook_count
from omegaconf import OmegaConf
from server_helpers import tiny_vector, wait_until
from tiny_models import make_tiny

from steering.apply import build_ops
from steering.experiments.cli import USAGE
from steering.experiments.config import compose_config
from steering.experiments.serve import choose_torch_threads, server_config
from steering.hooks import AblateOp, AddOp, patch, span_basis
from steering.server import ConfigError, RowSteering, ServerConfig, Term, VectorStore, build_row_deltas, vector_store
from steering.server.row_steering import NO_STEERING, layer_placement
from steering.server.sampling import Sampler, SamplingParams, top_p_filter
from steering.server.text import Codec, TextStream
from steering.server.vector_store import VectorNameError, VectorNotFound
from steering.vectors import VectorFileError

# ----------------------------------------------------------------------------- text


class _CharCodec(Codec):
    """Token i decodes to chr(i); 0xFFFD stands for half a character."""

    def __init__(self) -> None:
        super().__init__(None, [])

    def decode(self, ids) -> str:  # type: ignore[override]
        return "".join(chr(i) for i in ids)


def _run(stream: TextStream, text: str) -> tuple[list[str], bool]:
    pieces, stopped = [], False
    for ch in text:
        piece, stopped = stream.push(ord(ch))
        pieces.append(piece)
        if stopped:
            break
    pieces.append(stream.flush())
    return pieces, stopped


def test_text_stream_holds_back_a_possible_stop_and_cuts_at_it() -> None:
    pieces, stopped = _run(TextStream(_CharCodec(), ["END"]), "abEN then ENDxyz")
    assert stopped and "".join(pieces) == "abEN then "
    assert pieces[2] == "" and pieces[3] == ""  # "E", "EN" held back while they might start "END"
    assert not any("END" in p for p in pieces)


def test_text_stream_earliest_of_several_stops_wins_and_no_stop_passes_all() -> None:
    pieces, stopped = _run(TextStream(_CharCodec(), ["zz", "b c"]), "aab czz")
    assert stopped and "".join(pieces) == "aa"
    pieces, stopped = _run(TextStream(_CharCodec(), ["zz"]), "abc z")
    assert not stopped and "".join(pieces) == "abc z" and pieces[-1] == "z"


def test_text_stream_holds_unfinished_characters() -> None:
    pieces, _ = _run(TextStream(_CharCodec()), "ab\ufffdc")
    assert pieces[:3] == ["a", "b", ""] and pieces[3] == "\ufffdc"


# ----------------------------------------------------------------------------- vector store


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "vecs"
    folder.mkdir()
    tiny_vector(1, [1, 2]).save(folder / "up.safetensors")
    tiny_vector(2, [1]).save(tmp_path / "outside.safetensors")
    return folder


def test_store_resolves_names_only_inside_its_directory(store_dir: Path) -> None:
    model, _ = make_tiny("llama")
    store = VectorStore(store_dir, model)
    assert store.get("up").layers == [1, 2] and store.get("up.safetensors").layers == [1, 2]
    for name in ("../outside", "..", "/tmp/x", "a/b", "a\\b", ".hidden", "", "up\x00", "x" * 200):
        with pytest.raises(VectorNameError):
            store.get(name)
    os.symlink(store_dir.parent / "outside.safetensors", store_dir / "escape.safetensors")
    with pytest.raises(VectorNotFound):
        store.get("escape")  # a symlink out of the directory is not in it
    assert store.names() == ["up"]
    with pytest.raises(VectorNotFound, match="available: up"):
        store.get("outside")


def test_store_reloads_a_changed_file_and_reports_broken_ones(store_dir: Path) -> None:
    model, _ = make_tiny("llama")
    store = VectorStore(store_dir, model)
    assert store.get("up").layers == [1, 2]
    tiny_vector(5, [0]).save(store_dir / "up.safetensors")
    assert store.get("up").layers == [0]
    (store_dir / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(VectorFileError, match="'bad'"):
        store.get("bad")
    good, bad = store.describe()
    assert [v["id"] for v in good] == ["up"] and [b["name"] for b in bad] == ["bad"]
    assert str(store_dir) not in bad[0]["error"]
    with pytest.raises(VectorNotFound, match="no vectors directory"):
        VectorStore(None, model).get("up")
    with pytest.raises(VectorFileError, match="not a directory"):
        VectorStore(store_dir / "missing", model)


def test_store_sees_a_same_size_rewrite_that_keeps_the_mtime(store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cp -p`` over a vector keeps size and mtime; the store still loads the new bytes."""
    model, _ = make_tiny("llama")
    store = VectorStore(store_dir, model)
    path = store_dir / "up.safetensors"
    first = store.get("up")
    other = tmp_path / "other.safetensors"
    tiny_vector(9, [1, 2]).save(other)
    old = path.stat()
    assert other.stat().st_size == old.st_size
    os.utime(other, ns=(old.st_atime_ns, old.st_mtime_ns))
    shutil.copy2(other, path)  # cp -p: same inode, size and mtime
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert torch.equal(store.get("up").directions[1], tiny_vector(9, [1, 2]).directions[1])
    assert not torch.equal(store.get("up").directions[1], first.directions[1])

    # A clock too coarse to move any stamp field: the recent file is checked by its hash.
    monkeypatch.setattr(vector_store, "file_stamp", lambda stat: (1, 2, 3, 4))
    store = VectorStore(store_dir, model)
    store.get("up")
    tiny_vector(10, [1, 2]).save(path)
    assert torch.equal(store.get("up").directions[1], tiny_vector(10, [1, 2]).directions[1])


def test_store_loads_one_name_without_blocking_the_others(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = make_tiny("llama")
    tiny_vector(3, [2]).save(store_dir / "slow.safetensors")
    store = VectorStore(store_dir, model)
    inside, release, loads = threading.Event(), threading.Event(), []
    real_load = vector_store.load_vector

    def load(path: Path, *args: object, **kwargs: object) -> object:
        loads.append(path.name)
        if path.name == "slow.safetensors":
            inside.set()
            release.wait(60)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(vector_store, "load_vector", load)
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(store.get, "slow") for _ in range(2)]
        try:
            assert inside.wait(60)
            fast = pool.submit(store.get, "up")
            wait_until(fast.done, "'up' to load while 'slow' is loading", timeout=20)
            assert fast.result().layers == [1, 2]
        finally:
            release.set()
        assert [f.result(timeout=60).layers for f in slow] == [[2], [2]]
    assert sorted(loads) == ["slow.safetensors", "up.safetensors"]  # one load per name


# ----------------------------------------------------------------------------- sampling


def test_top_p_keeps_the_smallest_nucleus() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(top_p_filter(logits, 0.75))
    assert kept.tolist() == [True, True, False, False]
    assert torch.isfinite(top_p_filter(logits, 1e-6)).tolist() == [True, False, False, False]


def test_sampler_is_greedy_at_zero_and_seeded_otherwise() -> None:
    logits = torch.randn(100)
    cpu = torch.device("cpu")
    assert Sampler(SamplingParams(0.0), cpu)(logits) == int(logits.argmax())

    def draws(seed: int | None) -> list[int]:
        sampler = Sampler(SamplingParams(1.0, 1.0, seed), cpu)
        return [sampler(logits) for _ in range(20)]

    assert draws(3) == draws(3) and draws(-1) == draws(-1)  # negative seeds fold into torch's range
    assert draws(3) != draws(4)
    assert len(set(draws(None))) > 1


# ----------------------------------------------------------------------------- per-row deltas


def test_row_deltas_equal_the_library_sum_and_split_by_positions() -> None:
    a, b = tiny_vector(1, [1, 2]), tiny_vector(2, [1])
    deltas = build_row_deltas([Term(a, 2.0, (1, 2)), Term(b, -3.0, (1,), "generated")])
    ops, _ = build_ops(make_tiny("llama")[0], [(a, 2.0), (b, -3.0)])
    ref = {layer: op._delta.value for layer, op in ops.items()}  # the tensors st.steer adds
    assert torch.equal(deltas.generated[("block_output", 1)], ref[1])
    assert torch.equal(deltas.generated[("block_output", 2)], ref[2])
    assert torch.equal(deltas.prompt[("block_output", 1)], 2.0 * a.directions[1])
    assert not build_row_deltas([]) and not NO_STEERING
    only_prompt = build_row_deltas([Term(a, 1.0, (2,), "prompt")])
    assert list(only_prompt.prompt) == [("block_output", 2)] and not only_prompt.generated


def test_row_steering_adds_each_rows_delta_and_zero_rows_are_exact() -> None:
    model, tok = make_tiny("llama")
    baseline = hook_count(model)
    vec = tiny_vector(1, [1])
    ids = torch.tensor([tok("Hello there")["input_ids"]] * 2)
    with torch.no_grad():
        plain = model(ids).logits
        with patch(model, {1: AddOp(3.0 * vec.directions[1])}):  # the hook path st.steer takes
            steered = model(ids).logits
        rows = RowSteering(model)
        deltas = build_row_deltas([Term(vec, 3.0, (1,))])
        rows.set_rows([NO_STEERING, deltas], "prompt", ids=[1, 2], width=32, placement=layer_placement(model))
        mixed = model(ids).logits
        rows.disarm()
        after = model(ids).logits
        rows.remove()
    assert torch.equal(mixed[0], plain[0])  # zero delta: bit-for-bit unchanged
    assert torch.equal(mixed[1], steered[1])
    assert torch.equal(after, plain)  # a disarmed table steers nothing
    assert rows.hooked == [] and hook_count(model) == baseline


def test_row_ablation_projects_each_rows_span_out_and_zero_rows_are_exact() -> None:
    model, tok = make_tiny("llama")
    a, b = tiny_vector(1, [1]), tiny_vector(2, [1])
    ids = torch.tensor([tok("Hello there")["input_ids"]] * 3)
    one = build_row_deltas([Term(a, 1.0, (1,), mode="ablate")])
    two = build_row_deltas([Term(a, 1.0, (1,), mode="ablate"), Term(b, 1.0, (1,), mode="ablate"), Term(b, 2.0, (1,))])
    assert torch.equal(two.ablate_prompt[("block_output", 1)], span_basis(torch.stack([a.directions[1], b.directions[1]])))
    assert not one.prompt and one and one.keys == {("block_output", 1)}
    with torch.no_grad():
        plain = model(ids).logits
        with patch(model, {1: AblateOp(a.directions[1])}):
            ref_one = model(ids).logits
        with patch(model, {1: AblateOp(torch.stack([a.directions[1], b.directions[1]]))}), patch(model, {1: AddOp(2.0 * b.directions[1])}):
            ref_two = model(ids).logits  # hooks run in registration order: ablate, then add
        rows = RowSteering(model)
        rows.set_rows([NO_STEERING, one, two], "prompt", ids=[1, 2, 3], width=32, placement=layer_placement(model))
        assert rows.ablation[("block_output", 1)].shape == (3, 2, 32)  # ranks 0, 1, 2 padded to 2
        mixed = model(ids).logits
        rows.remove()
    assert torch.equal(mixed[0], plain[0])  # a zero basis projects out nothing, bit for bit
    torch.testing.assert_close(mixed[1], ref_one[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[2], ref_two[2], rtol=0, atol=1e-5)
    assert not torch.allclose(mixed[1], plain[1], atol=1e-3) and not torch.allclose(mixed[2], mixed[1], atol=1e-3)


# ----------------------------------------------------------------------------- config and CLI


def test_server_config_rejects_impossible_limits() -> None:
    with pytest.raises(ConfigError, match="max_batch_size=0"):
        ServerConfig(max_batch_size=0)
    with pytest.raises(ConfigError, match="max_coef"):
        ServerConfig(max_coef=float("inf"))
    with pytest.raises(ConfigError, match="default_temperature"):
        ServerConfig(default_temperature=3.0)


def test_serve_yaml_maps_onto_server_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_config("serve", [f"vectors={tmp_path}", "max_batch_size=4", "api_key=sk-1", "served_model_name=smol"])
    config = server_config(cfg)
    assert (config.model_name, config.vectors_dir, config.max_batch_size, config.resolved_api_key()) == ("smol", tmp_path, 4, "sk-1")
    assert cfg.host == "127.0.0.1"
    default = server_config(compose_config("serve", []))
    monkeypatch.setenv("STEERING_API_KEY", "from-env")
    assert default.model_name == "smollm2-135m-instruct" and default.resolved_api_key() == "from-env"
    with pytest.raises(ValueError, match="not a directory"):
        server_config(compose_config("serve", [f"vectors={tmp_path / 'nope'}"]))
    assert "steering serve model=" in USAGE


def test_serve_defaults_live_in_one_schema() -> None:
    """conf/serve.yaml sets no value: every limit's default is ServerConfig's, typed by the serve schema."""
    import dataclasses

    from hydra.errors import ConfigCompositionException

    from steering.experiments.values import ValueCheckError
    from steering.hooks import SteeringError

    cfg = compose_config("serve", [])
    fields = {f.name: f.default for f in dataclasses.fields(ServerConfig) if f.name not in ("model_name", "vectors_dir", "api_key")}
    assert {k: cfg[k] for k in fields} == fields
    assert (cfg.model, cfg.host, cfg.port, cfg.torch_threads) == ("smollm2-135m-instruct", "127.0.0.1", 8000, "auto")
    assert compose_config("serve", ["max_coef=7", "torch_threads=2"]).max_coef == 7.0
    with pytest.raises((ValueCheckError, ConfigCompositionException)):
        compose_config("serve", ["max_batch_size=many"])
    with pytest.raises(ValueCheckError, match="max_batchsize"):
        compose_config("serve", ["max_batchsize=4"])
    assert issubclass(ConfigError, SteeringError)


def test_every_serve_key_can_be_set_from_the_command_line() -> None:
    """Each `ServeConf` field, given a value other than its default as ``key=value``, composes to that value.

    ``vllm_args={...}`` was refused once: Hydra keeps a typed dict node closed, so no key could be set in it.
    """
    import dataclasses
    import typing

    from steering.experiments.serve import ServeConf

    # Fields whose type says too little to pick a value (`Any`).
    open_values: dict[str, Any] = {"torch_threads": 3, "vllm_args": {"enforce_eager": True, "max_model_len": 1024}}
    hints = typing.get_type_hints(ServeConf)

    def sample(field: dataclasses.Field[Any]) -> Any:
        default = field.default if field.default is not dataclasses.MISSING else None
        kinds = set(typing.get_args(hints[field.name])) or {hints[field.name]}
        if field.name in open_values:
            return open_values[field.name]
        if bool in kinds:
            return not default
        if int in kinds:
            return (default or 0) + 1
        if float in kinds:
            return (default or 1.0) / 2
        assert str in kinds, f"{field.name}: {hints[field.name]} (add a sample value for this type)"
        return f"{default}-other"

    def text(value: Any) -> str:
        if isinstance(value, dict):
            return "{" + ",".join(f"{k}:{text(v)}" for k, v in value.items()) + "}"
        return str(value).lower() if isinstance(value, bool) else str(value)

    for field in dataclasses.fields(ServeConf):
        value = sample(field)
        cfg = compose_config("serve", [f"{field.name}={text(value)}"])
        got = cfg[field.name]
        assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == value, field.name
    with pytest.raises(ValueError, match=r"vllm_args=5: expected \{name:value"):
        compose_config("serve", ["vllm_args=5"])


def test_auto_torch_threads_leave_the_busy_cores_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    for load, threads in ((0.0, 4), (1.5, 2), (3.9, 1), (12.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        chosen, why = choose_torch_threads("auto")
        assert chosen == threads and f"load {load:.1f}" in why
    assert choose_torch_threads(3) == (3, "torch_threads")
    assert choose_torch_threads(None) == (4, "torch's default")
    for bad in (0, -2, "many", True):
        with pytest.raises(ValueError, match="torch_threads"):
            choose_torch_threads(bad)
    assert compose_config("serve", []).torch_threads == "auto"
