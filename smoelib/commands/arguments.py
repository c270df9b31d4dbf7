"""Arguments several subcommands share."""

from __future__ import annotations

import argparse

from smoelib.errors import ConfigError, Problem

__all__ = ["pipeline_argument"]


def pipeline_argument(args: argparse.Namespace) -> str:
    """The pipeline of a command that takes ``--pipeline PIPELINE`` or, as an alias kept for
    existing scripts, a positional ``PIPELINE``: exactly one of the two.

    Raises:
        ConfigError: neither or both given.
    """
    flag, positional = args.pipeline_flag, args.pipeline
    if (flag is None) == (positional is None):
        raise ConfigError([Problem("--pipeline", "give the pipeline.yml once: --pipeline "
                                   "PIPELINE (or as the positional argument)")],
                          source=f"smoe {getattr(args, 'command', None) or ''}".strip())
    return flag if flag is not None else positional
