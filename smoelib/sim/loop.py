"""The control loop on the simulated cluster: observation -> the one tick -> the simulated
actuator -> one simulated control tick. ``smoe evaluate``, ``smoe simulate`` and the training
rollouts drive it; the controller drives the same tick against Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass

from smoelib.core.decisions import PipelineDecision
from smoelib.core.guards import GuardProfile, get_profile, guard
from smoelib.core.observation import Observation
from smoelib.core.ports import Decider, Feedback
from smoelib.core.tick import TickResult, TickState, tick
from smoelib.settings import Settings
from smoelib.sim.actuator import SimActuator
from smoelib.sim.env import SimEnv, StepResult

__all__ = ["SimLoop", "LoopStep"]


@dataclass(frozen=True)
class LoopStep:
    """One pass of the loop: the tick's result, what the actuator did, and the simulated
    control tick that followed."""

    tick: TickResult
    feedback: Feedback
    step: StepResult


class SimLoop:
    """One pipeline on the simulator under the tick.

    Args:
        env: the simulator (``reset`` is called here).
        settings: the settings tree the tick and the actuator use.
        profile: the guard profile (or its name) every tick runs.
    """

    def __init__(self, env: SimEnv, *, settings: Settings, profile: str | GuardProfile):
        self.env = env
        self.settings = settings
        self.profile = get_profile(profile)
        self.decisions: list[PipelineDecision | None] = []
        """The decision applied at every tick so far (None: the first proposals were refused)."""

    def reset(self, seed: int) -> Observation:
        """Start an episode (one seed, one trajectory); returns the first observation."""
        self.observation = self.env.reset(seed=seed)
        self.actuator = SimActuator(self.env, self.settings)
        self.state = TickState()
        self.decisions = []
        self._warm = False
        return self.observation

    def step(self, decider: Decider) -> LoopStep:
        """Decide on the latest observation, apply, simulate one control tick. At the first
        step with ``simulator.warm_start``, the decider's first decision (bounded by the
        physical guards) becomes the episode's starting state (:meth:`SimEnv.warm_start`)."""
        if self.env.tick == 0 and not self._warm and self.settings.simulator.warm_start:
            self._warm = True
            proposal = decider.decide(self.observation)
            start = guard(proposal, dag=self.env.dag, settings=self.settings,
                          profile="physical").decision
            self.observation = self.env.warm_start(start)
            self.state = TickState(last=start)
        now = float(self.observation.time_s)
        result = tick(self.observation, decider, self.state, dag=self.env.dag,
                      settings=self.settings, profile=self.profile, now=now)
        feedback = (self.actuator.apply(result.decision, now=now)
                    if result.decision is not None else Feedback())
        self.state = result.state.after(feedback, now=now)
        self.decisions.append(result.decision)
        step = self.actuator.step()
        self.observation = step.observation
        return LoopStep(result, feedback, step)

    def run(self, decider: Decider, *, on_step=None) -> None:
        """Step until the episode ends; ``on_step(loop_step)`` after each."""
        done = False
        while not done:
            s = self.step(decider)
            done = s.step.done
            if on_step is not None:
                on_step(s)
