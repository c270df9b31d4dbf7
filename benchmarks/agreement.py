"""The fast mode against the request-level engine on the simulator-speed issue's agreement
runs, with the request-level engine's own noise beside it (docs/simulator.md).

gpt2-moe at its default rate, ``conv-train`` and ``bursty``, ``static-mean``, ``queueing`` and
``hpa`` (on calls per second: metric rps, target 5, GPU share 0.25, 2 cores, concurrency 4),
seeds 1-3, 300 s. The compiled request-level engine runs each of them on the seed's own noise
and on ``--noise-streams`` more (``simulator.noise_stream`` 1..K: the same arrivals and
popularity path, other picks, service noise, dispatch and cold starts); the fast mode runs
them with each pod model of ``--pods``. Printed per run: the request-level P95 TTFT and TPOT
(mean over the draws) and attainment (mean and range), and per pod model its own with the
gap (per cent, points). Then the issue's criteria: P95 TTFT and TPOT within 10 %, attainment
within one point, and the same ranking of the three policies by attainment per trace and
seed (two policies whose request-level ranges overlap are a tie: either order agrees).

Run: ``python3 benchmarks/agreement.py [--out DIR] [--noise-streams K] [--pods
arithmetic,chain] [--seeds 1,2,3] [--jobs 2]``. DIR keeps a journal: run it again and it
resumes (start a new DIR after a code change). About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np

from smoelib.harness.evaluate import RunSpec, run_all

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = str(ROOT / "examples" / "pipelines" / "gpt2-moe.yml")
TRACES = ("conv-train", "bursty")
POLICIES = ("static-mean", "queueing", "hpa")
HPA_RPS = ("baselines:\n  per_pipeline:\n    gpt2-moe:\n      hpa: {metric: rps, target: 5.0, "
           "vertical: {gpu_share: 0.25, cpu: 2.0, concurrency: 4}}\n")
P95_TOL = 0.10
POINTS_TOL = 0.01


def specs(config: str, seeds: list[int], noise: int, pods: list[str]) -> list[RunSpec]:
    """The request-level runs (noise streams 0..noise), then the fluid ones per pod model."""
    out = []
    for trace, policy, seed in itertools.product(TRACES, POLICIES, seeds):
        for k in range(noise + 1):
            out.append(RunSpec(PIPELINE, trace, policy, seed, 300.0, config,
                               (("simulator.engine", "compiled"),
                                ("simulator.noise_stream", k))))
        for p in pods:
            out.append(RunSpec(PIPELINE, trace, policy, seed, 300.0, config,
                               (("simulator.engine", "fluid"), ("simulator.fluid_pods", p))))
    return out


def _label(spec: RunSpec) -> tuple[str, str, int, str]:
    o = dict(spec.overrides)
    engine = "request" if o["simulator.engine"] == "compiled" else o["simulator.fluid_pods"]
    return spec.trace, spec.policy, spec.seed, engine


def _ties(lo: dict[str, float], hi: dict[str, float]) -> set[frozenset[str]]:
    """Pairs of policies whose request-level attainment ranges overlap."""
    return {frozenset((a, b)) for a, b in itertools.combinations(lo, 2)
            if lo[a] <= hi[b] + 1e-12 and lo[b] <= hi[a] + 1e-12}


def report(rows: dict[tuple, list[dict]], seeds: list[int], pods: list[str]) -> list[str]:
    """The table and the criteria, as lines."""
    lines = ["| trace | policy | seed | request-level TTFT / TPOT ms, attainment [range] | "
             + " | ".join(f"{p}: TTFT, TPOT (%), attainment (points)" for p in pods) + " |",
             "|---|---|---|---|" + "---|" * len(pods)]
    p95_ok = {p: 0 for p in pods}
    att_ok = {p: 0 for p in pods}
    rank_ok = {p: 0 for p in pods}
    n = 0
    for trace, seed in itertools.product(TRACES, seeds):
        lo, hi, mean, fl = {}, {}, {}, {p: {} for p in pods}
        for policy in POLICIES:
            req = rows[(trace, policy, seed, "request")]
            att = [r["slo_attainment"] for r in req]
            ttft = float(np.mean([r["ttft_p95_ms"] for r in req]))
            tpot = float(np.mean([r["tpot_p95_ms"] for r in req]))
            mean[policy] = float(np.mean(att))
            lo[policy], hi[policy] = min(att), max(att)
            cells = []
            for p in pods:
                f = rows[(trace, policy, seed, p)][0]
                dt, dp = f["ttft_p95_ms"] / ttft - 1.0, f["tpot_p95_ms"] / tpot - 1.0
                da = f["slo_attainment"] - mean[policy]
                fl[p][policy] = f["slo_attainment"]
                p95_ok[p] += abs(dt) <= P95_TOL and abs(dp) <= P95_TOL
                att_ok[p] += abs(da) <= POINTS_TOL
                cells.append(f"{f['ttft_p95_ms']:.0f} ({dt:+.0%}), {f['tpot_p95_ms']:.0f} "
                             f"({dp:+.0%}), {f['slo_attainment']:.3f} ({100 * da:+.1f})")
            n += 1
            lines.append(f"| {trace} | {policy} | {seed} | {ttft:.0f} / {tpot:.0f}, "
                         f"{mean[policy]:.3f} [{min(att):.3f}-{max(att):.3f}] | "
                         + " | ".join(cells) + " |")
        tied = _ties(lo, hi)
        for p in pods:  # every pair in the same order, or tied in the request-level engine
            rank_ok[p] += all(frozenset((a, b)) in tied
                              or (mean[a] - mean[b]) * (fl[p][a] - fl[p][b]) > 0
                              for a, b in itertools.combinations(POLICIES, 2))
    groups = len(TRACES) * len(seeds)
    lines.append("")
    for p in pods:
        lines.append(f"{p}: P95 TTFT and TPOT within {P95_TOL:.0%} in {p95_ok[p]}/{n}; "
                     f"attainment within {100 * POINTS_TOL:.0f} point in {att_ok[p]}/{n}; "
                     f"the same ranking in {rank_ok[p]}/{groups} trace-seeds")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="journal directory (default: a temporary "
                        "one)")
    parser.add_argument("--noise-streams", type=int, default=3)
    parser.add_argument("--pods", default="arithmetic,chain")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="agreement-"))
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config.yaml"
    config.write_text(HPA_RPS)
    seeds = [int(s) for s in args.seeds.split(",")]
    pods = args.pods.split(",")
    todo = specs(str(config), seeds, args.noise_streams, pods)
    results = run_all(todo, jobs=args.jobs, journal=out / "runs.jsonl")
    rows: dict[tuple, list[dict]] = {}
    for spec, res in zip(todo, results, strict=True):
        rows.setdefault(_label(spec), []).append(res["run"])
    print(f"{len(todo)} runs ({args.noise_streams + 1} request-level draws each); journal "
          f"{out / 'runs.jsonl'}")
    print("\n".join(report(rows, seeds, pods)))


if __name__ == "__main__":
    main()
