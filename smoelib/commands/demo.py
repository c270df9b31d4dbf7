"""Run the whole product on one machine: the embedded default.

The simulated cluster (with its exporter), the KEDA external scaler on a real loopback gRPC
port polled the way KEDA polls it, the controller with the configured policy on an accelerated
clock, and the vertical module's simulated backend. Prints a live per-layer table and ends with
a comparison against the ``hpa`` baseline on the same trace and seed, run through the same
controller, guards, scaler and vertical path. With ``--prometheus URL``
the controller reads a real Prometheus that scrapes the exporter (the run is then paced).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from smoelib.errors import ConfigError, Problem

DEFAULT_PIPELINE = "examples/pipelines/gpt2-moe.yml"
"""A decoder: the demo shows TTFT, TPOT and goodput on the realistic workload."""
TABLE_EVERY_S = 300.0
"""Simulated seconds between two live tables."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default=DEFAULT_PIPELINE, help="pipeline.yml "
                        f"(default: {DEFAULT_PIPELINE})")
    parser.add_argument("--config", help="config.yaml (default: built-in)")
    parser.add_argument("--trace", default="conv-eval", help="built-in trace or CSV "
                        "(default: conv-eval, never used for tuning or training)")
    parser.add_argument("--duration", type=float, default=300.0, metavar="SECONDS",
                        help="simulated seconds (default: 300, the first five minutes of "
                             "conv-eval: every token of every request is simulated)")
    parser.add_argument("--seed", type=int, default=1000, help="seed (default: 1000)")
    parser.add_argument("--policy", help="decider (default: policy.name from the config)")
    parser.add_argument("--baseline", default="hpa", help="what to compare with (default: hpa)")
    parser.add_argument("--guards", default=None, metavar="PROFILE",
                        help="guard profile of both runs: production or physical (default: each "
                             "policy's own: production for smoe, physical for hpa)")
    parser.add_argument("--prometheus", metavar="URL", help="read a real Prometheus that "
                        "scrapes the exporter instead of the simulator directly")
    parser.add_argument("--exporter-port", type=int, default=0, metavar="PORT",
                        help="port of the simulator's /metrics (default: any free port)")
    parser.add_argument("--speed", type=float, default=20.0, help="with --prometheus: "
                        "simulated seconds per real second (default: 20)")


def run(args: argparse.Namespace) -> int:
    from smoelib.harness.demo import DemoRun, compare

    if not Path(args.pipeline).exists():
        raise ConfigError([Problem("--pipeline", "no such file (run from the repository root, "
                                   "or pass --pipeline)")], source=args.pipeline)
    started = time.monotonic()
    demo = DemoRun.build(pipeline=args.pipeline, config=args.config, trace=args.trace,
                         duration_s=args.duration, seed=args.seed, policy=args.policy,
                         prometheus=args.prometheus, exporter_port=args.exporter_port,
                         speed=args.speed, guards=args.guards)
    print(demo.banner(), flush=True)
    ours = demo.run(table_every_s=TABLE_EVERY_S, out=sys.stdout)
    theirs = demo.baseline(args.baseline)
    print(compare(ours, theirs, policy=demo.policy, baseline=args.baseline,
                  currency=demo.settings.prices.currency,
                  profiles=(demo.profiles[demo.policy], demo.profiles[args.baseline]),
                  lifts=(demo.lifts[demo.policy], demo.lifts[args.baseline])))
    if "production" in (demo.profiles[demo.policy], demo.profiles[args.baseline]):
        print(f"under the production guards slow-knob rollouts (GPU share, concurrency, lower "
              f"memory) are rationed to guards.rollout_budget_per_min = "
              f"{demo.settings.guards.rollout_budget_per_min} pods a minute; under physical "
              "they all start at once")
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0
