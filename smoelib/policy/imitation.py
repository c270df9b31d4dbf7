"""Behaviour cloning: a teacher's decision as the policy's :class:`Actions`, and the loss.

The warm start of training (docs/training.md): the ``queueing`` baseline decides, its decision
is turned into the action indices the agent would have had to pick, and the agent maximises their
log-probability (DAgger rounds later label the states the agent itself visits).

Labels: the replica change is the teacher's target minus the replica base of the input (the
current desired replicas, or a residual policy's plan), clipped to
``[-max_replica_step, max_replica_step]``; every other knob is the nearest choice. The pointer
needs an order, which a teacher does not have: experts are decoded biggest GPU use first (a
stable, learnable order that lets the budget state see the large demands early).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from smoelib.policy.config import PolicyConfig
from smoelib.policy.features import PolicyInput, dag_tensors
from smoelib.policy.pointer import Actions

__all__ = ["teacher_actions", "bc_loss"]

def teacher_actions(decision: Any, inp: PolicyInput, dag: Any, *, config: PolicyConfig
                    ) -> Actions:
    """The actions (batch of 1) that reproduce ``decision`` from the state ``inp`` describes.

    Shapes: ``order`` ``(1, L, steps x K)``, ``choices`` ``(1, L, E, heads)`` as the decoder
    builds them (padding slots choose index 0; order positions past a layer's experts point at
    padding slots or slot 0, which the decoder never reads).
    """
    d = dag_tensors(dag)
    n_layers, e = d.expert_pos.shape
    valid = d.expert_valid.numpy()
    current = inp.replicas[0].numpy()  # (L, E): the replica base
    heads = config.heads
    choices = np.zeros((n_layers, e, len(heads)), dtype=np.int64)
    use = np.zeros((n_layers, e))
    step = config.max_replica_step
    for li, lj in zip(*np.nonzero(valid), strict=True):
        x = decision.experts[dag.nodes[d.expert_pos[li, lj]]]
        delta = int(np.clip(round(x.replicas - current[li, lj]), -step, step))
        for k, h in enumerate(heads):
            if h == "replicas":
                choices[li, lj, k] = delta + step
            else:
                options = np.asarray(config.choices(h))
                choices[li, lj, k] = int(np.argmin(np.abs(options - getattr(x, h))))
        use[li, lj] = x.replicas * x.gpu_share
    bk = -(-e // config.decode_steps) if config.architecture != "smoe-independent" else e
    width = -(-e // bk) * bk
    order = np.zeros((n_layers, width), dtype=np.int64)
    for li in range(n_layers):
        slots = np.flatnonzero(valid[li])
        ranked = slots[np.argsort(-use[li, slots], kind="stable")]
        rest = np.flatnonzero(~valid[li])
        row = np.concatenate([ranked, rest])
        order[li, :row.size] = row
    return Actions(order=torch.as_tensor(order).unsqueeze(0),
                   choices=torch.as_tensor(choices).unsqueeze(0))


def bc_loss(log_prob: Tensor, n_experts: int) -> tuple[Tensor, Tensor]:
    """Mean negative log-likelihood per expert of the teacher's actions, over the rows the
    decoder's capacity masks allow (a masked label scores about -1e9; such rows carry no
    gradient). Returns the loss and the fraction of rows kept.

    Shapes: ``log_prob`` ``(B,)`` -> two scalars.
    """
    ok = log_prob > -1e4
    kept = ok.float().mean()
    if not ok.any():
        return log_prob.new_zeros(()), kept
    return -(log_prob[ok].mean() / max(n_experts, 1)), kept
