"""The simulated cluster as a Gymnasium environment, so that any RL library can train on it.

``ClusterEnv(pipeline, trace=..., duration_s=...)`` wraps :class:`~smoelib.sim.env.SimEnv`:
one step is one control tick. Registered as ``smoe/Cluster-v0`` (``gymnasium.make`` and
``gymnasium.make_vec``); :func:`make_vector` builds N of them stepped together.

**Observation** (``Box``, float32): per expert, in ``dag.experts`` order, :data:`EXPERT_FEATURES`
(its load, latency and configuration), then :data:`GLOBAL_FEATURES` (the request rate, P95 TTFT
and TPOT over their SLOs, SLO attainment, drops per second, the episode's elapsed fraction). A
value the window does not know yet (NaN: no request ended) reads 0, an unbounded one (inf:
drops reach the P95) 1e6.

**Action** (``MultiDiscrete``): per expert five indices: replicas above the expert's minimum
(up to its maximum), then the CPU, memory, GPU share and concurrency choices of
``settings.actions`` (GPU share 0 only, on a CPU-only pipeline).

**Reward**: ``-(cost / reference cost) - penalty * overrun``: the tick's cost in units of one
tick at the pipeline's defaults (:func:`~smoelib.sim.targets.reference_cost`) and its SLO
overrun (:func:`~smoelib.core.slo.overrun`). The episode ends by truncation when the trace
does (a time limit, not a terminal state).

The action goes to the simulated cluster as proposed: no guard profile (the production
loop's guards are :mod:`smoelib.core.tick`'s; the policy issue trains through them).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.core.slo import overrun
from smoelib.settings import Settings, load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.targets import reference_cost
from smoelib.topology import build_dag

__all__ = ["ClusterEnv", "make_vector", "EXPERT_FEATURES", "GLOBAL_FEATURES", "ENV_ID"]

ENV_ID = "smoe/Cluster-v0"
EXPERT_FEATURES = ("calls_per_s", "tokens_per_s", "inflight", "rejected_per_s",
                   "latency_p95_ms", "replicas_ready", "replicas_starting", "replicas_pending",
                   "cpu", "memory_gib", "gpu_share", "concurrency")
_CAP = 1e6  # every feature is non-negative; an unbounded one (drops at P95: inf) reads this
GLOBAL_FEATURES = ("request_rate", "ttft_p95_over_slo", "tpot_p95_over_slo", "slo_attainment",
                   "dropped_per_s", "elapsed")


class ClusterEnv(gymnasium.Env):
    """One pipeline on the simulated cluster (see the module docstring).

    Args:
        pipeline: a ``pipeline.yml`` path or a built DAG.
        trace: a built-in trace (``conv-train``, a synthetic family) or a CSV path.
        duration_s: episode length (simulated seconds).
        settings: the settings tree (defaults when None).
        penalty: reward per unit of SLO overrun, in reference-cost ticks.
        rate_scale: request-rate multiplier (default: the pipeline's).
    """

    metadata = {"render_modes": []}

    def __init__(self, pipeline: Any, *, trace: str = "conv-train", duration_s: float = 600.0,
                 settings: Settings | None = None, penalty: float = 10.0,
                 rate_scale: float | None = None):
        self.dag = build_dag(pipeline) if isinstance(pipeline, str) else pipeline
        self.settings = settings if settings is not None else load_settings(None)
        self.sim = SimEnv(self.dag, self.settings, trace=trace, duration_s=duration_s,
                          rate_scale=rate_scale)
        self.penalty = float(penalty)
        self.reference = reference_cost(self.dag, self.settings)
        a = self.settings.actions
        self.experts = list(self.dag.experts)
        self.index = np.flatnonzero(self.sim.is_expert)  # dag.experts, in dag.nodes order
        self.choices = {"cpu": a.cpu, "memory_mb": a.memory_mb,
                        "gpu_share": (0.0,) if self.dag.accelerator == "cpu" else a.gpu_share,
                        "concurrency": a.concurrency}
        specs = [self.dag.spec(e) for e in self.experts]
        self.r_min = np.array([s.replicas_min for s in specs])
        nvec = [[s.replicas_max - s.replicas_min + 1, *(len(c) for c in self.choices.values())]
                for s in specs]
        self.action_space = spaces.MultiDiscrete(np.array(nvec, np.int64).reshape(-1))
        size = len(self.experts) * len(EXPERT_FEATURES) + len(GLOBAL_FEATURES)
        self.observation_space = spaces.Box(0.0, _CAP, shape=(size,), dtype=np.float32)

    # ---- gymnasium -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(2**31 - 1)) if seed is None else int(seed)
        obs = self.sim.reset(seed=episode_seed)
        return self._features(obs), {"seed": episode_seed}

    def step(self, action):
        result = self.sim.step(self.decision(action))
        parts = result.reward
        over = overrun(parts, self.dag.slo.attainment)
        reward = -parts.cost / self.reference - self.penalty * over
        info = {**result.info, "cost": parts.cost, "overrun": over,
                "violations": parts.violations, "requests": parts.requests}
        return self._features(result.observation), float(reward), False, result.done, info

    # ---- translation ---------------------------------------------------------------------
    def decision(self, action) -> PipelineDecision:
        """The decision an action stands for."""
        a = np.asarray(action, np.int64).reshape(len(self.experts), 5)
        c = self.choices
        experts = {e: ExpertDecision(
            replicas=int(self.r_min[i] + a[i, 0]), cpu=float(c["cpu"][a[i, 1]]),
            memory_mb=int(c["memory_mb"][a[i, 2]]), gpu_share=float(c["gpu_share"][a[i, 3]]),
            concurrency=int(c["concurrency"][a[i, 4]])) for i, e in enumerate(self.experts)}
        return PipelineDecision(pipeline=self.dag.name, updated_at=0.0, experts=experts)

    def _features(self, obs) -> np.ndarray:
        i = self.index
        per = np.stack([obs.calls_per_s[i], obs.tokens_per_s[i], obs.inflight[i],
                        obs.rejected_per_s[i], obs.latency_p95_ms[i], obs.replicas_ready[i],
                        obs.replicas_starting[i], obs.replicas_pending[i], obs.cpu[i],
                        obs.memory_mb[i] / 1024.0, obs.gpu_share[i], obs.concurrency[i]], axis=1)
        slo = self.dag.slo
        tpot = obs.tpot_p95_ms / slo.tpot_ms if slo.tpot_ms is not None else 0.0
        glob = np.array([obs.request_rate, obs.ttft_p95_ms / slo.ttft_ms, tpot,
                         obs.slo_attainment, obs.dropped_per_s,
                         obs.time_s / self.sim.duration_s])
        out = np.nan_to_num(np.concatenate([per.reshape(-1), glob]), nan=0.0, posinf=_CAP)
        return np.clip(out, 0.0, _CAP).astype(np.float32)


def make_vector(pipeline: Any, n: int, *, asynchronous: bool = False,
                scenarios: list[dict[str, Any]] | None = None,
                **kwargs) -> gymnasium.vector.VectorEnv:
    """``n`` environments of one pipeline stepped together (a ``gymnasium.vector`` env; seed
    each on reset: ``reset(seed=[...])``); ``asynchronous`` runs each in its own process.
    ``kwargs`` go to every :class:`ClusterEnv`; ``scenarios`` (``n`` dicts, or fewer, used in
    turn) override them per environment, so one batch mixes traces and rates
    (``{"trace": "bursty", "rate_scale": 2.0}``). For training, the fast mode:
    ``settings=load_settings({"simulator": {"engine": "fluid"}})`` (about 1 MiB and a few
    milliseconds a tick per gpt2-moe environment, BENCHMARKS.md)."""
    if scenarios is not None and not scenarios:
        raise ValueError("make_vector: scenarios is empty (give at least one dict, or None)")

    def build(i: int):
        extra = scenarios[i % len(scenarios)] if scenarios else {}
        return lambda: ClusterEnv(pipeline, **{**kwargs, **extra})

    cls = gymnasium.vector.AsyncVectorEnv if asynchronous else gymnasium.vector.SyncVectorEnv
    return cls([build(i) for i in range(n)])


if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point="smoelib.sim.gymenv:ClusterEnv")
