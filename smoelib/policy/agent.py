"""The learned policy: encoder -> pointer decoder -> actions, log-probabilities and a value; and
the ``smoe`` deciders that run it once per control tick.

Architectures (``PolicyConfig.architecture``), all one agent class:

- ``smoe``: DAGNN encoder + pointer decoder with a GPU budget state;
- ``smoe-mlp``: per-node MLP instead of the DAGNN (no message passing);
- ``smoe-independent``: DAGNN, every expert decoded at once (no pointer, no order).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from smoelib.decisions import ExpertDecision, PipelineDecision
from smoelib.errors import ConfigError, Problem
from smoelib.policy.base import register
from smoelib.policy.config import PolicyConfig
from smoelib.policy.dagnn import DAGNN, NodeMLPEncoder
from smoelib.policy.features import (
    FEATURE_NAMES,
    PolicyInput,
    TrendState,
    build_features,
    dag_tensors,
)
from smoelib.policy.heads import reset_linears
from smoelib.policy.pointer import Actions, PointerDecoder

__all__ = ["AgentOutput", "SMoEAgent", "SMoEDecider", "actions_to_decision", "bundled_path",
           "trace_greedy"]

log = logging.getLogger(__name__)

PRETRAINED = Path(__file__).with_name("pretrained")
BUNDLED = PRETRAINED / "default.pt"
"""the bundled ``smoe`` policy; the ablations ship as ``pretrained/<name>.pt``"""


def bundled_path(architecture: str, folder: str | Path = "") -> Path:
    """The checkpoint a registry name loads when ``policy.checkpoint`` is empty: its file in
    ``folder`` (``policy.pretrained``), or in the bundled folder when that is empty."""
    return (Path(folder) if folder else PRETRAINED) / (
        BUNDLED.name if architecture == "smoe" else f"{architecture}.pt")


class AgentOutput(NamedTuple):
    """Shapes: ``log_prob``, ``entropy``, ``value`` ``(B,)``."""

    actions: Actions
    log_prob: Tensor
    entropy: Tensor
    value: Tensor


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
        f, h = len(FEATURE_NAMES), config.hidden
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
                           self._value(layers, graph))

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
    nodes = dag.nodes
    experts = {}
    for li, lj in zip(*np.nonzero(d.expert_valid.numpy()), strict=True):
        experts[nodes[d.expert_pos[li, lj]]] = ExpertDecision(
            replicas=int(round(target[li, lj])), cpu=float(values["cpu"][li, lj]),
            memory_mb=int(values["memory_mb"][li, lj]), gpu_share=float(share[li, lj]),
            concurrency=int(values["concurrency"][li, lj]))
    return PipelineDecision(pipeline=dag.name, updated_at=updated_at,
                            experts=MappingProxyType(experts))


class _Greedy(nn.Module):
    """The greedy decide path of one DAG as a function of the tick's tensors only (the DAG's
    schedule, expert slots and padding are fixed), so that it can be traced."""

    def __init__(self, agent: SMoEAgent, inp: PolicyInput):
        super().__init__()
        self.agent, self.inp = agent, inp

    def forward(self, x: Tensor, replicas: Tensor, choice_mask: Tensor, budget: Tensor
                ) -> tuple[Tensor, Tensor]:
        inp = self.inp._replace(x=x, replicas=replicas, choice_mask=choice_mask, budget=budget)
        experts, layers, graph = self.agent.encode(inp)
        out = self.agent.decoder(experts, inp.expert_valid, layers, graph, replicas=replicas,
                                 choice_mask=choice_mask, budget=budget, score=False)
        return out.actions.order, out.actions.choices


def trace_greedy(agent: SMoEAgent, inp: PolicyInput, *, name: str = "pipeline"):
    """The agent's greedy decide path for ``inp``'s DAG, traced once into a TorchScript graph:
    the same aten ops in the same order (so the same actions, bit for bit) without Python's
    per-op overhead, about half the decision time on the example pipelines (BENCHMARKS.md).
    Every shape is fixed by the DAG, and no branch depends on a tensor's value, so the trace
    holds for every tick of that DAG. Returns a callable ``(x, replicas, choice_mask, budget)
    -> (order, choices)``, or None where this torch cannot trace (the decider stays eager)."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer's notes on shapes read as Python ints (fixed per DAG) and on its own
            # deprecation in favour of torch.export, whose programs run op by op in Python
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_Greedy(agent, inp), (inp.x, inp.replicas,
                                                           inp.choice_mask, inp.budget),
                                     check_trace=False)
    except (AttributeError, RuntimeError) as err:  # torch.jit gone or an op it cannot record
        log.warning("%s: deciding without a traced graph (%s)", name, str(err).splitlines()[0])
        return None
    log.info("%s: traced the decide path in %.1f s", name, time.perf_counter() - start)
    return traced


