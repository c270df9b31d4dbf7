"""Rollouts on the simulator: ``K`` environments of one pipeline, stepped in lock-step.

Each environment has its own settings (engine, request rate), trace and seed
(:class:`EnvRun`). Environments given the same run see the same arrivals and routing (common
random numbers, Decima): their returns differ only by the policy's own choices, which is what
the per-tick baseline across them removes (:func:`smoelib.policy.train.crn_advantages`). The
agent decides for all ``K`` in one batched forward pass; each row's decision then goes through
the one tick (:mod:`smoelib.core.tick`, under the run's guard profile, ``production`` by
default) and the simulated actuator, as in ``smoe evaluate`` and in the controller
(:class:`~smoelib.sim.loop.SimLoop`).

Who acts: ``"sample"`` (the agent, sampling with the given generator: PPO), ``"greedy"`` (the
agent's greedy actions: DAgger and validation) or ``"teacher"`` (a registered decider: the first
behaviour-cloning round). With ``label=True`` the teacher also decides on every visited state
and its decision is stored as :class:`Actions` labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from smoelib.core.guards import guard
from smoelib.core.shield import lifts
from smoelib.core.slo import MAX_OVERRUN, overrun
from smoelib.core.tick import Proposed
from smoelib.policy.agent import SMoEAgent, actions_to_decision
from smoelib.policy.base import get_decider
from smoelib.policy.features import PolicyInput, TrendState, build_features, collate
from smoelib.policy.imitation import teacher_actions
from smoelib.policy.plan import planner_for
from smoelib.policy.pointer import Actions
from smoelib.sim.env import RewardParts, SimEnv
from smoelib.sim.loop import SimLoop
from smoelib.sim.summary import summarise, window_series

__all__ = ["Rollout", "EpisodeStats", "EnvRun", "collect", "cat_actions"]

Mode = Literal["sample", "greedy", "teacher"]


@dataclass(frozen=True)
class EnvRun:
    """One environment of a rollout: the settings it runs (``simulator.engine``,
    ``simulator.rate_scale``, ...), its trace and its seed."""

    settings: Any
    trace: str
    seed: int


@dataclass(frozen=True)
class EpisodeStats:
    """One environment's episode: ``cost`` (currency), ``slo_ratio`` over all requests (the
    worse of P95 TTFT and TPOT over their SLOs), ``worst_window`` the highest 60 s window
    ratio (drops count as over; capped at 5), ``violation_rate`` of 60 s windows, ``dropped``
    requests."""

    cost: float
    slo_ratio: float
    worst_window: float
    violation_rate: float
    dropped: int


@dataclass
class Rollout:
    """``T`` ticks of ``K`` environments. Batch rows are time-major: row ``t * K + k``.

    Shapes: ``inputs`` a :class:`PolicyInput` of batch ``T*K``; ``actions``, ``labels``
    :class:`Actions` of batch ``T*K``; ``log_prob``, ``value``, ``cost``, ``overrun``,
    ``dones``, ``lifts`` ``(T, K)``.
    """

    inputs: PolicyInput
    actions: Actions
    log_prob: Tensor
    value: Tensor
    cost: Tensor
    overrun: Tensor
    dones: Tensor
    labels: Actions | None
    episodes: list[EpisodeStats]
    applied: list[list[Any]] = field(default_factory=list)
    """per environment, the decision the tick applied at every tick"""
    lifts: Tensor | None = None
    """``(T, K)``: the share of the experts the safety shield lifted at each tick"""
    slot_log_prob: Tensor | None = None
    """``(T, K, L, E)``: ``log_prob`` per expert slot (factored PPO ratios)"""

    @property
    def steps(self) -> int:
        return int(self.cost.numel())


def cat_actions(items: list[Actions]) -> Actions:
    """Stack actions along the batch dimension."""
    return Actions(order=torch.cat([a.order for a in items]),
                   choices=torch.cat([a.choices for a in items]))


def _episode(env: SimEnv) -> EpisodeStats:
    s = summarise(env)
    w = window_series(env)
    slo = env.dag.slo
    win = w["ttft_p95_ms"] / slo.ttft_ms
    if slo.tpot_ms is not None:
        win = np.maximum(win, w["tpot_p95_ms"] / slo.tpot_ms)
    win = win[~np.isnan(win)]  # NaN: a window without requests
    worst = float(np.max(win)) if win.size else 0.0
    return EpisodeStats(cost=s.cost, slo_ratio=s.slo_ratio,
                        worst_window=min(worst, MAX_OVERRUN),
                        violation_rate=s.window_violation_rate, dropped=s.dropped)


def collect(agent: SMoEAgent, *, dag: Any, runs: list[EnvRun], duration_s: float, mode: Mode,
            generator: torch.Generator | None = None, teacher: str | None = None,
            label: bool = False, guards: str = "production") -> Rollout:
    """Run one environment per entry of ``runs`` to the end of the episode.

    Args:
        agent: the policy (its log-probabilities and values are recorded in every mode).
        dag: the pipeline every environment serves.
        runs: ``K`` environments (repeat a run for common random numbers).
        duration_s: the episode length (simulated s).
        mode: who acts (module docstring).
        generator: the sampling generator (``mode="sample"``).
        teacher: registry name of the teacher (``mode="teacher"`` or ``label=True``).
        label: record the teacher's decisions as labels.
        guards: the guard profile every tick runs under.
    """
    cfg = agent.config
    envs = len(runs)
    loops = [SimLoop(SimEnv(dag, r.settings, trace=r.trace, duration_s=duration_s),
                     settings=r.settings, profile=guards) for r in runs]
    obs = [loop.reset(r.seed) for loop, r in zip(loops, runs, strict=True)]
    teachers = []
    if mode == "teacher" or label:
        teachers = [get_decider(teacher, dag=dag, settings=r.settings) for r in runs]
        for t, r in zip(teachers, runs, strict=True):
            t.reset(r.seed)
    planners = [planner_for(cfg, dag=dag, settings=r.settings) for r in runs]
    for p, r in zip(planners, runs, strict=True):
        if p is not None:
            p.reset(r.seed)
    trends: list[TrendState | None] = [None] * envs
    steps: list[tuple[PolicyInput, Actions, Tensor, Tensor, list[RewardParts], Tensor]] = []
    lifted: list[list[float]] = []
    n_experts = max(len(dag.experts), 1)
    labels: list[Actions] = []
    done = False
    while not done:
        rows = []
        for k in range(envs):
            plan = None if planners[k] is None else planners[k].replicas(obs[k])
            inp, trends[k] = build_features(obs[k], dag, config=cfg,
                                            gpus=runs[k].settings.cluster.gpus,
                                            trend=trends[k], plan=plan,
                                            settings=runs[k].settings)
            rows.append(inp)
        batch = collate(rows)
        with torch.no_grad():
            out = agent(batch, generator=generator if mode == "sample" else None)
        parts = []
        lifted.append([])
        for k, loop in enumerate(loops):
            if mode == "teacher":
                step = loop.step(teachers[k])
                taught = step.tick.proposal
            else:
                taught = teachers[k].decide(obs[k]) if teachers else None
                proposal = actions_to_decision(out.actions, batch, dag, config=cfg,
                                               updated_at=float(obs[k].time_s), row=k)
                step = loop.step(Proposed(proposal))
            if label and taught is not None:
                bounded = guard(taught, dag=dag, settings=runs[k].settings,
                                profile="physical").decision
                labels.append(teacher_actions(bounded, rows[k], dag, config=cfg))
            obs[k], done = step.step.observation, step.step.done
            parts.append(step.step.reward)
            lifted[-1].append(lifts(step.tick.fired) / n_experts)
        steps.append((batch, out.actions, out.log_prob, out.value, parts, out.slot_log_prob))
    attainment = float(dag.slo.attainment)
    n = len(steps)
    dones = torch.zeros(n, envs)
    dones[-1] = 1.0
    return Rollout(
        inputs=collate([s[0] for s in steps]), actions=cat_actions([s[1] for s in steps]),
        log_prob=torch.stack([s[2] for s in steps]), value=torch.stack([s[3] for s in steps]),
        cost=torch.tensor([[p.cost for p in s[4]] for s in steps], dtype=torch.float32),
        overrun=torch.tensor([[overrun(p, attainment) for p in s[4]] for s in steps],
                             dtype=torch.float32),
        dones=dones, labels=cat_actions(labels) if labels else None,
        lifts=torch.tensor(lifted, dtype=torch.float32),
        episodes=[_episode(loop.env) for loop in loops],
        applied=[loop.decisions for loop in loops],
        slot_log_prob=torch.stack([s[5] for s in steps]))
