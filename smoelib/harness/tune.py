"""``smoe tune``: the lowest-cost settings of one baseline whose runs reach the SLO target.

Search: ``budget`` configurations drawn without replacement (seeded) from the policy's grid
(:data:`SPACES`), and the settings in force (the pipeline's own when one pipeline is tuned);
every contender gets the same budget, traces, seeds and duration
(docs/results/tuning.md). Only training data: ``conv-train`` or synthetic traces with seeds
below 1000 (DESIGN.md "Traces"). A configuration is feasible when every run's SLO attainment
reaches its pipeline's target and no request is dropped; the best is the feasible one with the
lowest mean cost (if none is feasible, the one with the fewest dropped requests, then the
highest worst attainment).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from smoelib.errors import ConfigError, Problem
from smoelib.harness.evaluate import RunSpec, run_all
from smoelib.pipeline.topology import build_dag
from smoelib.settings import load_settings

__all__ = ["SPACES", "Trial", "grid", "tune", "best", "check_training"]

_V = "vertical."
# The GPU shares and concurrencies every contender with those knobs may pick (queueing picks
# from the whole action space itself); widened with 1.0 and 16 for the loaded scenario
# (examples/loaded.yaml), where bursts overflow a replica's in-flight limit.
_SHARES = [0.1, 0.25, 0.5, 1.0]
_CONC = [2, 4, 8, 16]
# the handler (and a CPU expert's FFN) runs on the pod's CPU: a baseline that sets a fixed CPU
# for every expert picks it too
_CPUS = [0.5, 1.0, 2.0]
# Per-replica targets below 1 let an in-flight target scale a replica that is busy < 100 %.
_TARGETS = [0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
SPACES: dict[str, dict[str, list[Any]]] = {
    "hpa": {"metric": ["rps", "inflight"], "target": _TARGETS,
            _V + "gpu_share": _SHARES, _V + "concurrency": _CONC, _V + "cpu": _CPUS},
    "kpa": {"metric": ["concurrency", "rps"], "target": [0.25, 0.5, 1.0, 2.0, 4.0, 10.0, 20.0],
            "utilization": [0.5, 0.7, 0.9], _V + "gpu_share": _SHARES,
            _V + "concurrency": _CONC, _V + "cpu": _CPUS},
    "openfaas": {"mode": ["capacity", "rps"], "target": _TARGETS,
                 _V + "gpu_share": _SHARES, _V + "concurrency": _CONC, _V + "cpu": _CPUS},
    "queueing": {"headroom": [0.0, 0.15, 0.3, 0.6, 1.0],
                 "slo_fraction": [0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5],
                 "tail": [0.01, 0.05], "arrival_scv": [1.0, 1.5, 2.5, 4.0],
                 "scale_down_delay_s": [0.0, 30.0, 60.0]},
    "elasticmoe": {"gpu_share": [0.1, 0.25, 0.5], "scale_up_utilization": [0.3, 0.5, 0.7],
                   "scale_down_utilization": [0.05, 0.1, 0.2], "scale_up_p95": [0.8, 0.9],
                   "cooldown_s": [15.0, 30.0, 60.0], "concurrency": _CONC, "cpu": _CPUS},
    "faasconf": {"target_utilization": [0.05, 0.1, 0.3, 0.5], "neighbour_weight": [0.0, 0.5],
                 "latency_gain": [0.5, 1.0, 2.0], "band_sigmas": [1.0, 2.0, 3.0],
                 "concurrency": _CONC},
}
# the hindsight sizers share one model, tuned on the oracle: the model settings queueing tunes,
# less the forecast's (the oracle reads the true load)
SPACES["oracle"] = {k: v for k, v in SPACES["queueing"].items()
                    if k in ("slo_fraction", "tail", "arrival_scv")}
SPACES["hpa-stock"] = SPACES["hpa"]
# registry name -> settings.baselines field
SECTION = {"hpa-stock": "hpa_stock", "oracle": "hindsight"}


@dataclass(frozen=True)
class Trial:
    """One configuration's outcome: mean ``cost``, worst ``attainment`` (SLO attainment of a
    run), ``dropped`` total, ``feasible`` (every run at or above the pipeline's attainment
    target, nothing dropped), ``runs_met`` (the runs that are)."""

    values: dict[str, Any]
    cost: float
    attainment: float
    dropped: int
    feasible: bool
    runs_met: int = 0


def grid(policy: str, budget: int, *, seed: int) -> list[dict[str, Any]]:
    """``budget`` configurations of ``policy``'s grid, drawn without replacement."""
    if policy not in SPACES:
        raise ConfigError([Problem("--policy", f"no search space for {policy!r}; tunable: "
                                   f"{', '.join(sorted(SPACES))}")])
    space = SPACES[policy]
    combos = list(itertools.product(*space.values()))
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(combos))[:budget]
    return [dict(zip(space, combos[i], strict=True)) for i in sorted(pick)]


