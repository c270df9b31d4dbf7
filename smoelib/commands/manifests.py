"""Generate one KEDA ScaledObject per expert of a pipeline (none for segments or other functions).

With ``-o DIR`` writes ``DIR/<function>.yaml`` per expert and ``DIR/kustomization.yaml`` listing
them, so ``kubectl kustomize DIR`` (or an overlay naming DIR) renders them; files in DIR that
sMoE did not write are left alone. Without ``-o`` prints the ScaledObjects as one multi-document
YAML on stdout. Bad input exits 2 with one line per problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smoelib.commands.arguments import pipeline_argument
from smoelib.pipeline.topology import build_dag
from smoelib.scaler.manifests import file_name, kustomization, render_yaml, scaled_objects
from smoelib.settings import load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", dest="pipeline_flag", metavar="PIPELINE",
                        help="path to pipeline.yml")
    parser.add_argument("pipeline", metavar="PIPELINE", nargs="?", default=None,
                        help="the same, as a positional argument (an alias of --pipeline)")
    parser.add_argument("--config", metavar="CONFIG", help="config.yaml (default: built-in)")
    parser.add_argument("-o", "--out", metavar="DIR",
                        help="write one file per ScaledObject and a kustomization.yaml here "
                             "(created if missing); default: print to stdout")


def run(args: argparse.Namespace) -> int:
    args.pipeline = pipeline_argument(args)
    dag = build_dag(config=args.pipeline, validate=True, attach_metadata=True)
    settings = load_settings(args.config)
    objects = scaled_objects(dag, settings)
    if args.out is None:
        sys.stdout.write(render_yaml(objects))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [file_name(o) for o in objects]
    for name, obj in zip(files, objects, strict=True):
        (out / name).write_text(render_yaml([obj]))
    (out / "kustomization.yaml").write_text(render_yaml([kustomization(files)]))
    print(f"wrote {len(objects)} ScaledObjects for pipeline {dag.name} "
          f"(namespace {dag.namespace}) and kustomization.yaml to {out}", file=sys.stderr)
    return 0
