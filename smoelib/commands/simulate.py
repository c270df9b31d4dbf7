"""smoe simulate: run a policy on the simulated cluster and print what it achieved.

The policy runs through the one tick under its guard profile (``--guards``; default: the one
the policy runs under everywhere) and the simulated actuator, as the controller would run it.
Prints the calls simulated, requests, dropped, TTFT and TPOT P50/P95/P99 against their SLOs
(a dropped request's are infinite), SLO attainment, goodput, the 60 s window violation rate
(windows whose attainment is below the target), cost, cold starts, 429s, rollouts and the pods
they replaced against the rollout budget. ``--out
DIR`` writes the per-window series (``windows.csv``) and a plot of P95 and replicas over time
(``windows.png``). With ``--exporter-port`` the run is
paced at ``--speed`` times real time and serves ``/metrics``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from smoelib.commands.plotting import pyplot
from smoelib.core import work
from smoelib.core.guards import get_profile
from smoelib.errors import ConfigError, Problem
from smoelib.harness.evaluate import episode_cost, start_episode
from smoelib.pipeline.topology import build_dag
from smoelib.policy.base import default_guards, get_decider
from smoelib.settings import load_settings
from smoelib.sim.loop import SimLoop
from smoelib.sim.summary import Summary, summarise, window_series

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", required=True, help="pipeline.yml")
    parser.add_argument("--config", default=None, help="config.yaml (default: built-in)")
    parser.add_argument("--trace", default="conv",
                        help="conv, conv-train, conv-eval, a synthetic family (poisson, bursty, "
                        "diurnal, diurnal-day, weekly, spike, onoff; ':code' or ':agent' picks a "
                        "token mix), "
                        "or a CSV path in the Azure LLM trace format")
    parser.add_argument("--policy", default="static", help="decider name (default static)")
    parser.add_argument("--guards", default=None, metavar="PROFILE",
                        help="guard profile: production or physical (default: the policy's "
                             "own)")
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds")
    parser.add_argument("--seed", type=int, default=0, help="episode seed")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="stretch the trace's time axis by this factor")
    parser.add_argument("--rate-scale", type=float, default=None,
                        help="multiply the request rate by this factor "
                             "(default: simulator.rate_scale)")
    parser.add_argument("--out", default=None, help="write windows.csv and windows.png here")
    parser.add_argument("--exporter-port", type=int, default=None,
                        help="serve /metrics on this port and run paced")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="with --exporter-port: simulated seconds per wall second")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.duration <= 0:
        raise ConfigError([Problem("--duration", "must be > 0")])
    if args.speed <= 0:
        raise ConfigError([Problem("--speed", "must be > 0")])
    dag = build_dag(args.pipeline)
    settings = load_settings(args.config).for_pipeline(dag.name)  # as smoe evaluate runs it
    profile = get_profile(args.guards or default_guards(args.policy))
    decider = get_decider(args.policy, dag=dag, settings=settings)
    started = time.monotonic()
    loop = simulate(dag, settings, decider=decider, profile=profile, trace=args.trace,
                    duration_s=args.duration, seed=args.seed, time_scale=args.time_scale,
                    rate_scale=args.rate_scale, exporter_port=args.exporter_port,
                    speed=args.speed, progress=not args.no_progress)
    wall = time.monotonic() - started
    summary = dataclasses.replace(summarise(loop.env), cost=episode_cost(loop, decider))
    tr = loop.env.trace
    generated = tr.generated if tr.generated is not None else np.zeros_like(tr.tokens)
    expected = float(work.expected_calls(dag, tr.tokens, generated).sum())
    print(_render(summary, dag=dag, args=args, wall_s=wall, settings=settings,
                  profile=profile.name, expected_calls=expected))
    if args.out:
        _write_out(Path(args.out), loop.env)
    return 0


def simulate(dag, settings, *, decider, profile, trace: str, duration_s: float, seed: int,
             time_scale: float = 1.0, rate_scale: float | None = None,
             exporter_port: int | None = None, speed: float = 1.0,
             progress: bool = False) -> SimLoop:
    """Run ``decider`` for one episode through the tick and the simulated actuator; with
    ``exporter_port``, paced at ``speed`` x real time and serving ``/metrics``. Returns the
    finished loop (its env and the decisions applied at every tick)."""
    from tqdm import tqdm

    loop = start_episode(dag, settings, decider, profile=profile, trace=trace,
                         duration_s=duration_s, seed=seed, time_scale=time_scale,
                         rate_scale=rate_scale)
    env = loop.env
    collector = None
    if exporter_port is not None:
        from smoelib.sim.exporter import SimCollector, serve, snapshot
        collector = SimCollector(dag)
        serve(collector, exporter_port)
    started = time.monotonic()
    ticks = int(-(-duration_s // env.dt))
    with tqdm(total=ticks, unit="tick", disable=not progress, leave=False) as bar:
        def after(_step) -> None:
            bar.update(1)
            if collector is not None:
                collector.publish(snapshot(env))
                lag = env.tick * env.dt / speed - (time.monotonic() - started)
                if lag > 0:
                    time.sleep(lag)
        loop.run(decider, on_step=after)
    return loop


def _render(s: Summary, *, dag, args, wall_s: float, settings, profile: str,
            expected_calls: float) -> str:
    pct = 100.0 * s.dropped / max(s.requests, 1)
    currency = settings.prices.currency
    budget = settings.guards.rollout_budget_per_min
    minutes = math.ceil(args.duration / 60.0 - 1e-9)
    allowed = (f"the rollout budget allows {budget} x {minutes} min = {budget * minutes}"
               if profile == "production" else f"guards {profile}: no rollout budget")
    lines = [
        f"pipeline {dag.name} ({dag.kind}), trace {args.trace}, policy {args.policy} (guards "
        f"{profile}), seed {args.seed}: {args.duration:g} s simulated in {wall_s:.1f} s "
        f"({s.calls} expert and segment calls, {s.calls / max(wall_s, 1e-9):,.0f} per second; "
        f"analytic count {expected_calls:,.0f}, {s.calls / max(expected_calls, 1) - 1:+.2%})",
        f"requests {s.requests}, completed {s.completed}, dropped {s.dropped} ({pct:.2f}%; a "
        f"dropped request has infinite latency and counts in every percentile)",
        _latency_line("TTFT", s.ttft_p50_ms, s.ttft_p95_ms, s.ttft_p99_ms, s.ttft_slo_ms),
    ]
    if math.isfinite(s.tpot_slo_ms):
        lines.append(_latency_line("TPOT", s.tpot_p50_ms, s.tpot_p95_ms, s.tpot_p99_ms,
                                   s.tpot_slo_ms))
    lines += [
        f"SLO attainment {s.slo_attainment:.4f} (target {s.attainment_target:g}); goodput "
        f"{s.goodput:.2f} requests/s; window violation rate {s.window_violation_rate:.3f} (60 s "
        f"windows below the target)",
        f"cost {s.cost:.4f} {currency}",
        f"cold starts {s.cold_starts}, 429s {s.rejected} (retries {s.retries}), "
        f"rollouts {s.rollouts}, pods replaced {s.pods_replaced} ({allowed})",
    ]
    return "\n".join(lines)


def _latency_line(name: str, p50: float, p95: float, p99: float, slo: float) -> str:
    fmt = lambda v: "inf" if math.isinf(v) else f"{v:.1f}"  # noqa: E731
    verdict = "over" if p95 > slo else "within"
    return (f"{name} P50 {fmt(p50)} ms, P95 {fmt(p95)} ms ({verdict} SLO {slo:g} ms), "
            f"P99 {fmt(p99)} ms")


def _write_out(out: Path, env) -> None:
    out.mkdir(parents=True, exist_ok=True)
    series = window_series(env)
    keys = ["t_s", "requests", "dropped", "ttft_p95_ms", "tpot_p95_ms", "attainment",
            "violation", "cost", "expert_replicas", "segment_replicas"]
    with (out / "windows.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for i in range(series["t_s"].size):
            w.writerow([f"{series[k][i]:.6g}" for k in keys])
    plt = pyplot("windows.png")
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    slo = env.dag.slo
    ratio = series["ttft_p95_ms"] / slo.ttft_ms
    ax1.plot(series["t_s"], ratio, label="P95 TTFT / SLO per 60 s window")
    if slo.tpot_ms is not None:
        ax1.plot(series["t_s"], series["tpot_p95_ms"] / slo.tpot_ms,
                 label="P95 TPOT / SLO per 60 s window")
    ax1.axhline(1.0, color="red", linestyle="--", label="SLO")
    ax1.set_ylabel("of the SLO")
    ax1.legend(loc="upper right")
    ax2.plot(series["t_s"], series["expert_replicas"], label="expert replicas (ready)")
    ax2.plot(series["t_s"], series["segment_replicas"], label="segment replicas (ready)")
    ax2.set_xlabel("simulated time (s)")
    ax2.set_ylabel("replicas")
    ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "windows.png", dpi=100)
    plt.close(fig)
