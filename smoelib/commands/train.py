"""smoe train: behaviour cloning from ``queueing``, then PPO, on the simulator's training split.

Writes ``OUT/checkpoint.pt`` (resumable with ``--resume``), ``OUT/best.pt`` (selected on
training-split validation), ``OUT/log.csv`` (``losses/...``, ``charts/...``, ``val/...``), its
plot ``OUT/curves.png`` and,
with ``--export FILE``, the selected policy alone (no optimizer: small) for bundling.
Evaluation data (``conv-eval``, ``conv``, CSV files, seeds >= 1000) is refused. docs/training.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from smoelib.commands.evaluate import split_list
from smoelib.commands.plotting import pyplot
from smoelib.errors import ConfigError, Problem

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from smoelib.policy.train import TrainConfig

    d = TrainConfig()
    parser.add_argument("--out", required=True, help="run directory (checkpoints, log.csv)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt (same settings)")
    parser.add_argument("--architecture", default=d.architecture,
                        help="smoe, smoe-mlp or smoe-independent")
    parser.add_argument("--capacity", default=d.capacity,
                        help="capacity masks of the decoder: even (the default) or spare "
                             "(layer budgets follow the current use; for loaded clusters)")
    parser.add_argument("--replica-base", default=d.replica_base,
                        help="what the replica changes are relative to: current (the default) "
                             "or queueing (a residual policy over the queueing plan)")
    parser.add_argument("--features", default=d.features,
                        help="node features: lookahead (the default: the base ones and each "
                             "expert's load against the shield's bound, its layer's popularity "
                             "shift and the time since its last changes) or base")
    parser.add_argument("--pipelines", default=",".join(d.pipelines),
                        help="comma-separated pipeline.yml paths")
    parser.add_argument("--random-pipelines", type=int, default=d.random_pipelines,
                        metavar="N", help="also train on N random pipelines (seeds 0 to N-1)")
    parser.add_argument("--traces", default=",".join(d.traces),
                        help="comma-separated training traces (conv-train, synthetic)")
    parser.add_argument("--seeds", default=f"{d.seeds[0]}:{d.seeds[1]}",
                        help="episode seed range LO:HI, HI <= 1000")
    parser.add_argument("--seed", type=int, default=d.seed, help="run seed")
    parser.add_argument("--bc-rounds", type=int, default=d.bc_rounds,
                        help="behaviour-cloning rounds")
    parser.add_argument("--bc-episodes", type=int, default=d.bc_episodes,
                        help="episodes per cloning round")
    parser.add_argument("--updates", type=int, default=d.updates, help="PPO updates")
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate,
                        help="Adam step size for PPO")
    parser.add_argument("--scenarios", type=int, default=d.scenarios,
                        help="scenarios per PPO update (one pipeline; each its own trace, "
                             "seed and rate)")
    parser.add_argument("--envs", type=int, default=d.envs,
                        help="rollouts per scenario (common random numbers)")
    parser.add_argument("--rate-scales", default=f"{d.rate_scales[0]:g}:{d.rate_scales[1]:g}",
                        help="LO:HI: each training episode's request rate is the config's "
                             "times a factor log-uniform on it")
    parser.add_argument("--engine", default=d.engine,
                        help="simulator engine of the training episodes (fluid: the fast "
                             "mode; validation runs the config's own)")
    parser.add_argument("--ratio", default=d.ratio,
                        help="PPO's probability ratio: joint (one a tick) or expert (one per "
                             "expert, clipped on its own)")
    parser.add_argument("--shield-penalty", type=float, default=d.shield_penalty,
                        help="reward per unit of shield lifts (the share of experts the shield "
                             "lifted in a tick), in reference-cost ticks")
    parser.add_argument("--episode", type=float, default=d.episode_s,
                        help="episode length, simulated seconds")
    parser.add_argument("--episode-start", type=float, default=d.episode_start_s,
                        help="first curriculum episode length, simulated seconds")
    parser.add_argument("--validate-every", type=int, default=d.validate_every,
                        help="PPO updates between validations (0: never)")
    parser.add_argument("--validation-episode", type=float, default=d.validation_s,
                        help="validation episode length, simulated seconds")
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                        help="updates between checkpoints")
    parser.add_argument("--teacher", default=d.teacher, help="decider cloned first")
    parser.add_argument("--guards", default=d.guards, metavar="PROFILE",
                        help="guard profile of every training tick (default: production, "
                             "what the controller runs)")
    parser.add_argument("--config", default=None, help="config.yaml (default: built-in)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="stop (resumably) after this many minutes")
    parser.add_argument("--export", default=None,
                        help="write the selected policy (best.pt, else the last) to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config(args: argparse.Namespace):
    from smoelib.policy.train import TrainConfig

    problems = []
    try:
        lo, hi = (int(x) for x in args.seeds.split(":"))
    except ValueError:
        problems.append(Problem("--seeds", f"expected LO:HI integers, got {args.seeds!r}"))
        lo, hi = 0, 1000
    try:
        rlo, rhi = (float(x) for x in args.rate_scales.split(":"))
    except ValueError:
        problems.append(Problem("--rate-scales", f"expected LO:HI numbers, got "
                                                 f"{args.rate_scales!r}"))
        rlo, rhi = 1.0, 1.0
    if args.threads < 1:
        problems.append(Problem("--threads", "must be >= 1"))
    if args.time_limit is not None and args.time_limit <= 0:
        problems.append(Problem("--time-limit", "must be > 0"))
    if problems:
        raise ConfigError(problems)
    values = dict(
        pipelines=tuple(split_list(args.pipelines, "--pipelines")),
        random_pipelines=args.random_pipelines,
        traces=tuple(split_list(args.traces, "--traces")), seeds=(lo, hi), seed=args.seed,
        config=args.config, architecture=args.architecture, capacity=args.capacity,
        replica_base=args.replica_base, features=args.features,
        bc_rounds=args.bc_rounds,
        bc_episodes=args.bc_episodes, updates=args.updates, scenarios=args.scenarios,
        envs=args.envs, rate_scales=(rlo, rhi), engine=args.engine, ratio=args.ratio,
        learning_rate=args.learning_rate, shield_penalty=args.shield_penalty,
        episode_s=args.episode, episode_start_s=min(args.episode_start, args.episode),
        validate_every=args.validate_every, validation_s=args.validation_episode,
        checkpoint_every=args.checkpoint_every, teacher=args.teacher, guards=args.guards)
    try:
        return TrainConfig(**values)
    except ConfigError as e:  # name the flags, not the fields
        flag = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)}
        flag.update(episode_s="--episode", episode_start_s="--episode-start",
                    validation_s="--validation-episode")
        raise ConfigError([Problem(flag.get(p.where, p.where), p.message)
                           for p in e.problems]) from e


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    out = Path(args.out)
    if args.resume and not (out / "checkpoint.pt").is_file():
        raise ConfigError([Problem("--resume", f"no checkpoint to resume in {out}")])
    for p in cfg.pipelines:
        if not Path(p).is_file():
            raise ConfigError([Problem("--pipelines", f"no such file: {p}")])
    from smoelib.pipeline.topology import build_dag
    from smoelib.policy.base import get_decider
    from smoelib.policy.checkpoint import load_checkpoint, save_checkpoint
    from smoelib.policy.runtime import set_threads
    from smoelib.policy.train import train
    from smoelib.settings import load_settings

    get_decider(cfg.teacher, dag=build_dag(cfg.pipelines[0]),
                settings=load_settings(cfg.config))  # an unknown teacher fails before work
    set_threads(args.threads)  # a process setting: only the CLI touches it
    result = train(cfg, out=out, resume=args.resume, progress=not args.no_progress,
                   time_limit_s=None if args.time_limit is None else args.time_limit * 60.0)
    state = "finished" if result.finished else "stopped by --time-limit (resume with --resume)"
    ticks = result.history[-1]["env_steps"] if result.history else 0
    print(f"{state} at update {result.update}/{cfg.total_updates}: {result.checkpoint}"
          + (f", best {result.best}" if result.best else "")
          + (f"; {ticks:,} control ticks of experience" if ticks else ""))
    _plot(out)
    if args.export and result.finished:
        source = result.best or result.checkpoint
        ck = load_checkpoint(source)
        meta = {k: v for k, v in ck.training.items() if k != "state"}
        save_checkpoint(args.export, ck.agent, training={"source": source.name, **meta})
        print(f"exported {source} -> {args.export}")
    return 0


def _plot(out: Path) -> None:
    """``OUT/curves.png``: cost per tick, worst window P95 / SLO, lambda and the losses over
    updates, from ``log.csv``."""
    import csv

    plt = pyplot("curves.png")
    if plt is None:
        return

    with (out / "log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    panels = (("charts/cost_per_tick", "cost per control tick"),
              ("charts/worst_window", "worst 60 s window P95 / SLO"),
              ("charts/lagrange", "SLO multiplier lambda"),
              ("losses/bc", "cloning NLL per expert"), ("losses/approx_kl", "PPO approx. KL"),
              ("val/cost_ratio", "validation cost / teacher"))
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        pts = [(int(r["update"]), float(r[key])) for r in rows if r.get(key)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="." if len(pts) < 40 else None, lw=0.9)
        if key == "charts/worst_window":
            ax.axhline(1.0, color="red", linestyle="--", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("update")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=80)
    plt.close(fig)
