"""``smoe demo``: wire the embedded default together, run it, compare with a baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TextIO

from prometheus_client import CollectorRegistry

from smoelib.control.controller import SMoEController
from smoelib.control.report import layer_table
from smoelib.core.guards import get_profile
from smoelib.core.shield import lifts as shield_lifts
from smoelib.harness.embedded import EmbeddedCluster, KedaPoller, SimClock
from smoelib.pipeline.topology import PipelineDAG, build_dag, slo_text
from smoelib.policy.base import default_guards, get_decider
from smoelib.scaler.server import create_server
from smoelib.scaler.store import DecisionStore
from smoelib.settings import Settings, load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.summary import Summary, summarise
from smoelib.vertical.factory import vertical_loop

__all__ = ["DemoRun", "compare"]


@dataclass
class DemoRun:
    """One embedded run: a pipeline, a trace, a seed, a policy."""

    dag: PipelineDAG
    settings: Settings
    trace: str
    duration_s: float
    seed: int
    policy: str
    prometheus: str | None = None
    exporter_port: int = 0
    speed: float = 20.0
    guards: str | None = None
    log: list[str] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)
    """policy -> the guard profile its run used"""
    lifts: dict[str, float] = field(default_factory=dict)
    """policy -> the safety shield's lifts per expert-tick in its run"""

    @classmethod
    def build(cls, *, pipeline: str, config: str | None, trace: str, duration_s: float,
              seed: int, policy: str | None, prometheus: str | None = None,
              exporter_port: int = 0, speed: float = 20.0, guards: str | None = None
              ) -> DemoRun:
        settings = load_settings(config)
        dag = build_dag(config=pipeline, validate=True, attach_metadata=True)
        if guards is not None:
            get_profile(guards)  # an unknown profile fails before any work
        return cls(dag, settings, trace, duration_s, seed, policy or settings.policy.name,
                   prometheus, exporter_port, speed, guards)

    def banner(self) -> str:
        source = f"Prometheus at {self.prometheus}" if self.prometheus else "the simulator"
        return (f"smoe demo: {self.dag.name} ({self.dag.kind}, {len(self.dag.experts)} experts, "
                f"{slo_text(self.dag.slo)}), trace {self.trace}, {self.duration_s:.0f} s, seed "
                f"{self.seed}; policy {self.policy} reading {source}; replicas reach the "
                "cluster through the KEDA external scaler over gRPC")

    def run(self, *, table_every_s: float, out: TextIO | None,
            policy: str | None = None) -> Summary:
        """Run the policy (or ``policy``) through the controller, the scaler and the simulated
        cluster; ``out`` gets a live per-layer table every ``table_every_s`` simulated
        seconds (None: quiet)."""
        env = SimEnv(self.dag, self.settings, trace=self.trace, duration_s=self.duration_s)
        first = env.reset(self.seed)
        clock_box: list[SimClock] = []
        store = DecisionStore(staleness_s=self.settings.scaler.staleness_s,
                              clock=lambda: clock_box[0].now())
        store.add_pipeline(self.dag)
        server, port = create_server("127.0.0.1:0", store=store, registry=CollectorRegistry())
        poller = KedaPoller(f"127.0.0.1:{port}", self.dag, self.settings)
        exporter = self._exporter(env) if self.prometheus else None
        next_table = [table_every_s]

        def on_tick(result: Any) -> None:
            if exporter is not None:
                exporter.publish(_snapshot(env))
            t = env.tick * env.dt
            if out is not None and t >= next_table[0] and controller.last is not None:
                next_table[0] += table_every_s
                print(f"\n-- t = {t:.0f} s, cost so far {env.cost:.3f} "
                      f"{self.settings.prices.currency}", file=out)
                print(layer_table(result.observation, controller.last, self.dag,
                                  self.settings), file=out, flush=True)

        cluster = EmbeddedCluster(env, poller, first, on_tick=on_tick)
        clock = SimClock(cluster, speed=self.speed if self.prometheus else None)
        clock_box.append(clock)
        name = policy or self.policy
        decider = get_decider(name, dag=self.dag, settings=self.settings)
        decider.reset(self.seed)
        vertical = vertical_loop(self.dag, self.settings, sim_target=cluster.functions,
                                kind="simulated")
        controller = SMoEController(
            self.dag, self.settings, prometheus_url=self.prometheus, dry_run=False,
            log_interval=math.inf, warmup_seconds=0, clock=clock,
            source=None if self.prometheus else cluster, decider=decider, store=store,
            vertical=vertical, guards=self.guards or default_guards(name))
        self.profiles[name] = controller.profile.name
        steps = int(round(self.duration_s / env.dt))
        try:
            reports = controller.run(interval=env.dt, max_steps=steps, verbose=False)
            while not cluster.done:  # the ticks the controller's last step did not sleep through,
                cluster.advance(env.dt)  # then the drain (SimEnv.step at the episode's end)
        finally:
            poller.close()
            server.stop(grace_s=0)
        self.reports = reports
        self.keda_errors = poller.errors
        self.lifts[name] = sum(shield_lifts(r.fired) for r in reports) / max(
            len(reports) * len(self.dag.experts), 1)
        return summarise(env)

    def _exporter(self, env: SimEnv) -> Any:
        from smoelib.sim.exporter import SimCollector, serve

        collector = SimCollector(self.dag)
        serve(collector, self.exporter_port)
        return collector

    def baseline(self, name: str) -> Summary:
        """``name`` on the same trace and seed, through the same controller, scaler and
        vertical path (only the decider differs, and the guard profile it runs under unless
        the demo was given one)."""
        return self.run(table_every_s=math.inf, out=None, policy=name)


