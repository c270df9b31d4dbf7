"""smoe tune: grid or random search of one baseline's settings for the lowest cost at
the SLO attainment target, on training traces and seeds below 1000 only.

Prints every trial and the best settings as the ``baselines:`` block of config.yaml;
``--write FILE`` also writes that block to FILE (merged into what FILE already holds, its
comment lines kept at the top, so one file can collect several baselines' picks).
``--per-pipeline`` tunes each pipeline on its own, with the same budget each, and writes its
pick under ``baselines.per_pipeline.<name>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from smoelib.commands.evaluate import split_list
from smoelib.errors import ConfigError, Problem
from smoelib.harness.tune import SECTION, tune
from smoelib.pipeline.topology import build_dag

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
    parser.add_argument("--write", default=None,
                        help="merge the best block into this YAML file (created if missing)")
    parser.add_argument("--per-pipeline", action="store_true",
                        help="tune each pipeline on its own (same budget each); the picks go "
                             "under baselines.per_pipeline.<pipeline name>")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.budget < 1 or args.duration <= 0 or args.jobs < 1:
        raise ConfigError([Problem("--budget/--duration/--jobs", "must be positive")])
    try:
        seeds = [int(s) for s in split_list(args.seeds, "--seeds")]
    except ValueError as e:
        raise ConfigError([Problem("--seeds", f"must be integers, got {args.seeds!r}")]) from e
    pipelines = split_list(args.pipeline, "--pipeline")
    groups = [[p] for p in pipelines] if args.per_pipeline else [pipelines]
    block: dict = {}
    for group in groups:
        best, trials = tune(args.policy, pipelines=group,
                            traces=split_list(args.traces, "--traces"), seeds=seeds,
                            duration_s=args.duration, budget=args.budget,
                            search_seed=args.search_seed, config=args.config, jobs=args.jobs,
                            progress=not args.no_progress)
        name = build_dag(group[0]).name
        if args.per_pipeline:
            print(f"{name}:")
        for t in sorted(trials, key=lambda t: (not t.feasible, t.cost)):
            flag = "ok " if t.feasible else "bad"
            print(f"{flag} cost {t.cost:.4f} attainment {t.attainment:.4f} dropped {t.dropped} "
                  f"runs meeting the target {t.runs_met} "
                  f"{t.values}")
        print(f"best{' for ' + name if args.per_pipeline else ''} "
              f"({'feasible' if best.feasible else 'NO feasible configuration'})")
        pick = {SECTION.get(args.policy, args.policy): _nest(best.values)}
        _merge(block, {"baselines": {"per_pipeline": {name: pick}} if args.per_pipeline
                       else pick})
    print(yaml.safe_dump(block, sort_keys=False), end="")
    if args.write:
        target = Path(args.write)
        old = target.read_text() if target.exists() else ""
        have = yaml.safe_load(old) if old else None
        merged = _merge(have if isinstance(have, dict) else {}, block)
        header = "".join(f"{line}\n" for line in old.splitlines() if line.startswith("#"))
        target.write_text(header + yaml.safe_dump(merged, sort_keys=False))
    return 0


def _nest(values: dict) -> dict:
    """Dotted paths (``vertical.cpu``) and their values as nested mappings."""
    out: dict = {}
    for path, value in values.items():
        *head, leaf = path.split(".")
        node = out
        for h in head:
            node = node.setdefault(h, {})
        node[leaf] = value
    return out


def _merge(into: dict, new: dict) -> dict:
    """``into`` with ``new``'s leaves written over it (nested mappings merged)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into
