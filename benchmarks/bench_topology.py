"""Time build_dag on the example pipelines (deepseek-v3: about 15,000 nodes).

Prints the median and best of several builds per pipeline; the goal for deepseek-v3 is < 2 s.
Run: python3 benchmarks/bench_topology.py [--repeat N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"build_dag, {args.repeat} builds each; python {platform.python_version()}, "
          f"{platform.machine()}")
    for name in ("bert-moe", "bert2bert-moe", "deepseek-v3"):
        path = ROOT / "examples" / "pipelines" / f"{name}.yml"
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            dag = build_dag(config=str(path), validate=True, attach_metadata=True)
            _ = dag.depth_levels, dag.experts  # what the policy asks for first
            times.append(time.perf_counter() - start)
        print(f"  {name:14s} nodes {dag.graph.number_of_nodes():6d}  "
              f"median {statistics.median(times) * 1000:8.1f} ms  "
              f"best {min(times) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