class SMoEDecider:
    """Runs an :class:`SMoEAgent` once per tick: features -> greedy (or seeded) actions ->
    decision. Trend state is carried between ticks and cleared by :meth:`reset`.

    Greedy deciding runs a graph traced at the first tick (:func:`trace_greedy`); it reads
    the agent's parameters at every call, so it follows later changes to their values."""

    def __init__(self, *, dag: Any, agent: SMoEAgent, gpus: float, sample: bool = False):
        self.dag, self.agent, self.gpus, self.sample = dag, agent.eval(), gpus, sample
        self.generator = torch.Generator()
        self.trend: TrendState | None = None
        self._greedy: Any = None
        self._traced = False

    def reset(self, seed: int) -> None:
        """Clear the load trends; seed the sampler (used only with ``sample=True``)."""
        self.generator.manual_seed(seed)
        self.trend = None

    def decide(self, observation: Any) -> PipelineDecision:
        cfg = self.agent.config
        inp, self.trend = build_features(observation, self.dag, config=cfg, gpus=self.gpus,
                                         trend=self.trend)
        if not self.sample and not self._traced:
            self._greedy, self._traced = trace_greedy(self.agent, inp, name=self.dag.name), True
        with torch.inference_mode():
            if self._greedy is not None:  # traced only for greedy deciding
                actions = Actions(*self._greedy(inp.x, inp.replicas, inp.choice_mask,
                                                inp.budget))
            else:
                actions = self.agent(inp, generator=self.generator if self.sample else None,
                                     score=False).actions
        return actions_to_decision(actions, inp, self.dag, config=cfg,
                                   updated_at=float(observation.time_s))


def _factory(architecture: str):
    def make(*, dag: Any, settings: Any) -> SMoEDecider:
        from smoelib.policy.checkpoint import load_checkpoint  # file I/O lives there

        folder = settings.policy.pretrained
        path = (Path(settings.policy.checkpoint) if settings.policy.checkpoint
                else bundled_path(architecture, folder))
        if not path.exists() and not settings.policy.checkpoint:
            where = (f"policy.pretrained has no {path.name}" if folder
                     else "no bundled default is installed")
            raise ConfigError([Problem("policy.pretrained" if folder else "policy.checkpoint",
                                       f"{architecture!r} needs a trained checkpoint and "
                                       f"{where}")], source=folder or None)
        agent = load_checkpoint(path).agent
        if agent.config.architecture != architecture:
            raise ConfigError([Problem("policy.name", f"checkpoint holds a "
                                       f"{agent.config.architecture!r} policy, not "
                                       f"{architecture!r}")], source=str(path))
        # inference threads are a process setting; the decider is built by the composition root
        torch.set_num_threads(settings.policy.torch_threads)
        return SMoEDecider(dag=dag, agent=agent, gpus=settings.cluster.gpus)
    return make


for _name in ("smoe", "smoe-mlp", "smoe-independent"):
    register(_name)(_factory(_name))
