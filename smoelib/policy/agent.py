"""The learned policy: encoder -> pointer decoder -> actions, log-probabilities and a value.
:mod:`smoelib.policy.decider` runs it once per control tick.

Architectures (``PolicyConfig.architecture``), all one agent class:

- ``smoe``: DAGNN encoder + pointer decoder with a GPU budget state;
- ``smoe-mlp``: per-node MLP instead of the DAGNN (no message passing);
- ``smoe-independent``: DAGNN, every expert decoded at once (no pointer, no order).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from smoelib.core.decisions import ExpertTable, PipelineDecision
from smoelib.policy.config import PolicyConfig
from smoelib.policy.dagnn import DAGNN, NodeMLPEncoder
from smoelib.policy.features import (
    PolicyInput,
    dag_tensors,
    feature_names,
)
from smoelib.policy.heads import reset_linears
from smoelib.policy.pointer import Actions, PointerDecoder

__all__ = ["AgentOutput", "SMoEAgent", "actions_to_decision"]

class AgentOutput(NamedTuple):
    """Shapes: ``log_prob``, ``entropy``, ``value`` ``(B,)``; ``slot_log_prob`` ``(B, L, E)``
    per expert slot (:class:`~smoelib.policy.pointer.DecodeOutput`)."""

    actions: Actions
    log_prob: Tensor
    entropy: Tensor
    value: Tensor
    slot_log_prob: Tensor | None = None


class SMoEAgent(nn.Module):
    """Encoder, decoder and value head.

    Args:
        config (PolicyConfig): the architecture and its widths; parameters are initialised
            from ``config.seed`` (same seed, same parameters).

    Shapes:
        - **input:** a :class:`PolicyInput` with batch ``B``
        - **output:** :class:`AgentOutput`
    """

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        f, h = len(feature_names(config)), config.hidden
        self.encoder: nn.Module = (NodeMLPEncoder(f, h) if config.architecture == "smoe-mlp"
                                   else DAGNN(f, h, config.dagnn_layers, config.bidirectional))
        self.decoder = PointerDecoder(config, pointer=config.architecture != "smoe-independent")
        self.value_head = nn.Sequential(nn.Linear(2 * h, h), nn.Tanh(), nn.Linear(h, 1))
        self.reset_parameters(torch.Generator().manual_seed(config.seed))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.encoder.reset_parameters(generator)
        self.decoder.reset_parameters(generator)
        reset_linears(self.value_head[0], generator)
        reset_linears(self.value_head[2], generator, last_gain=1.0)

    def encode(self, inp: PolicyInput) -> tuple[Tensor, Tensor, Tensor]:
        """Expert embeddings ``(B, L, E, H)``, layer summaries ``(B, L, H)`` (mean over a
        layer's experts) and the graph embedding ``(B, H)``."""
        nodes, graph = self.encoder(inp.x, inp.schedule)  # (B, N, H), (B, H)
        b, h = graph.shape
        n_layers, e = inp.expert_index.shape
        experts = nodes.index_select(1, inp.expert_index.reshape(-1)).view(
            b, n_layers, e, h)  # (B, L, E, H): slot (l, j) <- node expert_index[l, j]
        w = inp.expert_valid.to(experts.dtype).unsqueeze(-1)  # (L, E, 1)
        layers = (experts * w).sum(2) / w.sum(1).clamp_min(1.0)  # (B, L, H)
        return experts, layers, graph

    def forward(self, inp: PolicyInput, *, actions: Actions | None = None,
                generator: torch.Generator | None = None, score: bool = True) -> AgentOutput:
        """Sample (``generator``), act greedily (neither), or score given ``actions``;
        ``score=False`` skips log-probabilities and entropies (zeros), for deciding."""
        experts, layers, graph = self.encode(inp)
        out = self.decoder(experts, inp.expert_valid, layers, graph, replicas=inp.replicas,
                           choice_mask=inp.choice_mask, budget=inp.budget, actions=actions,
                           generator=generator, score=score)
        return AgentOutput(out.actions, out.log_prob, out.entropy,
                           self._value(layers, graph), out.slot_log_prob)

    def value(self, inp: PolicyInput) -> Tensor:
        """The state value ``(B,)``: readout over sinks plus the mean layer summary."""
        _, layers, graph = self.encode(inp)
        return self._value(layers, graph)

    def _value(self, layers: Tensor, graph: Tensor) -> Tensor:
        return self.value_head(torch.cat([graph, layers.mean(1)], -1)).squeeze(-1)  # (B,)


def actions_to_decision(actions: Actions, inp: PolicyInput, dag: Any, *, config: PolicyConfig,
                        updated_at: float, row: int = 0) -> PipelineDecision:
    """One batch row of ``actions`` as a :class:`PipelineDecision` (every expert of ``dag``)."""
    d = dag_tensors(dag)
    choice = actions.choices[row].numpy()  # (L, E, K)
    heads = config.heads
    values = {h: np.asarray(config.choices(h))[choice[..., i]] for i, h in enumerate(heads)}
    target = np.clip(inp.replicas[row].numpy() + values["replicas"],
                     d.static["replicas_min"][d.expert_pos], d.static["replicas_max"][d.expert_pos])
    share = values.get("gpu_share", np.full(target.shape, config.fixed_gpu_share))
    at = d.expert_slots
    knobs = np.column_stack([np.rint(target[at]), values["cpu"][at], values["memory_mb"][at],
                             share[at], values["concurrency"][at]])  # rint: half to even
    return PipelineDecision(pipeline=dag.name, updated_at=updated_at,
                            experts=ExpertTable(d.expert_nodes, knobs))
