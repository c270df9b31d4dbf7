"""smoe evaluate: every pipeline x trace x policy x seed on the same arrivals and routing.

Writes ``DIR/results.json`` (DESIGN.md), ``DIR/results.md`` (cost relative to ``hpa``, P95 and
P99 over the SLO, window violation rate, dropped requests, spread over seeds, acceptance
checks) and three plots: ``cost_vs_p95.png`` (per scenario), ``attainment_over_time.png`` (first
seed) and ``hottest_replicas.png`` (ready replicas of the busiest expert, first seed).
``DIR/runs.jsonl`` holds each run as it finishes: run the same command again and an evaluation
that was stopped resumes where it was.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from smoelib.commands.plotting import pyplot
from smoelib.core.guards import get_profile
from smoelib.errors import ConfigError, Problem
from smoelib.harness.evaluate import RunSpec, run_all, table_markdown, write_json

__all__ = ["add_arguments", "run", "split_list"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipelines", required=True,
                        help="comma-separated pipeline.yml paths, or random:SEED for a random "
                             "pipeline (seeds from 1000 on: never trained on)")
    parser.add_argument("--traces", required=True,
                        help="comma-separated built-in trace names or CSV paths")
    parser.add_argument("--policies", required=True,
                        help="comma-separated decider names, or ALL for every registered one")
    parser.add_argument("--seeds", required=True, help="comma-separated integers")
    parser.add_argument("--duration", type=float, required=True, help="simulated seconds")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--config", default=None, help="config.yaml (default: built-in)")
    parser.add_argument("--guards", default=None, metavar="PROFILE",
                        help="guard profile of every run: production or physical (default: "
                             "each policy's own: production for sMoE's policies, queueing and "
                             "oracle, physical for the external systems)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def split_list(text: str, flag: str) -> list[str]:
    """Comma-separated items, stripped; an empty list is an error naming ``flag``."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError([Problem(flag, "needs at least one item")])
    return items


def _policies(text: str, *, dag, settings) -> list[str]:
    """The named policies; ``ALL``: every registered one that can be built (a learned policy
    without a trained checkpoint is skipped with a note on stderr)."""
    from smoelib.policy.base import available, get_decider

    known = available()
    if text.strip() == "ALL":
        usable = []
        for name in known:
            try:
                get_decider(name, dag=dag, settings=settings)
            except ConfigError as e:
                print(f"note: skipping {name}: {'; '.join(e.lines())}", file=sys.stderr)
                continue
            usable.append(name)
        return usable
    names = split_list(text, "--policies")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError([Problem("--policies", f"unknown policy {n!r}; available: "
                                   f"{', '.join(known)}") for n in unknown])
    return names


def run(args: argparse.Namespace) -> int:
    problems = []
    if args.duration <= 0:
        problems.append(Problem("--duration", "must be > 0"))
    if args.jobs < 1:
        problems.append(Problem("--jobs", "must be >= 1"))
    try:
        seeds = [int(s) for s in split_list(args.seeds, "--seeds")]
    except ValueError:
        problems.append(Problem("--seeds", f"must be integers, got {args.seeds!r}"))
    if problems:
        raise ConfigError(problems)
    from smoelib.settings import load_settings
    from smoelib.sim.pipelines import load_pipeline

    pipelines = split_list(args.pipelines, "--pipelines")
    settings = load_settings(args.config)
    dags = [load_pipeline(p, settings=settings) for p in pipelines]  # bad input: before any work
    traces = split_list(args.traces, "--traces")
    policies = _policies(args.policies, dag=dags[0], settings=settings)
    if args.guards is not None:
        get_profile(args.guards)  # an unknown profile fails before any work
    specs = [RunSpec(p, t, pol, s, args.duration, args.config, guards=args.guards)
             for p in pipelines for t in traces for s in seeds for pol in policies]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_all(specs, jobs=args.jobs, progress=not args.no_progress,
                      journal=out / "runs.jsonl")
    write_json(results, out)
    command = "smoe evaluate " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 2 and sys.argv[1] == "evaluate" else "smoe evaluate"
    text = (f"# Evaluation\n\nCommand: `{command}`\n\n"
            f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))}; cost relative "
            "to `hpa` per seed (common random numbers).\n\n" + table_markdown(results))
    (out / "results.md").write_text(text)
    _plots(results, out)
    print(f"{len(results)} runs -> {out / 'results.json'}, {out / 'results.md'}")
    return 0


def _grid(plt, results, title: str):
    keys = list(dict.fromkeys((r["run"]["pipeline"], r["run"]["trace"]) for r in results))
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    fig.suptitle(title)
    return plt, fig, keys, [axes[i // cols][i % cols] for i in range(len(keys))]


def _plots(results, out: Path) -> None:
    import numpy as np

    plt = pyplot("the plots")
    if plt is None:
        return
    plt, fig, keys, axes = _grid(plt, results,
                                 "cost against the worse of P95 TTFT and TPOT / SLO (mean over "
                                 "seeds)")
    for key, ax in zip(keys, axes, strict=True):
        rs = [r["run"] for r in results if (r["run"]["pipeline"], r["run"]["trace"]) == key]
        for pol in dict.fromkeys(r["policy"] for r in rs):
            mine = [r for r in rs if r["policy"] == pol]
            x = np.minimum([r["slo_ratio"] for r in mine], 10.0)  # inf (drops): drawn at 10
            y = np.array([r["cost"] for r in mine])
            ax.errorbar(x.mean(), y.mean(), xerr=x.std(), yerr=y.std(), fmt="o", label=pol)
        ax.axvline(1.0, color="red", linestyle="--")
        ax.set_title(f"{key[0]} / {key[1]}")
        ax.set_xlabel("P95 / SLO (worse of TTFT, TPOT)")
        ax.set_ylabel("cost")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cost_vs_p95.png", dpi=90)
    plt.close(fig)
    first = min(r["run"]["seed"] for r in results)
    for name, xs, ys, ylabel, title in (
            ("attainment_over_time.png", "t_s", "attainment", "SLO attainment per 60 s window",
             f"SLO attainment over time against the target (seed {first})"),
            ("hottest_replicas.png", "hot_t_s", "hot_replicas", "ready replicas",
             f"replicas of the busiest expert (seed {first})")):
        plt, fig, keys, axes = _grid(plt, results, title)
        for key, ax in zip(keys, axes, strict=True):
            rs = [r for r in results if (r["run"]["pipeline"], r["run"]["trace"]) == key
                  and r["run"]["seed"] == first]
            for r in rs:
                ax.plot(r["series"][xs], r["series"][ys], label=r["run"]["policy"], lw=0.8)
            if ys == "attainment" and rs:
                ax.axhline(rs[0]["run"]["attainment_target"], color="red", linestyle="--")
            hot = f" ({rs[0]['series']['hot_expert']})" if rs and ys != "attainment" else ""
            ax.set_title(f"{key[0]} / {key[1]}{hot}")
            ax.set_xlabel("simulated time (s)")
            ax.set_ylabel(ylabel)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
