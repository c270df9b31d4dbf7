"""DAGNN encoder (Thost & Chen, ICLR 2021, arXiv 2101.07965) and its no-graph ablation.

A DAGNN layer updates nodes in topological order, so a node aggregates its predecessors'
*current-layer* states:

    m_v = sum_{u in P(v)} alpha_vu h_u^l,   alpha_vu = softmax_u( w_q . h_v^{l-1} + w_k . h_u^l )
    h_v^l = GRUCell(input = h_v^{l-1}, hidden = m_v)          (m_v = 0 for source nodes)

Nodes are processed one topological generation at a time (:mod:`smoelib.policy.schedule`): one
batched step per depth level, with gathers and ``index_add_`` scatters, never a Python loop per
node. A second, separate stack sweeps the reversed DAG, so an expert also sees the congestion
downstream of it. The readout concatenates every layer's states (the DAGNN readout), projects them
to the node embedding, and max-pools the forward states over the sinks and the reverse states
over the sources into a graph embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoelib.policy.heads import reset_linears
from smoelib.policy.schedule import (
    ONE_DST,
    ONE_PRED,
    ONE_SRC,
    SOURCES,
    DagSchedule,
    LevelPlan,
)

__all__ = ["DAGNNSweep", "DAGNN", "NodeMLPEncoder"]


class DAGNNSweep(nn.Module):
    """One DAGNN layer in one direction: attention over predecessors, GRU combine.

    Args:
        channels (int): width of the node states (input and output).

    Shapes:
        - **input:** previous-layer states ``(B, N, channels)``, the levels of one direction
        - **output:** this layer's states ``(B, N, channels)``
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.att_query = nn.Linear(channels, 1, bias=False)
        self.att_key = nn.Linear(channels, 1)
        self.gru = nn.GRUCell(channels, channels)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        reset_linears(self, generator)

    def forward(self, h_prev: Tensor, levels: tuple[LevelPlan, ...]) -> Tensor:
        b, n, c = h_prev.shape
        gru = self.gru
        # the GRU's input side and the attention query depend only on the previous layer:
        # computed for every node at once, so a level step only does the hidden side
        gates_in = F.linear(h_prev, gru.weight_ih, gru.bias_ih)  # (B, N, 3C)
        query = self.att_query(h_prev).squeeze(-1)  # (B, N): w_q . h_v^{l-1}
        w_key, b_key = self.att_key.weight[0], self.att_key.bias  # (C,), (1,)
        w_hh, b_hh = gru.weight_hh.t(), gru.bias_hh  # (C, 3C), (3C,)
        h = h_prev.new_zeros(b, n, c)  # filled level by level (in place: a level reads only
        # earlier levels, and index_select's backward needs no saved values)
        out = h_prev  # the previous level's output (unread before the first level)
        for plan in levels:
            n_d = plan.nodes.shape[0]
            gi = gates_in.index_select(1, plan.nodes)  # (B, n_d, 3C)
            if plan.kind == SOURCES:
                out = gru_update(gi, b_hh, None)
            else:
                if plan.reads_prev:  # the predecessors are the previous level, in order
                    hs = out
                elif plan.kind == ONE_SRC:  # (B, 1, C): one message, broadcast over the level
                    hs = h.index_select(1, plan.src[:1])
                else:
                    hs = h.index_select(1, plan.src)  # (B, e_d, C): predecessor states
                if plan.kind in (ONE_SRC, ONE_PRED):  # softmax over one edge is 1
                    msg = hs
                else:
                    score = query.index_select(1, plan.dst) + (hs * w_key).sum(-1) + b_key
                    if plan.kind == ONE_DST:  # (B, e_d) -> (B, 1, C)
                        msg = torch.bmm(torch.softmax(score, 1).unsqueeze(1), hs)
                    else:  # GENERAL: several destinations, several edges each
                        alpha = scatter_softmax(score, plan.dst_local, n_d)  # (B, e_d)
                        msg = hs.new_zeros(b, n_d, c).index_add_(
                            1, plan.dst_local, alpha.unsqueeze(-1) * hs)  # (B, n_d, C)
                m_d = msg.shape[1]  # n_d, or 1 for ONE_SRC (gru_update broadcasts it)
                gh = torch.addmm(b_hh, msg.reshape(b * m_d, c), w_hh).view(b, m_d, 3 * c)
                out = gru_update(gi, gh, msg)  # (B, n_d, C)
            h.index_copy_(1, plan.nodes, out)
        return h


