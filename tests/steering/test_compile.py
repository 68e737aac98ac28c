"""Steering under ``torch.compile`` with a static KV cache: graph breaks and exact tokens.

Dynamo alone (``backend="eager"``) decides graph breaks, so these tests skip
inductor's code generation and stay fast on CPU. Each compares compiled
greedy generation with the same steering run eagerly.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny

import steering as st

dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402

STEPS = 6


def _setup(arch: str = "llama"):
    model, tok = make_tiny(arch)
    width = model.config.get_text_config().hidden_size
    gen = torch.Generator().manual_seed(0)
    vec = st.SteeringVector({i: torch.randn(width, generator=gen) * 3 for i in (1, 2)}, hidden_size=width, num_layers=3)
    batch = tok(["Tell me about the sea"], return_tensors="pt")
    return model, vec, batch


def _generate(model, batch):
    out = model.generate(**batch, max_new_tokens=STEPS, do_sample=False, cache_implementation="static")
    return out[:, -STEPS:]


def _steered(model, batch, vec, **kwargs):
    if not kwargs:
        return _generate(model, batch)
    with st.steer(model, vec, coef=2.0, **kwargs):
        return _generate(model, batch)


def _breaks() -> int:
    assert counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    return sum(counters["graph_break"].values())


@pytest.fixture
def fresh_dynamo():
    dynamo.reset()
    counters.clear()
    yield
    dynamo.reset()


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fold_adds_no_graph_break_and_is_seen_after_compiling(arch: str, fresh_dynamo) -> None:
    """Compile first, steer later (default dynamo config): the folded bias is guarded, so it acts."""
    model, vec, batch = _setup(arch)
    eager_plain = _generate(model, batch)
    eager_fold = _steered(model, batch, vec, backend="fold")
    assert not torch.equal(eager_plain, eager_fold)
    model.forward = torch.compile(model.forward, backend="eager")
    assert torch.equal(_generate(model, batch), eager_plain)
    assert _breaks() == 0
    assert torch.equal(_steered(model, batch, vec, backend="fold"), eager_fold)
    assert torch.equal(_generate(model, batch), eager_plain)  # restored, in the compiled model too
    assert _breaks() == 0


@torch.no_grad()
@pytest.mark.parametrize("apply_to", ["all", "generated"])
def test_hook_path_adds_no_graph_break(apply_to: str, fresh_dynamo) -> None:
    """Hooks are traced into the graph; static-cache positions stay tensor ops."""
    model, vec, batch = _setup()
    eager = _steered(model, batch, vec, backend="hook", apply_to=apply_to)
    with dynamo.config.patch(skip_nnmodule_hook_guards=False):
        model.forward = torch.compile(model.forward, backend="eager")
        assert torch.equal(_steered(model, batch, vec, backend="hook", apply_to=apply_to), eager)
    assert _breaks() == 0


def test_patch_warns_on_a_compiled_model(fresh_dynamo) -> None:
    model, vec, _ = _setup()
    model.compile(backend="eager")
    with pytest.warns(RuntimeWarning, match="skip_nnmodule_hook_guards"):
        st.attach(model, vec, backend="hook").remove()
