"""The ``smoe``, ``smoe-mlp`` and ``smoe-independent`` deciders: a trained
:class:`~smoelib.policy.agent.SMoEAgent` loaded from its checkpoint and run once per control
tick (features -> greedy actions -> decision), with the greedy path traced once per DAG.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from smoelib.core.decisions import PipelineDecision
from smoelib.errors import ConfigError, Problem
from smoelib.policy.agent import SMoEAgent, actions_to_decision
from smoelib.policy.base import register
from smoelib.policy.checkpoint import load_checkpoint
from smoelib.policy.features import PolicyInput, TrendState, build_features
from smoelib.policy.pointer import Actions

__all__ = ["SMoEDecider", "bundled_path", "trace_greedy", "PRETRAINED", "BUNDLED"]

log = logging.getLogger(__name__)

PRETRAINED = Path(__file__).with_name("pretrained")
BUNDLED = PRETRAINED / "default.pt"
"""the bundled ``smoe`` policy; the ablations ship as ``pretrained/<name>.pt``"""


def bundled_path(architecture: str, folder: str | Path = "") -> Path:
    """The checkpoint a registry name loads when ``policy.checkpoint`` is empty: its file in
    ``folder`` (``policy.pretrained``), or in the bundled folder when that is empty."""
    return (Path(folder) if folder else PRETRAINED) / (
        BUNDLED.name if architecture == "smoe" else f"{architecture}.pt")


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
