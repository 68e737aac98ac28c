"""Layer discovery and index resolution on every supported architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import make_tiny
from torch import nn

from steering import hooks

EXPECTED_PATHS = {
    "llama": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "mistral": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "phi3": "model.layers",
    "opt": "model.decoder.layers",
}


@pytest.mark.parametrize("arch", sorted(EXPECTED_PATHS))
def test_discovers_decoder_layers(arch: str) -> None:
    model, _ = make_tiny(arch)
    assert hooks.decoder_layers_path(model) == EXPECTED_PATHS[arch]
    assert len(hooks.decoder_layers(model)) == model.config.get_text_config().num_hidden_layers
    stack = hooks.decoder_stack(model)
    assert any(child is hooks.decoder_layers(model) for child in stack.children())


def test_resolve_layers_normalises_and_sorts(llama) -> None:
    model, _ = llama
    assert hooks.resolve_layers(model, [-1, 0, 2, 0]) == [0, 2]
    assert hooks.resolve_layers(model, None) == [0, 1, 2]
    assert hooks.resolve_layers(model, -2) == [1]
    assert hooks.resolve_layers(model, range(2)) == [0, 1]


@pytest.mark.parametrize("bad", [3, -4, 100])
def test_layer_out_of_range_names_index_and_range(llama, bad: int) -> None:
    model, _ = llama
    with pytest.raises(hooks.LayerError, match=rf"layer {bad} is out of range .*3 layers .*0\.\.2"):
        hooks.resolve_layers(model, [0, bad])


def test_non_integer_layer(llama) -> None:
    with pytest.raises(hooks.LayerError, match="'abc' is not an integer"):
        hooks.resolve_layers(llama[0], ["abc"])


class Opaque(nn.Module):
    """A model whose blocks sit where no rule looks."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])


def test_discovery_failure_says_how_to_fix() -> None:
    with pytest.raises(hooks.LayerError, match=r"Opaque.*set_decoder_layers\(model, 'path.to.layers'\)"):
        hooks.decoder_layers(Opaque())


def test_explicit_layers_path_override() -> None:
    model = Opaque()
    hooks.set_decoder_layers(model, "backbone.blocks")
    assert hooks.decoder_layers(model) is model.backbone.blocks
    assert hooks.decoder_stack(model) is model.backbone
    with pytest.raises(hooks.LayerError, match="not an nn.ModuleList"):
        hooks.set_decoder_layers(model, "backbone")


def test_unknown_site(llama) -> None:
    with pytest.raises(hooks.LayerError, match="unknown site 'resid'.*block_output"):
        hooks.site_module(llama[0], 0, "resid")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("12", r"layers='12' is a string"),  # not layers [1, 2]
        ("1", r"layers='1' is a string"),
        ([True], r"layer True is not an integer"),  # not layer 1
        ([12.7], r"layer 12.7 is not an integer"),  # not layer 12
        ([1.0], r"layer 1.0 is not an integer"),
        (2.0, r"layers=2.0 is not an integer or a list of integers"),
        (True, r"layers=True is not an integer or a list of integers"),
        ([np.bool_(True)], r"is not an integer"),
        ([torch.tensor(True)], r"is not an integer"),
    ],
)
def test_layers_that_are_not_integers_are_refused_not_converted(llama, spec, message) -> None:
    with pytest.raises(hooks.LayerError, match=message):
        hooks.resolve_layers(llama[0], spec)


def test_integer_types_and_negative_indices_are_accepted(llama) -> None:
    model, _ = llama
    assert hooks.resolve_layers(model, [np.int64(-1), np.int32(0)]) == [0, 2]
    assert hooks.resolve_layers(model, np.int64(1)) == [1]
    assert hooks.resolve_layers(model, np.array([0, -2])) == [0, 1]
    assert hooks.resolve_layers(model, torch.tensor(-1)) == [2]
    assert hooks.normalize_layers([-1], 30) == [29]
