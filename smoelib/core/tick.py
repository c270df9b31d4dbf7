"""The one control tick: observation -> decide -> guard -> the decision to apply. Pure.

Every loop runs this function: the controller on a real clock against Prometheus, ``smoe
evaluate``, the training rollouts, ``smoe simulate`` and ``smoe demo`` on the simulator. They
differ only in where the observation comes from and which actuator receives the decision
(:mod:`smoelib.core.ports`), so what is trained and measured is what is deployed::

    state = TickState()
    while running:
        result = tick(observation, decider, state, dag=dag, settings=settings,
                      profile="production", now=now)
        feedback = actuator.apply(result.decision, now=now)   # if result.decision
        state = result.state.after(feedback, now=now)

No I/O and no wall clock: ``now`` is the caller's clock and ``timer`` (for ``decide_ms`` only)
is a parameter. A refused proposal keeps the last good decision. The decider's exceptions
propagate: the controller catches and counts them, a simulation stops on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from smoelib.core.decisions import PipelineDecision
from smoelib.core.guards import GuardProfile, guard
from smoelib.core.ports import Decider, Feedback
from smoelib.core.shield import ShieldMemory
from smoelib.core.slow_knobs import SlowKnobMemory

__all__ = ["TickState", "TickResult", "tick", "Proposed"]


@dataclass(frozen=True)
class TickState:
    """What the tick carries to the next one: the last applied decision, the slow-knob
    memory (candidates, and the rollouts of the last minute as the actuator reported them)
    and the shield's (the last observation's call rates, for the trend)."""

    last: PipelineDecision | None = None
    slow: SlowKnobMemory = field(default_factory=SlowKnobMemory)
    shield: ShieldMemory = field(default_factory=ShieldMemory)

    def after(self, feedback: Feedback, *, now: float) -> TickState:
        """The state once the actuator has applied this tick's decision: its rollouts count
        against the budget from ``now``."""
        if not feedback.rollouts:
            return self
        return replace(self, slow=self.slow.record(feedback.rollouts, now=now))


@dataclass(frozen=True)
class TickResult:
    """``decision``: what to apply (None: nothing yet, the first proposal was refused);
    ``accepted``: False when the proposal was refused and the last decision stays; ``notes``
    and ``fired`` (the rule of each note) from the guards; ``state`` for the next tick;
    ``decide_ms`` the decider's time; ``proposal`` what the decider proposed."""

    decision: PipelineDecision | None
    accepted: bool
    notes: tuple[str, ...]
    fired: tuple[str, ...]
    state: TickState
    decide_ms: float
    proposal: PipelineDecision


def tick(observation: Any, decider: Decider, state: TickState, *, dag: Any, settings: Any,
         profile: str | GuardProfile, now: float,
         timer: Callable[[], float] = time.perf_counter) -> TickResult:
    """One tick.

    Args:
        observation: the latest :class:`~smoelib.core.observation.Observation`.
        decider: the policy.
        state: from the last tick (:class:`TickState` for the first).
        dag, settings: the pipeline and the settings tree.
        profile: the guard profile (:data:`smoelib.core.guards.PROFILES`) or its name.
        now: seconds on the loop's clock; the decision is stamped with it.
        timer: measures ``decide_ms`` (seconds; the default, a monotonic performance counter).
    """
    started = timer()
    proposal = decider.decide(observation)
    decide_ms = (timer() - started) * 1000.0
    result = guard(proposal, dag=dag, settings=settings, profile=profile, last=state.last,
                   observation=observation, memory=state.slow, now=now,
                   shield_memory=state.shield)
    if not result.accepted:
        return TickResult(state.last, False, result.notes, result.fired,
                          replace(state, shield=result.shield), decide_ms, proposal)
    decision = replace(result.decision, updated_at=float(now))
    return TickResult(decision, True, result.notes, result.fired,
                      TickState(last=decision, slow=result.memory, shield=result.shield),
                      decide_ms, proposal)


class Proposed:
    """A decider whose proposal was computed elsewhere (a batched forward pass over several
    environments): ``decide`` returns it, so the batch's rows still go through :func:`tick`."""

    def __init__(self, proposal: PipelineDecision):
        self.proposal = proposal

    def reset(self, seed: int) -> None:
        """Nothing to reset."""

    def decide(self, observation: Any) -> PipelineDecision:
        return self.proposal
