"""The controller's per-layer table: figures where there are some, a dash where none yet."""

from __future__ import annotations

import numpy as np

from smoelib.control.report import layer_table, request_line
from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.core.observation import NODE_FIELDS, Observation
from smoelib.settings import load_settings
from smoelib.topology import build_dag

DAG = build_dag({"name": "p", "slo_ms": 50, "stages": [{"id": "a"}, {"id": "m", "experts": 2}]})
DECISION = PipelineDecision(pipeline="p", updated_at=0.0, experts={
    e: ExpertDecision(replicas=1, cpu=0.5, memory_mb=1024, gpu_share=0.1, concurrency=4)
    for e in DAG.experts})


def observation(p95_ms: float, expert_p95: float, dag=DAG, **per_pass) -> Observation:
    n = len(dag.nodes)
    arrays = {f: np.zeros(n) for f in NODE_FIELDS}
    arrays["latency_p95_ms"] = np.full(n, expert_p95)
    return Observation(time_s=0.0, nodes=dag.nodes, request_rate=2.0, p95_ms=p95_ms,
                       p99_ms=p95_ms, **arrays, **per_pass)


def test_latencies_are_printed_when_measured():
    text = layer_table(observation(40.0, 3.25, ttft_p95_ms=40.0), DECISION, DAG,
                       load_settings(None))
    layer = text.splitlines()[1].split()
    assert layer[0] == "m" and layer[3] == "2" and layer[4] == "3.2"
    assert text.splitlines()[-1] == ("requests: P95 TTFT 40.0 of 50 ms, end to end 40.0 ms at "
                                     "2.0 req/s")


def test_a_decoder_reads_each_pass_against_its_own_slo_not_the_request_against_tpot():
    dag = build_dag("examples/pipelines/gpt2-moe.yml")
    line = request_line(observation(13765.2, 1.0, dag, ttft_p95_ms=82.7, tpot_p95_ms=34.1),
                        dag)
    assert line == ("requests: P95 TTFT 82.7 of 100 ms, P95 TPOT 34.1 of 50 ms, end to end "
                    "13765.2 ms at 2.0 req/s")


def test_no_completed_call_reads_as_a_dash_not_nan():
    text = layer_table(observation(float("nan"), float("nan")), DECISION, DAG,
                       load_settings(None))
    assert "nan" not in text
    assert text.splitlines()[1].split()[4] == "-"
    assert text.splitlines()[-1] == ("requests: none completed in the window (SLO TTFT 50 ms at "
                                     "99%) at 2.0 req/s")
