"""The controller's per-layer table: figures where there are some, a dash where none yet."""

from __future__ import annotations

import numpy as np

from smoelib.control.report import layer_table
from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.core.observation import NODE_FIELDS, Observation
from smoelib.settings import load_settings
from smoelib.topology import build_dag

DAG = build_dag({"name": "p", "slo_ms": 50, "stages": [{"id": "a"}, {"id": "m", "experts": 2}]})
DECISION = PipelineDecision(pipeline="p", updated_at=0.0, experts={
    e: ExpertDecision(replicas=1, cpu=0.5, memory_mb=1024, gpu_share=0.1, concurrency=4)
    for e in DAG.experts})


def observation(p95_ms: float, expert_p95: float) -> Observation:
    n = len(DAG.nodes)
    arrays = {f: np.zeros(n) for f in NODE_FIELDS}
    arrays["latency_p95_ms"] = np.full(n, expert_p95)
    return Observation(time_s=0.0, nodes=DAG.nodes, request_rate=2.0, p95_ms=p95_ms,
                       p99_ms=p95_ms, **arrays)


def test_latencies_are_printed_when_measured():
    text = layer_table(observation(40.0, 3.25), DECISION, DAG, load_settings(None))
    layer = text.splitlines()[1].split()
    assert layer[0] == "m" and layer[3] == "2" and layer[4] == "3.2"
    assert text.splitlines()[-1] == ("end to end: P95 40.0 ms against an SLO of 50 ms at "
                                     "2.0 req/s")


def test_no_completed_call_reads_as_a_dash_not_nan():
    text = layer_table(observation(float("nan"), float("nan")), DECISION, DAG,
                       load_settings(None))
    assert "nan" not in text
    assert text.splitlines()[1].split()[4] == "-"
    assert text.splitlines()[-1].startswith("end to end: no request completed in the window")
