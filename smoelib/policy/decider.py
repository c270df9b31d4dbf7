"""The ``smoe``, ``smoe-mlp``, ``smoe-independent`` and ``smoe-unshielded`` deciders: a
trained :class:`~smoelib.policy.agent.SMoEAgent` loaded from its checkpoint and run once per
control tick (features -> greedy actions -> decision), the greedy path compiled once per DAG
where ``policy.compile`` asks for it.

``smoe-unshielded`` is the ``smoe`` architecture trained and run under the ``unshielded``
guard profile (every guard but the safety shield): the ablation that shows what the shield
adds.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from concurrent.futures import Future, wait
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
from smoelib.policy.plan import ReplicaPlanner, planner_for
from smoelib.policy.pointer import Actions

__all__ = ["SMoEDecider", "bundled_path", "compile_greedy", "PRETRAINED", "BUNDLED", "LEARNED"]

log = logging.getLogger(__name__)

PRETRAINED = Path(__file__).with_name("pretrained")
BUNDLED = PRETRAINED / "default.pt"
"""the bundled ``smoe`` policy; the ablations ship as ``pretrained/<name>.pt``"""


LEARNED: dict[str, tuple[str, str]] = {
    "smoe": ("smoe", "production"), "smoe-mlp": ("smoe-mlp", "production"),
    "smoe-independent": ("smoe-independent", "production"),
    "smoe-unshielded": ("smoe", "unshielded")}
"""registry name -> (architecture, guard profile it trains and runs under)"""


def bundled_path(name: str, folder: str | Path = "") -> Path:
    """The checkpoint a registry name loads when ``policy.checkpoint`` is empty: its file in
    ``folder`` (``policy.pretrained``), or in the bundled folder when that is empty."""
    return (Path(folder) if folder else PRETRAINED) / (
        BUNDLED.name if name == "smoe" else f"{name}.pt")


class _Greedy(nn.Module):
    """The greedy decide path of one DAG as a function of the tick's tensors only (the DAG's
    schedule, expert slots and padding are fixed), so that it can be compiled."""

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


def compile_greedy(agent: SMoEAgent, inp: PolicyInput, *, name: str = "pipeline") -> Future:
    """The agent's greedy decide path for ``inp``'s DAG through ``torch.compile`` (every shape
    is fixed by the DAG, so ``dynamic=False``; the graph's kernels called from a generated C++
    wrapper, not a Python one: the same kernels and results, less overhead per kernel at
    small sizes, BENCHMARKS.md), compiled by a first call on ``inp`` in a
    background thread: a faster decision than the eager path's once compiled, after a one-off
    compilation of up to minutes per DAG (BENCHMARKS.md has both), so worth it in a
    long-running controller, not in a short simulation (``policy.compile``). The graph reads
    the agent's parameters at every call, so it follows later changes to their values.

    Returns at once a future of a callable ``(x, replicas, choice_mask, budget) -> (order,
    choices)``, or of None where this machine cannot compile (no C++ compiler, an op the
    compiler refuses; logged as a warning)."""
    start, done = time.perf_counter(), Future()
    try:
        # torch.compile loads the compiler, whose modules warn of deprecations inside torch
        # (here, in the caller's thread: the warning filters are global)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = torch.compile(_Greedy(agent, inp), dynamic=False,
                                     options={"cpp_wrapper": True})
    except Exception as err:  # noqa: BLE001 - any compiler failure leaves the eager path
        done.set_result(_failed(name, err))
        return done

    def first_call() -> None:
        try:
            with torch.inference_mode():
                compiled(inp.x, inp.replicas, inp.choice_mask, inp.budget)
        except Exception as err:  # noqa: BLE001
            done.set_result(_failed(name, err))
            return
        log.info("%s: compiled the decide path in %.1f s", name, time.perf_counter() - start)
        done.set_result(compiled)

    threading.Thread(target=first_call, name=f"compile-{name}", daemon=True).start()
    return done


def _failed(name: str, err: Exception) -> None:
    log.warning("%s: deciding on the eager path, torch.compile failed (%s)", name,
                str(err).splitlines()[0] if str(err) else type(err).__name__)


class SMoEDecider:
    """Runs an :class:`SMoEAgent` once per tick: features -> greedy (or seeded) actions ->
    decision. Trend state is carried between ticks and cleared by :meth:`reset`.

    With ``compile``, the first greedy tick starts :func:`compile_greedy` and the eager path
    decides until the compiled graph is ready (the same actions up to floating-point
    near-ties, in less time); :meth:`wait_compiled` waits for it."""

    def __init__(self, *, dag: Any, agent: SMoEAgent, gpus: float, sample: bool = False,
                 compile: bool = False, planner: ReplicaPlanner | None = None,
                 settings: Any = None):
        self.dag, self.agent, self.gpus, self.sample = dag, agent.eval(), gpus, sample
        self.settings = settings  # the run's (the lookahead features read the shield's)
        self.planner = planner  # a residual policy's plan (PolicyConfig.replica_base)
        self.generator = torch.Generator()
        self.trend: TrendState | None = None
        self._compile = compile and not sample  # sampling stays eager
        self._compiled: Future | None = None  # from the first tick on, with compile

    def reset(self, seed: int) -> None:
        """Clear the load trends; seed the sampler (used only with ``sample=True``)."""
        self.generator.manual_seed(seed)
        self.trend = None
        if self.planner is not None:
            self.planner.reset(seed)

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait for a compilation in progress; True when the compiled graph decides."""
        if self._compiled is not None:
            wait([self._compiled], timeout)
        return self._greedy() is not None

    def _greedy(self) -> Any:
        """The compiled graph once it is ready, else None."""
        c = self._compiled
        return c.result() if c is not None and c.done() else None

    def decide(self, observation: Any) -> PipelineDecision:
        cfg = self.agent.config
        plan = None if self.planner is None else self.planner.replicas(observation)
        inp, self.trend = build_features(observation, self.dag, config=cfg, gpus=self.gpus,
                                         trend=self.trend, plan=plan, settings=self.settings)
        if self._compile and self._compiled is None:
            self._compiled = compile_greedy(self.agent, inp, name=self.dag.name)
        greedy = self._greedy()  # compiled only for greedy deciding
        with torch.inference_mode():
            if greedy is not None:
                actions = Actions(*greedy(inp.x, inp.replicas, inp.choice_mask, inp.budget))
            else:
                actions = self.agent(inp, generator=self.generator if self.sample else None,
                                     score=False).actions
        return actions_to_decision(actions, inp, self.dag, config=cfg,
                                   updated_at=float(observation.time_s))


