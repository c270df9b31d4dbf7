"""The simulated cluster as an environment: ``reset(seed)``, ``step(decision)``.

One step is one control tick (``settings.control.interval_s``). Inside a tick, in order: the
decision's slow knobs (GPU share, concurrency; CPU and memory too without in-place resize) start
a rollout, CPU and memory are resized in place, KEDA polls the replica targets (the
ScaledObjects' ``pollingInterval``), the HPA syncs (``hpa_sync_s``) and the Deployment
controller creates or removes pods at those instants; then every call of the tick is served and
the pods are billed.
Serving is :class:`~smoelib.sim.engine.Engine` (every pass, call and batch) on the service model
of :mod:`smoelib.core.service`. Seeds: ``SeedSequence(seed)`` spawns separate streams for
routing, cluster noise (cold starts) and dispatch (replica choice, service noise, backoff
jitter); arrivals come from the trace seeded by ``seed`` alone, so every policy sees the same
arrivals and routing. ``simulator.noise_stream`` (not 0) draws the per-request routing picks,
cold starts and dispatch from another stream of the same seed, keeping its arrivals and
popularity path: how far a result moves with the engine's own randomness alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smoelib.core.observation import Observation
from smoelib.core.service import memory_floor_mb, service_models
from smoelib.errors import ConfigError, Problem
from smoelib.settings import Settings
from smoelib.sim import targets as tg
from smoelib.sim.autoscaling import (
    Autoscaler,
    keda_polling_s,
    smoe_behaviour,
    stock_behaviour,
)
from smoelib.sim.cluster import Cluster
from smoelib.sim.engine import Engine
from smoelib.sim.routing import RoutingModel, RoutingParams
from smoelib.sim.telemetry import (
    CALL_BOUNDS_S,
    PASS_BOUNDS_S,
    Telemetry,
    histogram_quantile,
)
from smoelib.sim.traces import TASKS, Trace, load_trace

__all__ = ["SimEnv", "StepResult", "RewardParts"]


@dataclass(frozen=True)
class RewardParts:
    """One tick's reward ingredients: ``cost`` (currency); ``slo_ratio``, the worst of the
    P95 TTFT and P95 TPOT of the requests that ended in the tick over their SLOs (NaN if none
    ended; inf when the top 5 % holds a drop); ``violations`` (ended without meeting the SLO,
    dropped included) and ``requests`` (ended or dropped in the tick)."""

    cost: float
    slo_ratio: float
    violations: int
    requests: int


@dataclass(frozen=True)
class StepResult:
    observation: Observation
    reward: RewardParts
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


class SimEnv:
    """A pipeline on the simulated cluster, fed by one trace.

    Args:
        dag: the pipeline (built with metadata).
        settings: the settings tree.
        trace: a built-in trace name or a CSV path.
        duration_s: episode length; the trace is cut (or repeated) to it.
        time_scale, rate_scale: see :func:`~smoelib.sim.traces.scale_trace`; ``rate_scale``
            defaults to the pipeline's ``rate_scale`` times ``simulator.rate_scale``.
    """

    def __init__(self, dag, settings: Settings, *, trace: str = "conv",
                 duration_s: float = 3600.0, time_scale: float = 1.0,
                 rate_scale: float | None = None):
        self.dag, self.s = dag, settings
        self.trace_name, self.duration_s = trace, float(duration_s)
        self.time_scale = time_scale
        self.rate_scale = (dag.rate_scale * settings.simulator.rate_scale if rate_scale is None
                           else rate_scale)
        self.dt = settings.control.interval_s
        specs = [dag.spec(n) for n in dag.nodes]
        self.specs = specs
        self.n = len(specs)
        self.is_expert = np.array([s.kind == "expert" for s in specs])
        self.is_segment = np.array([s.kind == "segment" for s in specs])
        sim = settings.simulator
        self.models = service_models(dag, settings)
        self.floor_mb = np.array([0.0 if x.kind == "join" else memory_floor_mb(
            x, runtime_memory_mb=settings.cluster.runtime_memory_mb) for x in specs])
        self.expert_behaviour = (smoe_behaviour(settings) if sim.hpa_preset == "smoe"
                                 else stock_behaviour(settings))
        self.segment_behaviour = stock_behaviour(settings)
        self.keda_polling_s = keda_polling_s(settings)
        self.trace: Trace | None = None

    # ---- episode -------------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        """Start an episode; one seed gives one trajectory."""
        sim = self.s.simulator
        self.seed = int(seed)
        routing_seq, cluster_seq, dispatch_seq = np.random.SeedSequence(self.seed).spawn(3)
        picks = None
        if sim.noise_stream:  # the engine's own draws afresh; arrivals and popularity kept
            picks, cluster_seq, dispatch_seq = np.random.SeedSequence(
                [self.seed, sim.noise_stream]).spawn(3)
        self.trace = load_trace(self.trace_name, seed=self.seed, duration_s=self.duration_s,
                                rate_per_s=sim.synthetic_rate_per_s,
                                time_scale=self.time_scale, rate_scale=self.rate_scale)
        if self.dag.decodes and self.trace.generated is None:
            raise ConfigError([Problem("", f"the trace has no GeneratedTokens column; "
                                       f"{self.dag.kind} pipeline {self.dag.name} decodes and "
                                       f"needs it")], source=self.trace_name)
        layers = list(self.dag.moe_layers.values())
        router = RoutingModel(
            [len(v) for v in layers], [self.dag.spec(v[0]).top_k for v in layers],
            max_tokens=self.dag.max_seq_tokens,
            params=RoutingParams(gini=sim.routing_gini, drift_time_s=sim.routing_drift_time_s,
                                 shift_every_s=sim.routing_shift_every_s,
                                 affinity=sim.routing_affinity, classes=len(TASKS),
                                 class_divergence=sim.routing_class_divergence),
            seed=routing_seq, picks=picks)
        specs = self.specs
        self._cluster_seq = cluster_seq
        params = {"parallelism": np.array([max(1, x.parallelism) for x in specs]),
                  "rpc_overhead_ms": sim.rpc_overhead_ms, "service_cv": sim.service_cv,
                  "retry_backoff_ms": sim.retry_backoff_ms, "retry_cap_ms": sim.retry_cap_ms,
                  "max_retries": sim.max_retries, "invocation": sim.invocation,
                  "max_running": sim.max_running, "max_step_tokens": sim.max_step_tokens,
                  "fluid_pods": sim.fluid_pods}
        engine = Engine
        if sim.engine == "fluid":
            from smoelib.sim.fluid import FluidEngine as engine  # numba: loaded on use
        elif sim.engine == "compiled" and sim.invocation == "per-sequence":
            from smoelib.sim.compiled import CompiledEngine as engine  # numba: loaded on use
        self.server = engine(self.dag, self.trace, models=self.models, router=router,
                             params=params, rng=np.random.default_rng(dispatch_seq))
        self.tel = Telemetry(self.n, self.dt)
        self.defaults = tg.defaults(self.dag)
        self._start(self.defaults)
        self.tick = 0
        self.cost = 0.0
        self.rollouts = 0
        self.series: list[dict[str, float]] = []
        self.observation = self._observe(0.0)
        return self.observation

    def _start(self, targets: tg.Targets) -> None:
        """A warm cluster at t = 0: every node's pods ready at ``targets``."""
        specs = self.specs
        self.cluster = Cluster(self.n, np.array([x.weights_mb for x in specs]), settings=self.s,
                               rng=np.random.default_rng(self._cluster_seq),
                               floor_mb=self.floor_mb)
        self.targets = targets
        self.template = np.stack([targets.cpu, targets.memory_mb, targets.gpu_share,
                                  targets.concurrency.astype(float)], axis=1)
        mins = np.array([x.replicas_min for x in specs])
        maxs = np.array([x.replicas_max for x in specs])
        init = np.where(self.is_expert | self.is_segment, targets.replicas, 0)
        self.hpa_e = Autoscaler(mins, maxs, behaviour=self.expert_behaviour, initial=init)
        self.hpa_s = Autoscaler(mins, maxs, behaviour=self.segment_behaviour, initial=init)
        for node in np.flatnonzero(init > 0):
            pids = self.cluster.create(int(node), 0.0, int(init[node]),
                                       **self._tpl(int(node)))
            for pid in pids:
                self.cluster.cols["ready"][pid] = self.cluster.cols["start"][pid]
        self.cluster.cold_starts = 0
        self.cluster.oom_kills = 0
        self.rolling: set[int] = set()
        self.size = self.template[:, :2].copy()

    def warm_start(self, decision: Any) -> Observation:
        """Before the first step: start the episode from ``decision`` as a steady state (its
        pods ready at its configuration), as a cluster that has run the policy for a while
        would be; short episodes then measure the policy, not the rollout from the pipeline
        defaults. Returns the new first observation.

        Raises:
            RuntimeError: the episode has already stepped.
        """
        if self.tick != 0:
            raise RuntimeError("warm_start is for the start of an episode (tick 0)")
        self._start(tg.from_decision(decision, self.dag, self.s, self.defaults))
        self.observation = self._observe(0.0)
        return self.observation

    def _tpl(self, node: int) -> dict[str, Any]:
        cpu, mem, share, conc = self.template[node]
        return {"cpu": float(cpu), "mem": float(mem), "share": float(share), "conc": int(conc)}

    @property
    def spec_replicas(self) -> np.ndarray:
        return np.where(self.is_expert, self.hpa_e.replicas,
                        np.where(self.is_segment, self.hpa_s.replicas, 0))

    def step(self, decision: Any | None) -> StepResult:
        """Apply ``decision`` (None keeps the last one) and simulate one control tick.

        Raises:
            ConfigError: the decision names an unknown expert or has NaN/out-of-bound values.
        """
        if self.trace is None:
            raise RuntimeError("call reset(seed) before step()")
        t0, t1 = self.tick * self.dt, (self.tick + 1) * self.dt
        if decision is not None:
            self.targets = tg.from_decision(decision, self.dag, self.s, self.targets)
        self._apply_knobs(t0)
        self._autoscale(t0, t1)
        cl = self.cluster
        cl.forget_ended(t0)
        cl.oom_restarts(t0, t1)
        self.server.run(t0, t1, cl, self.tel)
        cost = cl.cost(t0, t1)
        self.cost += cost
        done = t1 >= self.duration_s - 1e-9
        if done:
            self._drain(t1)
        self.tel.close(self.tick)
        self.tick += 1
        obs = self.observation = self._observe(t1)
        reward = self._reward(t0, t1, cost)
        ready = obs.replicas_ready
        self.series.append({"t_s": t0, "cost": cost, "expert_replicas": float(
            ready[self.is_expert].sum()), "segment_replicas": float(ready[self.is_segment].sum())})
        info = {"time_s": t1, "cold_starts": cl.cold_starts, "rejected": self.server.rejected,
                "rollouts": self.rollouts, "pods_replaced": cl.replaced,
                "calls": self.server.calls, "oom_kills": cl.oom_kills}
        return StepResult(obs, reward, done, info)

    def _reward(self, t0: float, t1: float, cost: float) -> RewardParts:
        b = self.tel.bins.get(self.tick - 1)
        if b is None or not b["slo_total"][0]:
            return RewardParts(cost=cost, slo_ratio=float("nan"), violations=0, requests=0)
        q = lambda h: float(  # noqa: E731
            histogram_quantile(0.95, h, PASS_BOUNDS_S, inf=True)) * 1000.0
        slo = self.dag.slo
        ratio = q(b["tpot_hist"]) / slo.tpot_ms if slo.tpot_ms is not None else 0.0
        ratio = max(ratio, q(b["ttft_hist"]) / slo.ttft_ms) if b["ttft_hist"].sum() else ratio
        total = int(b["slo_total"][0])
        return RewardParts(cost=cost, slo_ratio=ratio, violations=total - int(b["slo_met"][0]),
                           requests=total)

    # ---- the scaling path ----------------------------------------------------------------
    def _apply_knobs(self, t: float) -> None:
        tg_, cl = self.targets, self.cluster
        want = np.stack([tg_.cpu, tg_.memory_mb, tg_.gpu_share,
                         tg_.concurrency.astype(float)], axis=1)
        slow = slice(2, 4) if self.s.cluster.in_place_resize else slice(0, 4)
        changed = self.is_expert & (want[:, slow] != self.template[:, slow]).any(axis=1)
        if self.s.cluster.in_place_resize and not self.s.cluster.in_place_memory_decrease:
            changed |= self.is_expert & (want[:, 1] < self.size[:, 1])  # a lower limit
        for node in np.flatnonzero(changed):
            self.template[node] = want[node]
            cl.version[node] += 1
            self.rollouts += 1
            self.rolling.add(int(node))
        self.size = np.where(self.is_expert[:, None], want[:, :2], self.template[:, :2])
        resize = self.is_expert & ~changed & (want[:, :2] != self.template[:, :2]).any(axis=1)
        for node in np.flatnonzero(resize):  # new pods start at template size: resize them too
            cl.resize(int(node), t, float(want[node, 0]), float(want[node, 1]))
        spec = self.spec_replicas
        for node in sorted(self.rolling):
            cl.roll(node, t, int(spec[node]), tuple(self.template[node]))
            if not cl.rolling(node):
                self.rolling.discard(node)
        cl.schedule_pending(t)

    def _autoscale(self, t0: float, t1: float) -> None:
        sim = self.s.simulator
        events = sorted({*_grid(t0, t1, self.keda_polling_s), *_grid(t0, t1, sim.hpa_sync_s)})
        for t in events:
            before = self.spec_replicas.copy()
            desired = self.targets.replicas.astype(float)
            if _on(t, self.keda_polling_s):
                self.hpa_e.poll(t, desired)
                self.hpa_s.poll(t, np.ones(self.n))
            if _on(t, sim.hpa_sync_s):
                self.hpa_e.sync(t, desired)
                self.hpa_s.sync(t, self._segment_load(t), per_pod=False, target=1.0,
                                base=np.maximum(self.hpa_s.replicas, 1))
            after = self.spec_replicas
            for node in np.flatnonzero(after != before):
                self.cluster.reconcile(int(node), t, int(after[node]), tuple(self.template[node]))
            self.cluster.schedule_pending(t)

    def _segment_load(self, t: float) -> np.ndarray:
        """Per node, the higher of the segments' two HPA metrics over their targets (the HPA's
        multi-metric rule: the highest proposal wins, the same as the proposal of the highest
        ratio): busy-time utilisation, and mean calls in flight per ready replica (Little's
        law: summed call latency over the window) over ``max_inflight``."""
        sim = self.s.simulator
        ticks = max(1, int(round(sim.hpa_sync_s / self.dt)))
        w = self.tel.window(self.tick - 1, ticks)
        ready = np.maximum(self.cluster.counts(t, self.n)["ready"], 1)
        span = ticks * self.dt
        busy = w["busy_s"] / (ready * self.server.par * span)
        inflight = w["lat_sum"] / (ready * np.maximum(self.template[:, 3], 1) * span)
        return np.maximum(busy / sim.segment_target_utilization,
                          inflight / sim.segment_target_inflight)

    def _drain(self, t: float) -> None:
        """Serve on after the last control tick until no request is in flight, at most
        ``simulator.drain_s`` (default: the longest a request can take and meet its SLO, so
        that an unfinished request, counted as infinitely late, has missed it for certain)."""
        limit = self.s.simulator.drain_s
        if limit is None:
            slo, cap = self.dag.slo, self.dag.decode_cap if self.dag.decodes else 0
            limit = (slo.ttft_ms + cap * (slo.tpot_ms or 0.0)) / 1000.0
        end, srv = t + limit, self.server
        while t < end - 1e-9:
            n = srv.next_req
            if n == srv.times.size and not (np.isnan(srv.e2e) & ~srv.dropped).any():
                break
            srv.run(t, t + self.dt, self.cluster, self.tel)
            t += self.dt

    # ---- observation ---------------------------------------------------------------------
    def _observe(self, t: float) -> Observation:
        win_ticks = max(1, int(round(self.s.metrics.rate_window_s / self.dt)))
        w = self.tel.window(self.tick - 1, win_ticks)
        span = min(win_ticks, max(self.tick, 1)) * self.dt
        counts = self.cluster.counts(t, self.n)
        q = lambda p, h, b=PASS_BOUNDS_S: histogram_quantile(p, h, b) * 1000.0  # noqa: E731
        cfg = self.template
        return Observation(
            time_s=t, nodes=tuple(self.dag.nodes), calls_per_s=w["calls"] / span,
            tokens_per_s=w["tokens"] / span,
            inflight=self.server.inflight_at(t, self.n, self.cluster),
            rejected_per_s=w["rejected"] / span,
            latency_p50_ms=q(0.5, w["lat_hist"], CALL_BOUNDS_S),
            latency_p95_ms=q(0.95, w["lat_hist"], CALL_BOUNDS_S),
            replicas_ready=counts["ready"].astype(float),
            replicas_desired=self.spec_replicas.astype(float),
            replicas_starting=counts["starting"].astype(float),
            replicas_pending=counts["pending"].astype(float), cpu=self.size[:, 0].copy(),
            memory_mb=self.size[:, 1].copy(), gpu_share=cfg[:, 2].copy(),
            concurrency=cfg[:, 3].copy(), request_rate=float(w["requests"][0] / span),
            p95_ms=float(q(0.95, w["e2e_hist"])), p99_ms=float(q(0.99, w["e2e_hist"])),
            ttft_p95_ms=float(q(0.95, w["ttft_hist"])),
            tpot_p95_ms=float(q(0.95, w["tpot_hist"])) if self.dag.decodes else float("nan"),
            slo_attainment=(float(w["slo_met"][0] / w["slo_total"][0]) if w["slo_total"][0]
                            else float("nan")),
            dropped_per_s=float(w["dropped"][0]) / span)


def _grid(t0: float, t1: float, period: float) -> list[float]:
    k0 = int(np.ceil(t0 / period - 1e-9))
    return [k * period for k in range(k0, int(np.ceil(t1 / period - 1e-9)))]


def _on(t: float, period: float) -> bool:
    return abs(t / period - round(t / period)) < 1e-9
