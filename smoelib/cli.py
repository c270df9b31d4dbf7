"""The ``smoe`` command: parses arguments, wires the parts, prints. No logic lives here.

Each subcommand is a pair ``(add_arguments(parser), run(args) -> int)``; :data:`COMMANDS` lists
them. Bad input raises a :class:`~smoelib.errors.SmoeError`, printed here as one line per problem
on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Iterable, Sequence

from smoelib._version import __version__
from smoelib.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, SmoeError

# name -> (module, one-line help). Each module defines add_arguments(parser) and run(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("smoelib.commands.validate", "check a pipeline.yml (and config) and summarise it"),
    "serve": ("smoelib.commands.serve", "serve the KEDA external scaler (and the controller)"),
    "simulate": ("smoelib.commands.simulate", "run a policy on the simulated cluster"),
    "plan": ("smoelib.commands.plan", "show (and apply) the patches a decision file needs"),
    "manifests": ("smoelib.commands.manifests", "generate one KEDA ScaledObject per expert"),
    "evaluate": ("smoelib.commands.evaluate", "compare policies on the same simulated requests"),
    "tune": ("smoelib.commands.tune", "tune a baseline's settings on the training traces"),
    "train": ("smoelib.commands.train", "train the sMoE policy with PPO on the simulator"),
    "demo": ("smoelib.commands.demo", "run everything on the embedded simulated cluster"),
    "profile": ("smoelib.commands.profile", "time an expert on this machine and write the "
                "profile block a pipeline uses"),
}

def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``smoe`` parser. Every subcommand is listed; only those in ``commands`` (all when
    None) import their module and take their arguments, so ``smoe --help`` and a light command
    never import torch or the simulator for the others."""
    parser = argparse.ArgumentParser(
        prog="smoe", description="sMoE: autoscaling for Mixture-of-Experts inference on "
        "KEDA-driven OpenFaaS. Every command takes --config FILE and works without one.")
    parser.add_argument("--version", action="version", version=f"smoe {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = set(COMMANDS) if commands is None else set(commands)
    for name, (module, help_) in COMMANDS.items():
        if name not in wanted:
            sub.add_parser(name, help=help_, description=help_, add_help=False)
            continue
        mod = importlib.import_module(module)
        cmd = sub.add_parser(name, help=help_, description=plain_text(mod.__doc__ or help_),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(cmd)
        cmd.set_defaults(run=mod.run)
    return parser


_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc):`~?([^`]+)`")


def plain_text(doc: str) -> str:
    """A module docstring as help text: reStructuredText roles and literals as plain words
    (``:func:`~a.b.c``` -> ``c``, double backquotes dropped)."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], doc)
    return text.replace("``", "").strip()


def main(argv: Sequence[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in args_in if a in COMMANDS), None)
    parser = build_parser(() if chosen is None else (chosen,))
    args = parser.parse_args(args_in)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", stream=sys.stderr)
    try:
        return int(args.run(args) or 0)
    except SmoeError as e:
        lines = e.lines() if hasattr(e, "lines") else [str(e)]
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
