"""Check a pipeline.yml (and a config.yaml) and print a summary of the pipeline.

Exits 0 when both are valid; otherwise prints one line per problem to stderr, naming the file,
the stage or field and the line, and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from smoelib.commands.arguments import pipeline_argument
from smoelib.errors import EXIT_BAD_INPUT, ConfigError, PipelineError
from smoelib.pipeline.topology import build_dag
from smoelib.settings import load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", dest="pipeline_flag", metavar="PIPELINE",
                        help="path to pipeline.yml")
    parser.add_argument("pipeline", metavar="PIPELINE", nargs="?", default=None,
                        help="the same, as a positional argument (an alias of --pipeline)")
    parser.add_argument("--config", metavar="CONFIG", help="config.yaml (default: built-in)")


def operator_problems(settings, *, source: str | None) -> list[str]:
    """What ``smoe serve`` would refuse beyond the settings tree's own checks, by the same
    check (the metric source's template names), without touching the network."""
    from smoelib.control.metrics import query_problems

    problems = query_problems(settings.metrics.queries)
    return ConfigError(problems, source=source).lines() if problems else []


def run(args: argparse.Namespace) -> int:
    args.pipeline = pipeline_argument(args)
    problems: list[str] = []
    dag = None
    try:
        dag = build_dag(config=args.pipeline, validate=True, attach_metadata=True)
    except PipelineError as e:
        problems += e.lines()
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        problems += e.lines()
        settings = None
    if dag is not None and settings is not None:
        problems += operator_problems(settings, source=args.config)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(dag.summary())
    t = dag.totals("max")
    gpus = settings.cluster.gpus
    if settings.gpu_sharing.mode != "none" and t["gpus"] > gpus:
        print(f"  note: at max replicas the experts ask for {t['gpus']:g} GPUs; the cluster "
              f"has {gpus} (config cluster.gpus): the guards cap the total")
    mode = settings.gpu_sharing.mode
    print(f"  config: {args.config or 'built-in defaults'} (GPU sharing {mode})")
    return 0

