"""The level schedule and the batched DAGNN against a slow per-node reference."""

from __future__ import annotations

import pytest
import torch

from smoelib.policy.dagnn import DAGNN, DAGNNSweep, NodeMLPEncoder
from smoelib.policy.schedule import (
    GENERAL,
    ONE_DST,
    ONE_PRED,
    ONE_SRC,
    SOURCES,
    build_schedule,
)

# 0,1 sources; 2,3 each fed by 0 and 1 (a GENERAL level); 4 fed by 2, 3 and 1 (ONE_DST);
# 5 and 6 fed by 4 (ONE_SRC: one predecessor for the level); 7 fed by 5, 8 by 6 (ONE_PRED)
EDGES = torch.tensor([[0, 1, 0, 1, 2, 3, 1, 4, 4, 5, 6],
                      [2, 2, 3, 3, 4, 4, 4, 5, 6, 7, 8]])
N = 9


def test_schedule_levels_and_kinds():
    s = build_schedule(EDGES, N)
    assert [p.nodes.tolist() for p in s.forward] == [[0, 1], [2, 3], [4], [5, 6], [7, 8]]
    assert [p.kind for p in s.forward] == [SOURCES, GENERAL, ONE_DST, ONE_SRC, ONE_PRED]
    assert s.sinks.tolist() == [7, 8] and s.sources.tolist() == [0, 1]
    # reversed: 7, 8 first; 5, 6 (ONE_PRED); 4 (two successors, ONE_DST); then 2, 3 (ONE_SRC:
    # each feeds 4 only); 0 and 1 last (1 also feeds 4: GENERAL)
    assert [p.nodes.tolist() for p in s.reverse] == [[7, 8], [5, 6], [4], [2, 3], [0, 1]]
    assert [p.kind for p in s.reverse] == [SOURCES, ONE_PRED, ONE_DST, ONE_SRC, GENERAL]


def test_levels_know_when_they_read_exactly_the_last_one():
    s = build_schedule(EDGES, N)
    # forward: 2, 3 and 4 also read the sources; 5, 6 read 4 alone; 7, 8 read 5, 6 in order
    assert [p.reads_prev for p in s.forward] == [False, False, False, True, True]
    # reverse: 0 and 1 read 2, 3 and also 4
    assert [p.reads_prev for p in s.reverse] == [False, True, True, True, False]


def test_schedule_refuses_a_cycle():
    with pytest.raises(ValueError, match="cycle"):
        build_schedule(torch.tensor([[0, 1], [1, 0]]), 2)


def reference_sweep(layer: DAGNNSweep, h_prev: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Thost & Chen's update, one node at a time in topological order (batch of 1)."""
    n, c = h_prev.shape[1], h_prev.shape[2]
    preds = {v: [int(u) for u, w in edges.t().tolist() if w == v] for v in range(n)}
    done: dict[int, torch.Tensor] = {}
    while len(done) < n:
        for v in range(n):
            if v in done or any(u not in done for u in preds[v]):
                continue
            if preds[v]:
                hu = torch.stack([done[u] for u in preds[v]])  # (|P|, C)
                score = torch.stack([layer.att_query(h_prev[0, v]) + layer.att_key(x)
                                     for x in hu]).squeeze(-1)
                msg = (torch.softmax(score, 0).unsqueeze(-1) * hu).sum(0)
            else:
                msg = torch.zeros(c)
            done[v] = layer.gru(h_prev[0, v].unsqueeze(0), msg.unsqueeze(0))[0]
    return torch.stack([done[v] for v in range(n)]).unsqueeze(0)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_batched_sweep_equals_the_per_node_reference(direction):
    torch.manual_seed(0)
    layer = DAGNNSweep(8)
    layer.reset_parameters(torch.Generator().manual_seed(3))
    s = build_schedule(EDGES, N)
    h_prev = torch.randn(1, N, 8)
    edges = EDGES if direction == "forward" else EDGES.flip(0)
    fast = layer(h_prev, getattr(s, direction))
    slow = reference_sweep(layer, h_prev, edges)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_batch_rows_are_independent():
    layer = DAGNNSweep(4)
    s = build_schedule(EDGES, N)
    h = torch.randn(3, N, 4)
    together = layer(h, s.forward)
    alone = torch.cat([layer(h[i:i + 1], s.forward) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_encoder_shapes_and_gradients(bidirectional):
    enc = DAGNN(5, 6, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(2, N, 5)
    nodes, graph = enc(x, build_schedule(EDGES, N))
    assert nodes.shape == (2, N, 6) and graph.shape == (2, 6)
    (nodes.sum() + graph.sum()).backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_reverse_pass_lets_a_source_see_a_sink():
    enc = DAGNN(3, 4, num_layers=1, bidirectional=True)
    s = build_schedule(EDGES, N)
    x = torch.zeros(1, N, 3)
    y = x.clone()
    y[0, 8] = 1.0  # change only a sink
    assert not torch.allclose(enc(x, s)[0][0, 0], enc(y, s)[0][0, 0])
    fwd_only = DAGNN(3, 4, num_layers=1, bidirectional=False)
    assert torch.allclose(fwd_only(x, s)[0][0, 0], fwd_only(y, s)[0][0, 0])


def test_mlp_ablation_shapes():
    nodes, graph = NodeMLPEncoder(5, 6)(torch.randn(2, N, 5), build_schedule(EDGES, N))
    assert nodes.shape == (2, N, 6) and graph.shape == (2, 6)