def check_training(traces: list[str], seeds: list[int]) -> None:
    """Refuse evaluation data: ``conv-eval``, the whole ``conv``, or seeds >= 1000."""
    problems = [Problem("--traces", f"{t!r} holds evaluation data; tune on conv-train or "
                                    "synthetic traces") for t in traces if t in ("conv",
                                                                                 "conv-eval")]
    problems += [Problem("--seeds", f"seed {s} is reserved for evaluation (use < 1000)")
                 for s in seeds if s >= 1000]
    if problems:
        raise ConfigError(problems)


def tune(policy: str, *, pipelines: list[str], traces: list[str], seeds: list[int],
         duration_s: float, budget: int, search_seed: int = 0, config: str | None = None,
         jobs: int = 1, progress: bool = True) -> tuple[Trial, list[Trial]]:
    """Try ``budget`` configurations; returns the best and every trial."""
    check_training(traces, seeds)
    section = "baselines." + SECTION.get(policy, policy) + "."
    configs = grid(policy, budget, seed=search_seed)
    # the settings in force are tried too (first, so that they win a tie): a pick is then never
    # worse on the training runs than what the pipeline would have run without the search
    dags = [build_dag(p) for p in pipelines]
    settings = load_settings(config)
    if len(dags) == 1:
        settings = settings.for_pipeline(dags[0].name)
    current = {k: _read(settings, section + k) for k in SPACES[policy]}
    configs = [current] + [c for c in configs if c != current]
    specs = [RunSpec(p, t, policy, s, duration_s, config,
                     tuple((section + k, v) for k, v in values.items()))
             for values in configs for p in pipelines for t in traces for s in seeds]
    targets = {d.name: d.slo.attainment for d in dags}
    results = run_all(specs, jobs=jobs, progress=progress)
    per = len(pipelines) * len(traces) * len(seeds)
    trials = []
    for i, values in enumerate(configs):
        runs = [r["run"] for r in results[i * per:(i + 1) * per]]
        worst = min(r["slo_attainment"] for r in runs)
        target = min(targets[r["pipeline"]] for r in runs)
        dropped = sum(r["dropped"] for r in runs)
        met = sum(r["slo_attainment"] >= targets[r["pipeline"]] and not r["dropped"]
                  for r in runs)
        trials.append(Trial(values, float(np.mean([r["cost"] for r in runs])), float(worst),
                            int(dropped), bool(worst >= target and dropped == 0), int(met)))
    return best(trials), trials


def _read(settings: Any, path: str) -> Any:
    for name in path.split("."):
        settings = getattr(settings, name)
    return settings


def best(trials: list[Trial]) -> Trial:
    """The cheapest feasible trial (the first of equals); when none is feasible, the one that
    meets the target on the most runs, then drops the fewest requests, then costs least (the
    highest worst attainment would reward the dearest over-provisioning wherever one training
    trace is out of every configuration's reach)."""
    feasible = [t for t in trials if t.feasible]
    if feasible:
        return min(feasible, key=lambda t: t.cost)
    return min(trials, key=lambda t: (-t.runs_met, t.dropped, t.cost))