def _snapshot(env: SimEnv) -> dict[str, Any]:
    from smoelib.sim.exporter import snapshot

    return snapshot(env)


def compare(ours: Summary, theirs: Summary, *, policy: str, baseline: str, currency: str,
            profiles: tuple[str, str] | None = None,
            lifts: tuple[float, float] | None = None) -> str:
    """A side-by-side table of two runs on the same requests (with the guard profile each ran
    under, and the safety shield's lifts per expert-tick, when given)."""
    rows = [("requests", "requests", "{:.0f}"), ("dropped", "dropped", "{:.0f}"),
            ("TTFT P50 ms", "ttft_p50_ms", "{:.1f}"), ("TTFT P95 ms", "ttft_p95_ms", "{:.1f}"),
            ("TTFT P99 ms", "ttft_p99_ms", "{:.1f}"), ("TPOT P50 ms", "tpot_p50_ms", "{:.1f}"),
            ("TPOT P95 ms", "tpot_p95_ms", "{:.1f}"), ("TPOT P99 ms", "tpot_p99_ms", "{:.1f}"),
            ("SLO attainment", "slo_attainment", "{:.4f}"), ("goodput req/s", "goodput",
                                                             "{:.2f}"),
            ("window violations", "window_violation_rate", "{:.3f}"),
            (f"cost {currency}", "cost", "{:.4f}"), ("cold starts", "cold_starts", "{:.0f}"),
            ("429s", "rejected", "{:.0f}"), ("rollouts", "rollouts", "{:.0f}"),
            ("pods replaced", "pods_replaced", "{:.0f}")]
    width = max(len(policy), len(baseline), 10)
    lines = ["", f"{'':<18} {policy:>{width}} {baseline:>{width}}"]
    if profiles is not None:
        lines.append(f"{'guards':<18} {profiles[0]:>{width}} {profiles[1]:>{width}}")
    for label, key, fmt in rows:
        a, b = getattr(ours, key), getattr(theirs, key)
        lines.append(f"{label:<18} {fmt.format(a):>{width}} {fmt.format(b):>{width}}")
    if lifts is not None:
        lines.append(f"{'shield lifts':<18} {lifts[0]:>{width}.3f} {lifts[1]:>{width}.3f}")
    ratio = ours.cost / theirs.cost if theirs.cost else math.nan
    tpot = (f", TPOT {ours.tpot_slo_ms:g} ms" if math.isfinite(ours.tpot_slo_ms) else "")
    lines.append(f"cost of {policy} is {ratio:.2f} x {baseline}; SLO attainment "
                 f"{ours.slo_attainment:.4f} vs {theirs.slo_attainment:.4f} against a target of "
                 f"{ours.attainment_target:g} (TTFT {ours.ttft_slo_ms:g} ms{tpot})")
    lines.append(f"60 s windows whose attainment fell below {ours.attainment_target:g}: "
                 f"{ours.window_violation_rate:.0%} for {policy}, "
                 f"{theirs.window_violation_rate:.0%} for {baseline}")
    return "\n".join(lines)
