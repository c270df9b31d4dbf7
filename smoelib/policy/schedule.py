"""Topological generations of a DAG as index tensors, built once per DAG.

The DAGNN sweeps a DAG one generation (depth level) at a time: every node of a level has all its
predecessors in earlier levels, so one batched step updates the whole level. This module turns an
``edge_index`` into per-level index tensors for both directions, and classifies each level so the
encoder can take a cheaper path where the level's shape allows it:

- ``SOURCES``: level 0, no incoming edges (the GRU hidden state is zero);
- ``ONE_PRED``: every node has exactly one predecessor, so attention over predecessors is the
  identity and the message is the predecessor's state;
- ``ONE_SRC``: ``ONE_PRED`` with the same predecessor for every node (the experts of an MoE
  layer fed by one attention segment), so the message and its hidden gates are computed once
  and broadcast over the level;
- ``ONE_DST``: one node with many predecessors (the segment after an MoE layer), so the
  per-destination softmax is a plain softmax;
- ``GENERAL``: anything else (scatter softmax over destinations).

A level whose predecessors are exactly the previous level's nodes, in the order it reads them
(``reads_prev``: every level of a chain of MoE layers), takes the previous level's output as it
is rather than gathering it from the sweep's state.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["LevelPlan", "DagSchedule", "build_schedule", "SOURCES", "ONE_PRED", "ONE_SRC",
           "ONE_DST", "GENERAL"]

SOURCES, ONE_PRED, ONE_DST, GENERAL, ONE_SRC = 0, 1, 2, 3, 4


class LevelPlan(NamedTuple):
    """One topological generation.

    Shapes:
        nodes: ``(n_d,)`` node indices of the level;
        src: ``(e_d,)`` predecessor of each incoming edge (for ONE_PRED and ONE_SRC aligned
            with ``nodes``);
        dst: ``(e_d,)`` global index of each edge's destination;
        dst_local: ``(e_d,)`` position of each edge's destination inside ``nodes``;
        reads_prev: ``src`` is exactly the previous level's ``nodes`` (for ONE_SRC: that level
            is the one predecessor), so the predecessor states are that level's output.
    """

    kind: int
    nodes: Tensor
    src: Tensor
    dst: Tensor
    dst_local: Tensor
    reads_prev: bool


class DagSchedule(NamedTuple):
    """Both sweeps of one DAG.

    Shapes: ``edge_index`` ``(2, |E|)``; ``sinks`` and ``sources`` index vectors.
    """

    num_nodes: int
    edge_index: Tensor
    forward: tuple[LevelPlan, ...]
    reverse: tuple[LevelPlan, ...]
    sources: Tensor
    sinks: Tensor


def build_schedule(edge_index: Tensor, num_nodes: int) -> DagSchedule:
    """Levels of ``edge_index`` (row 0 source, row 1 destination) and of its reverse.

    Raises:
        ValueError: the graph has a cycle, or an index is out of range.
    """
    ei = edge_index.detach().cpu().numpy().astype(np.int64)
    if ei.size and (ei.min() < 0 or ei.max() >= num_nodes):
        raise ValueError("edge_index refers to a node outside 0..num_nodes-1")
    fwd = _plans(ei[0], ei[1], num_nodes)
    rev = _plans(ei[1], ei[0], num_nodes)
    out_deg = np.bincount(ei[0], minlength=num_nodes)
    in_deg = np.bincount(ei[1], minlength=num_nodes)
    return DagSchedule(num_nodes=num_nodes, edge_index=torch.as_tensor(ei),
                       forward=fwd, reverse=rev,
                       sources=torch.as_tensor(np.flatnonzero(in_deg == 0)),
                       sinks=torch.as_tensor(np.flatnonzero(out_deg == 0)))


def _levels(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """Depth of every node: 0 for sources, else 1 + the deepest predecessor (Kahn by level)."""
    order = np.argsort(src, kind="stable")
    s_sorted, d_sorted = src[order], dst[order]
    starts = np.searchsorted(s_sorted, np.arange(n + 1))
    indeg = np.bincount(dst, minlength=n)
    level = np.full(n, -1, dtype=np.int64)
    frontier = np.flatnonzero(indeg == 0)
    depth = 0
    while frontier.size:
        level[frontier] = depth
        # every edge leaving the frontier: concatenate the CSR slices of its nodes
        heads = np.concatenate([d_sorted[starts[v]:starts[v + 1]] for v in frontier]) \
            if frontier.size else np.empty(0, np.int64)
        np.subtract.at(indeg, heads, 1)
        frontier = np.unique(heads[indeg[heads] == 0])
        depth += 1
    if (level < 0).any():
        raise ValueError("the graph has a cycle: no topological generations")
    return level


def _plans(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[LevelPlan, ...]:
    level = _levels(src, dst, n)
    edge_level = level[dst]
    edge_order = np.argsort(edge_level, kind="stable")
    plans: list[LevelPlan] = []
    before = np.empty(0, np.int64)  # the previous level's nodes
    for d in range(int(level.max()) + 1 if n else 0):
        nodes = np.flatnonzero(level == d)
        sel = edge_order[np.searchsorted(edge_level[edge_order], d, side="left"):
                         np.searchsorted(edge_level[edge_order], d, side="right")]
        e_src, e_dst = src[sel], dst[sel]
        local = np.searchsorted(nodes, e_dst)  # nodes is sorted
        if d == 0:
            kind = SOURCES
        elif e_src.size == nodes.size:  # one edge per node (every node has >= 1 predecessor)
            kind = ONE_SRC if nodes.size > 1 and (e_src == e_src[0]).all() else ONE_PRED
            by_node = np.argsort(local, kind="stable")
            e_src, e_dst, local = e_src[by_node], e_dst[by_node], local[by_node]
        elif nodes.size == 1:
            kind = ONE_DST
        else:
            kind = GENERAL
        reads = e_src[:1] if kind == ONE_SRC else e_src
        reads_prev = d > 0 and np.array_equal(reads, before)
        plans.append(LevelPlan(kind=kind, nodes=torch.as_tensor(nodes),
                               src=torch.as_tensor(e_src), dst=torch.as_tensor(e_dst),
                               dst_local=torch.as_tensor(local), reads_prev=bool(reads_prev)))
        before = nodes
    return tuple(plans)
