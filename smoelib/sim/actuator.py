"""The simulated cluster behind the same ports as a real one: its functions as the vertical
module sees them, and the actuator every simulated loop applies decisions through.

The decision reaches the simulator the way it reaches a cluster: replica targets through the
(simulated) KEDA and HPA path, every other knob through the vertical planner and the simulated
backend (:class:`~smoelib.vertical.backends.simulated.SimulatedBackend`), which change the
functions' pod templates; the simulator then rolls or resizes pods as the templates say.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.core.knobs import VERTICAL_KNOBS
from smoelib.core.ports import Feedback
from smoelib.settings import Settings
from smoelib.sim.env import SimEnv, StepResult
from smoelib.vertical.backends.simulated import SimulatedBackend
from smoelib.vertical.loop import VerticalLoop

__all__ = ["SimulatedFunctions", "SimActuator"]


class SimulatedFunctions:
    """The expert functions of a :class:`SimEnv` as a
    :class:`~smoelib.vertical.backends.simulated.VerticalTarget`: each function's pod template
    (CPU, memory, GPU share, concurrency) as the vertical backend last set it, its Deployment's
    replicas and its ready replicas.

    Args:
        env: the simulator, already ``reset``.
    """

    def __init__(self, env: SimEnv):
        self.env = env
        self.dag = env.dag
        self.index = {n: i for i, n in enumerate(env.dag.nodes)}
        self.by_function = {env.dag.function_name(n): n for n in env.dag.experts}
        self.knobs = {n: {k: getattr(env.dag.spec(n), k) for k in VERTICAL_KNOBS}
                      for n in env.dag.experts}

    def vertical_state(self, function: str) -> dict[str, float] | None:
        node = self.by_function.get(function)
        if node is None:
            return None
        i = self.index[node]
        return {**self.knobs[node], "replicas": int(self.env.spec_replicas[i]),
                "ready_replicas": int(self.env.observation.replicas_ready[i])}

    def apply_vertical(self, function: str, changes: Mapping[str, float], *,
                       in_place: bool) -> None:
        node = self.by_function[function]
        self.knobs[node] = {**self.knobs[node], **changes}

    def decision(self, replicas: Mapping[str, int]) -> PipelineDecision:
        """What the simulator runs next: ``replicas`` (KEDA's targets) with the templates."""
        experts = {n: ExpertDecision(replicas=int(replicas[n]), cpu=float(k["cpu"]),
                                     memory_mb=int(k["memory_mb"]),
                                     gpu_share=float(k["gpu_share"]),
                                     concurrency=int(k["concurrency"]))
                   for n, k in self.knobs.items()}
        return PipelineDecision(self.dag.name, self.env.tick * self.env.dt,
                                MappingProxyType(experts))


class SimActuator:
    """The simulated cluster as the tick's actuator: :meth:`apply` hands the replica targets
    to the KEDA path and the other knobs to the vertical planner; :meth:`step` simulates one
    control tick with them.

    Args:
        env: the simulator, already ``reset``.
        settings: planner rules and conflict retries (the vertical section).
    """

    def __init__(self, env: SimEnv, settings: Settings):
        self.env = env
        self.functions = SimulatedFunctions(env)
        self.vertical = VerticalLoop(env.dag, SimulatedBackend(self.functions), settings)
        self.replicas = {n: int(env.spec_replicas[self.functions.index[n]])
                         for n in env.dag.experts}

    def apply(self, decision: PipelineDecision, *, now: float) -> Feedback:
        # an expert the decision omits has no new target: KEDA keeps the last one
        self.replicas = {**self.replicas,
                         **{n: e.replicas for n, e in decision.experts.items()}}
        return self.vertical.apply(decision, now=now)

    def step(self) -> StepResult:
        """One control tick of the simulated cluster under what was applied so far."""
        return self.env.step(self.functions.decision(self.replicas))