def gru_update(gi: Tensor, gh: Tensor, hidden: Tensor | None) -> Tensor:
    """``torch.nn.GRUCell``'s update from precomputed input and hidden gate pre-activations.

    Shapes: ``gi``, ``gh`` ``(*, 3C)`` (``gh`` may broadcast), ``hidden`` ``(*, C)`` or None
    for a zero state -> ``(*, C)``.
    """
    c = gi.shape[-1] // 3
    gi_rz, gi_n = gi.split((2 * c, c), -1)
    gh_rz, gh_n = gh.split((2 * c, c), -1)
    r, z = torch.sigmoid(gi_rz + gh_rz).chunk(2, -1)  # (*, C) each: reset and update gates
    n = torch.tanh(torch.addcmul(gi_n, r, gh_n))  # (*, C)
    return n * (1.0 - z) if hidden is None else torch.lerp(n, hidden, z)


def scatter_softmax(score: Tensor, index: Tensor, size: int) -> Tensor:
    """Softmax of ``score`` within each group ``index`` (PyG's ``utils.softmax``).

    Shapes: ``score`` ``(B, E)``, ``index`` ``(E,)`` in ``0..size-1`` -> ``(B, E)``.
    """
    idx = index.unsqueeze(0).expand_as(score)  # (B, E)
    top = score.new_full((score.shape[0], size), float("-inf")).scatter_reduce(
        1, idx, score, "amax", include_self=True)  # (B, size): max per group
    e = (score - top.gather(1, idx)).exp()  # (B, E)
    den = e.new_zeros(score.shape[0], size).index_add_(1, index, e)  # (B, size)
    return e / den.gather(1, idx)


class DAGNN(nn.Module):
    """The DAGNN encoder: input embedding, ``num_layers`` sweeps per direction, readout.

    Args:
        in_channels (int): node feature width.
        hidden (int): node embedding width.
        num_layers (int): DAGNN layers per direction (default: 2).
        bidirectional (bool): add a separate stack over the reversed DAG (default: True).

    Shapes:
        - **input:** node features ``(B, N, in_channels)``, a :class:`DagSchedule`
        - **output:** node embeddings ``(B, N, hidden)``, graph embedding ``(B, hidden)``
    """

    def __init__(self, in_channels: int, hidden: int, num_layers: int = 2,
                 bidirectional: bool = True):
        super().__init__()
        self.embed = nn.Linear(in_channels, hidden)
        self.forward_layers = nn.ModuleList(DAGNNSweep(hidden) for _ in range(num_layers))
        self.reverse_layers = nn.ModuleList(
            DAGNNSweep(hidden) for _ in range(num_layers if bidirectional else 0))
        width = hidden * (1 + len(self.forward_layers) + len(self.reverse_layers))
        self.project = nn.Linear(width, hidden)
        self.pool = nn.Linear(hidden * (2 if bidirectional else 1), hidden)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        reset_linears(self.embed, generator)
        for layer in (*self.forward_layers, *self.reverse_layers):
            layer.reset_parameters(generator)
        reset_linears(self.project, generator)
        reset_linears(self.pool, generator)

    def forward(self, x: Tensor, schedule: DagSchedule) -> tuple[Tensor, Tensor]:
        h0 = torch.tanh(self.embed(x))  # (B, N, H)
        states, h = [h0], h0
        for layer in self.forward_layers:
            h = layer(h, schedule.forward)  # (B, N, H)
            states.append(h)
        pooled = [h.index_select(1, schedule.sinks).amax(1)]  # (B, H): over the sinks
        h = h0
        for layer in self.reverse_layers:
            h = layer(h, schedule.reverse)
            states.append(h)
        if len(self.reverse_layers):
            pooled.append(h.index_select(1, schedule.sources).amax(1))  # (B, H)
        nodes = torch.tanh(self.project(torch.cat(states, -1)))  # (B, N, H)
        graph = torch.tanh(self.pool(torch.cat(pooled, -1)))  # (B, H)
        return nodes, graph


class NodeMLPEncoder(nn.Module):
    """The ``smoe-mlp`` ablation: each node embedded on its own features, no message passing.

    Args:
        in_channels (int): node feature width.
        hidden (int): node embedding width.

    Shapes:
        - **input:** node features ``(B, N, in_channels)``, a :class:`DagSchedule` (sinks only)
        - **output:** node embeddings ``(B, N, hidden)``, graph embedding ``(B, hidden)``
    """

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_channels, hidden), nn.Tanh(),
                                 nn.Linear(hidden, hidden), nn.Tanh())
        self.pool = nn.Linear(hidden, hidden)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        reset_linears(self, generator)

    def forward(self, x: Tensor, schedule: DagSchedule) -> tuple[Tensor, Tensor]:
        nodes = self.net(x)  # (B, N, H)
        graph = torch.tanh(self.pool(nodes.amax(1)))  # (B, H): max over every node
        return nodes, graph
