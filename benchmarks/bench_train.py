"""Training throughput on this machine: PPO updates per second and simulator steps per second.

One short run of :func:`smoelib.policy.train.train` per pipeline: no cloning, ``--updates``
PPO updates of ``--scenarios`` scenarios with ``--envs`` rollouts each on common random
numbers, on ``--engine`` (the fast mode by default, as ``make train``), episodes of
``--episode`` simulated seconds (every update then collects ``scenarios x envs x episode /
5 s`` control ticks and runs 4 epochs of 4 minibatches), no validation. Prints wall time per
update and env steps (control ticks) per second. ``make train`` budgets from these numbers
(docs/training.md).

Run: python3 benchmarks/bench_train.py [--updates 3] [--scenarios 4] [--envs 4] [--episode 300]
     [--engine fluid] [--threads 1] [--pipelines a,b]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from smoelib.policy.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    d = TrainConfig()  # the recipe's own values, as make train runs them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--scenarios", type=int, default=d.scenarios)
    parser.add_argument("--envs", type=int, default=d.envs)
    parser.add_argument("--engine", default=d.engine)
    parser.add_argument("--episode", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pipelines", default="bert-moe,bert2bert-moe")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.scenarios} x {args.envs} envs, {args.engine} engine, "
          f"{args.episode:.0f} s episodes")
    for name in args.pipelines.split(","):
        cfg = TrainConfig(pipelines=(str(ROOT / "examples" / "pipelines" / f"{name}.yml"),),
                          traces=("conv-train",), bc_rounds=0, updates=args.updates,
                          scenarios=args.scenarios, envs=args.envs, engine=args.engine,
                          episode_start_s=args.episode,
                          episode_s=args.episode, curriculum_updates=0, validate_every=0,
                          checkpoint_every=10_000)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            result = train(cfg, out=out, progress=False)
            wall = time.perf_counter() - started
        steps = result.history[-1]["env_steps"]
        print(f"{name:>14}: {wall / args.updates:6.2f} s/update, "
              f"{args.updates / wall:6.3f} updates/s, {steps / wall:6.1f} env steps/s "
              f"({steps} ticks in {wall:.1f} s)")


if __name__ == "__main__":
    main()
