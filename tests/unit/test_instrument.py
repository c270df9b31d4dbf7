"""The metrics helper exports exactly the series the controller reads."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from smoelib.instrument import ExpertMetrics, PipelineMetrics


def test_expert_series_and_labels():
    registry = CollectorRegistry()
    ticks = iter([10.0, 10.004, 20.0, 20.2])
    metrics = ExpertMetrics("bert-moe", registry=registry, clock=lambda: next(ticks))
    with metrics.call("moe1/e0", tokens=300):
        assert registry.get_sample_value(
            "smoe_expert_inflight", {"pipeline": "bert-moe", "expert": "moe1/e0"}) == 1
    with metrics.call("moe1/e1", tokens=5):
        pass
    metrics.rejected("moe1/e0", 2)
    labels = {"pipeline": "bert-moe", "expert": "moe1/e0"}
    assert registry.get_sample_value("smoe_expert_calls_total", labels) == 1
    assert registry.get_sample_value("smoe_expert_tokens_total", labels) == 300
    assert registry.get_sample_value("smoe_expert_inflight", labels) == 0
    assert registry.get_sample_value("smoe_expert_rejected_total", labels) == 2
    assert registry.get_sample_value("smoe_expert_latency_seconds_bucket",
                                     {**labels, "le": "0.005"}) == 1
    assert registry.get_sample_value("smoe_expert_latency_seconds_bucket",
                                     {**labels, "le": "0.0025"}) == 0
    slow = {"pipeline": "bert-moe", "expert": "moe1/e1"}
    assert registry.get_sample_value("smoe_expert_latency_seconds_sum", slow) == \
        20.2 - 20.0


def test_pipeline_series():
    registry = CollectorRegistry()
    pipeline = PipelineMetrics("bert-moe", registry=registry)
    pipeline.request(0.05)
    pipeline.request(0.2)
    text = generate_latest(registry).decode()
    assert 'smoe_pipeline_requests_total{pipeline="bert-moe"} 2.0' in text
    assert registry.get_sample_value("smoe_pipeline_latency_seconds_count",
                                     {"pipeline": "bert-moe"}) == 2


def test_pipeline_series_per_pass_and_drops():
    registry = CollectorRegistry()
    one = {"pipeline": "gpt2-moe"}
    pipeline = PipelineMetrics("gpt2-moe", slo_ttft_s=0.1, slo_tpot_s=0.05, registry=registry)
    pipeline.request(2.0, ttft_s=0.05, tpot_s=0.02)   # within both
    pipeline.request(2.0, ttft_s=0.05, tpot_s=0.08)   # TPOT over
    pipeline.request(2.0, ttft_s=0.2, tpot_s=0.02)    # TTFT over
    pipeline.dropped()
    value = registry.get_sample_value
    assert value("smoe_pipeline_requests_total", one) == 4
    assert value("smoe_pipeline_slo_met_total", one) == 1
    assert value("smoe_pipeline_dropped_total", one) == 1
    assert value("smoe_pipeline_ttft_seconds_count", one) == 3
    assert value("smoe_pipeline_tpot_seconds_bucket", {**one, "le": "0.03"}) == 2
