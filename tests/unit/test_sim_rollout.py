"""Rollouts that supersede one another, as the Deployment controller handles them: a new
template while the last replacement is still starting never leaves the Deployment without its
serving pods (maxUnavailable 0 with one replica)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.topology import build_dag


def _one_expert(replicas: int):
    return build_dag({"name": "one", "slo_ms": 100, "max_seq_tokens": 64,
                      "defaults": {"expert": {"weights_mb": 500, "gpu_share": 0.5,
                                              "replicas": {"min": replicas, "max": 4}}},
                      "stages": [{"id": "moe", "kind": "moe", "experts": 1, "top_k": 1}]})


def _decision(dag, replicas: int, share: float):
    return PipelineDecision(dag.name, 0.0, MappingProxyType({n: ExpertDecision(
        replicas=replicas, cpu=1.0, memory_mb=2048, gpu_share=share, concurrency=4)
        for n in dag.experts}))


@pytest.mark.parametrize("replicas", [1, 3])
def test_a_rollout_superseded_before_its_pods_are_ready_keeps_the_old_pods_serving(replicas):
    dag = _one_expert(replicas)
    # a cold start (8 s + 1 s of weights) longer than the 5 s control tick
    s = load_settings({"simulator": {"cold_start_sigma": 0.0, "cold_start_median_s": 8.0}})
    env = SimEnv(dag, s, trace="poisson", duration_s=90.0)
    env.reset(seed=1)
    env.step(_decision(dag, replicas, 0.5))
    ready = []
    for share in (1.0, 0.25, 1.0, 0.25) + (0.25,) * 8:  # a new template every tick, then calm
        r = env.step(_decision(dag, replicas, share))
        ready.append(r.observation.replicas_ready[0])
    assert min(ready) >= replicas                   # old pods serve until replacements are ready
    assert ready[-1] == replicas and r.observation.gpu_share[0] == 0.25
    assert len(env.cluster.live[0]) == replicas     # nothing left over, nothing missing
