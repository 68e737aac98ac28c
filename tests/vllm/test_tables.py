"""The plugin's worker tables without vLLM: token-to-slot mapping and the op, against `hooks.AddOp`/`AblateOp`.

A stand-in layer returns ``(hidden, residual)`` as vLLM's decoder layers do;
the residual stream after it is their sum. Three requests of one flat step
(a prompt chunk, a decode token, an unsteered prefill) are steered by
payloads built exactly as the front end builds them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from steering.hooks.patch import AblateOp, AddOp
from steering.server.row_steering import Term, build_row_deltas
from steering.vectors import SteeringVector
from steering.vllm.payload import decode, encode
from steering.vllm.tables import StepTables

D = 8


class PairLayer(nn.Module):
    """Returns ``(hidden, residual)`` unchanged, like a vLLM layer whose work is done."""

    def forward(self, hidden: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        return hidden, residual


def vector(seed: int) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector({0: torch.randn(D, generator=gen), 1: torch.randn(D, generator=gen)}, hidden_size=D, num_layers=2)


def make_tables(layers: dict[int, nn.Module], static: bool = False) -> StepTables:
    return StepTables(
        layers, width=D, max_requests=4, max_tokens=16, rank=2, device=torch.device("cpu"), dtype=torch.float32, static=static
    )


def test_payload_round_trip_and_content_key() -> None:
    v = vector(0)
    deltas = build_row_deltas([Term(v, 3.0, (0, 1), "generated"), Term(vector(1), 0.0, (1,), "all", "ablate")])
    body = encode(deltas, D)
    back = decode(body)
    assert torch.equal(back.add["generated"][0], deltas.generated[("block_output", 0)].float())
    assert back.add["prompt"] == {}
    assert torch.allclose(back.ablate["prompt"][1], deltas.ablate_prompt[("block_output", 1)].float())
    assert encode(build_row_deltas([Term(v, 3.0, (0, 1), "generated")]), D)["key"] != body["key"]
    assert encode(deltas, D)["key"] == body["key"]


def test_each_token_gets_its_requests_op_by_absolute_position() -> None:
    layer = PairLayer()
    tables = make_tables({0: layer, 1: PairLayer()})
    add_all = build_row_deltas([Term(vector(0), 4.0, (0,), "all")])
    gen_only = build_row_deltas([Term(vector(1), -2.0, (0,), "generated"), Term(vector(2), 0.0, (0,), "all", "ablate")])
    payloads = [encode(add_all, D), encode(gen_only, D), None]
    # Request 0: prompt of 5, tokens 2..4 (a prefill chunk); request 1: prompt of 3, decoding at
    # position 6; request 2: unsteered, prompt tokens 0..1. Flat order as vLLM lays it out.
    req_indices = torch.tensor([0, 0, 0, 1, 2, 2])
    positions = torch.tensor([2, 3, 4, 6, 0, 1])
    tables.prepare(payloads, [5, 3, 2], req_indices, positions, total=6)
    hidden, residual = torch.randn(6, D), torch.randn(6, D)
    out, res = layer(hidden, residual)
    assert res is residual
    stream, got = hidden + residual, out + residual
    # Reference: the HF path's ops on each token's residual stream.
    ref = stream.clone()
    ref[0:3] = AddOp(add_all.prompt[("block_output", 0)])(stream[None, 0:3], None)[0]
    ablated = AblateOp(gen_only.ablate_generated[("block_output", 0)])(stream[None, 3:4], None)[0]
    ref[3:4] = AddOp(gen_only.generated[("block_output", 0)])(ablated[None], None)[0]
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.equal(got[4:], stream[4:])  # unsteered rows: exact
    # Padding beyond the step's tokens stays on the zero slot.
    assert tables.token_slot[6:].eq(0).all()


def test_unsteered_step_runs_no_op_and_slots_are_reused() -> None:
    layer = PairLayer()
    tables = make_tables({0: layer})
    payload = encode(build_row_deltas([Term(vector(0), 4.0, (0,), "all")]), D)
    one = torch.tensor([0])
    tables.prepare([payload], [1], one, torch.tensor([0]), total=1)
    first = int(tables.token_slot[0])
    tables.prepare([None], [1], one, torch.tensor([0]), total=1)
    assert tables.live[0] == (False, False) and tables.token_slot.eq(0).all()
    hidden = torch.randn(1, D)
    assert layer(hidden, hidden)[0] is hidden  # the hook returned nothing: untouched
    tables.prepare([payload], [1], one, torch.tensor([0]), total=1)
    assert int(tables.token_slot[0]) == first  # same content key, same slot, no rewrite
    # More configs than slot pairs over time: old ones are recycled, the step's own are kept.
    for seed in range(1, 12):
        p = encode(build_row_deltas([Term(vector(seed), 1.0, (0,), "all")]), D)
        tables.prepare([payload, p], [1, 1], torch.tensor([0, 1]), torch.tensor([0, 0]), total=2)
        assert int(tables.token_slot[0]) == first
    tables.remove()
    assert len(tables.group) == 0


def test_static_tables_always_run_the_op() -> None:
    layer = PairLayer()
    tables = make_tables({0: layer}, static=True)
    tables.prepare([None], [1], torch.tensor([0]), torch.tensor([0]), total=1)
    assert tables.live[0] == (True, True)
    hidden, residual = torch.randn(1, D), torch.randn(1, D)
    out, _ = layer(hidden, residual)
    assert out is not hidden and torch.equal(out, hidden)  # zero rows: an exact no-op
