"""smoe tune: grid or random search of one baseline's settings for the lowest cost at
the SLO attainment target, on training traces and seeds below 1000 only.

Prints every trial and the best settings as the ``baselines:`` block of config.yaml;
``--write FILE`` also writes that block to FILE.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from smoelib.commands.evaluate import split_list
from smoelib.errors import ConfigError, Problem
from smoelib.harness.tune import SECTION, tune

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="the baseline to tune")
    parser.add_argument("--pipeline", required=True,
                        help="pipeline.yml path (comma-separated for several)")
    parser.add_argument("--traces", required=True,
                        help="comma-separated training traces (conv-train, synthetic)")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds below 1000")
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds")
    parser.add_argument("--budget", type=int, default=12, help="configurations to try")
    parser.add_argument("--search-seed", type=int, default=0, help="seed of the draw")
    parser.add_argument("--config", default=None, help="config.yaml (default: built-in)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--write", default=None, help="write the best block to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.budget < 1 or args.duration <= 0 or args.jobs < 1:
        raise ConfigError([Problem("--budget/--duration/--jobs", "must be positive")])
    try:
        seeds = [int(s) for s in split_list(args.seeds, "--seeds")]
    except ValueError as e:
        raise ConfigError([Problem("--seeds", f"must be integers, got {args.seeds!r}")]) from e
    best, trials = tune(args.policy, pipelines=split_list(args.pipeline, "--pipeline"),
                        traces=split_list(args.traces, "--traces"), seeds=seeds,
                        duration_s=args.duration, budget=args.budget,
                        search_seed=args.search_seed, config=args.config, jobs=args.jobs,
                        progress=not args.no_progress)
    for t in sorted(trials, key=lambda t: (not t.feasible, t.cost)):
        flag = "ok " if t.feasible else "bad"
        print(f"{flag} cost {t.cost:.4f} attainment {t.attainment:.4f} dropped {t.dropped} "
              f"runs meeting the target {t.runs_met} "
              f"{t.values}")
    block: dict = {}
    for path, value in best.values.items():
        node = block.setdefault("baselines", {}).setdefault(
            SECTION.get(args.policy, args.policy), {})
        *head, leaf = path.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[leaf] = value
    text = yaml.safe_dump(block, sort_keys=False)
    print(f"best ({'feasible' if best.feasible else 'NO feasible configuration'}):\n{text}",
          end="")
    if args.write:
        Path(args.write).write_text(text)
    return 0