def _factory(name: str, architecture: str):
    def make(*, dag: Any, settings: Any) -> SMoEDecider:
        folder = settings.policy.pretrained
        path = (Path(settings.policy.checkpoint) if settings.policy.checkpoint
                else bundled_path(name, folder))
        if not path.exists() and not settings.policy.checkpoint:
            where = (f"policy.pretrained has no {path.name}" if folder
                     else f"no bundled {path.name} is installed")
            raise ConfigError([Problem("policy.pretrained" if folder else "policy.checkpoint",
                                       f"{name!r} needs a trained checkpoint and "
                                       f"{where}")], source=folder or None)
        agent = load_checkpoint(path).agent
        if agent.config.architecture != architecture:
            raise ConfigError([Problem("policy.name", f"checkpoint holds a "
                                       f"{agent.config.architecture!r} policy, not "
                                       f"{architecture!r}")], source=str(path))
        # inference threads are a process setting; the decider is built by the composition root
        torch.set_num_threads(settings.policy.torch_threads)
        return SMoEDecider(dag=dag, agent=agent, gpus=settings.cluster.gpus,
                           compile=settings.policy.compile,
                           planner=planner_for(agent.config, dag=dag, settings=settings),
                           settings=settings)
    return make


for _name, (_arch, _guards) in LEARNED.items():
    register(_name, guards=_guards)(_factory(_name, _arch))
