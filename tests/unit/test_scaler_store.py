"""DecisionStore, metric names and the status mapping: pure logic on an injected clock."""

from __future__ import annotations

import json
import threading

import grpc
import pytest

from smoelib.core.decisions import parse_decision
from smoelib.errors import ConfigError
from smoelib.scaler import DecisionStore, grpc_status, metric_name
from smoelib.scaler.naming import requested_metric
from smoelib.scaler.status import (
    ExpertNotFound,
    MetricNotFound,
    MissingMetadata,
    NoDecision,
    PipelineNotFound,
    StaleDecision,
)
from smoelib.topology import build_dag

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def tiny(name: str = "tiny"):
    return build_dag({"name": name, "slo_ms": 50, "stages": [
        {"id": "embed", "kind": "segment"}, {"id": "moe1", "kind": "moe", "experts": 3,
                                             "top_k": 1}]})


def decision(replicas, *, at=T0, pipeline="tiny"):
    return parse_decision({"pipeline": pipeline, "updated_at": at, "experts": {
        n: {"replicas": r, "cpu": 1.0, "memory_mb": 512, "gpu_share": 0.0, "concurrency": 2}
        for n, r in replicas.items()}})


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(clock):
    s = DecisionStore(staleness_s=60, clock=clock)
    s.add_pipeline(tiny())
    return s


def test_metric_names_are_lower_case_dns_like():
    assert metric_name("bert-moe", "moe1/e0") == "bert-moe-moe1-e0"
    with pytest.raises(ValueError):
        metric_name("bert_moe", "moe1/e0")


@pytest.mark.parametrize("asked,ok", [("bert-moe-moe1-e0", True), ("BERT-MOE-moe1-E0", True),
                                      ("s0-bert-moe-moe1-e0", True), ("S12-bert-moe-moe1-e0", True),
                                      ("bert-moe-moe1-e1", False), ("", False),
                                      ("x0-bert-moe-moe1-e0", False)])
def test_requested_metric_matching(asked, ok):
    assert requested_metric(asked, advertised="bert-moe-moe1-e0") is ok


@pytest.mark.parametrize("error,code", [
    (MissingMetadata("m"), grpc.StatusCode.INVALID_ARGUMENT),
    (PipelineNotFound("p"), grpc.StatusCode.NOT_FOUND),
    (ExpertNotFound("e"), grpc.StatusCode.NOT_FOUND),
    (MetricNotFound("n"), grpc.StatusCode.NOT_FOUND),
    (NoDecision("d"), grpc.StatusCode.UNAVAILABLE),
    (StaleDecision("s"), grpc.StatusCode.UNAVAILABLE),
    (KeyError("bug"), grpc.StatusCode.INTERNAL),
])
def test_one_function_maps_errors_to_status(error, code):
    assert grpc_status(error)[0] is code


def test_metric_answers_before_any_decision(store):
    assert store.metric_of("tiny", "moe1/e2") == "tiny-moe1-e2"
    with pytest.raises(NoDecision):
        store.lookup("tiny", "moe1/e2")


def test_unknown_pipeline_and_expert(store):
    with pytest.raises(PipelineNotFound):
        store.lookup("nope", "moe1/e0")
    with pytest.raises(ExpertNotFound):
        store.lookup("tiny", "embed")  # a segment is not an expert
    with pytest.raises(ExpertNotFound):
        store.metric_of("tiny", "moe1/e9")


def test_expert_missing_from_decision_has_none_not_zero(store):
    store.update(decision({"moe1/e0": 3}))
    assert store.lookup("tiny", "moe1/e0").replicas == 3
    with pytest.raises(NoDecision):
        store.lookup("tiny", "moe1/e1")


def test_staleness_follows_the_injected_clock(store, clock):
    store.update(decision({"moe1/e0": 0}))
    clock.now = T0 + 60
    assert store.lookup("tiny", "moe1/e0").replicas == 0
    clock.now = T0 + 60.001
    with pytest.raises(StaleDecision, match="60.0 s old"):
        store.lookup("tiny", "moe1/e0")
    assert store.decision_age_s("tiny") == pytest.approx(60.001)


def test_versions_increase_and_subscribers_hear_every_change(store):
    heard = []
    unsubscribe = store.subscribe(heard.append)
    v1 = store.update(decision({"moe1/e0": 1}))
    v2 = store.update(decision({"moe1/e0": 2}))
    assert v2 > v1 and store.state("tiny").version == v2 == store.version
    assert store.lookup("tiny", "moe1/e0").version == v2
    unsubscribe()
    store.update(decision({"moe1/e0": 3}))
    assert heard == ["tiny", "tiny"]


def test_foreign_decision_is_refused_and_previous_kept(store):
    store.update(decision({"moe1/e0": 4}))
    with pytest.raises(ConfigError, match="experts.moe2/e0"):
        store.update(decision({"moe2/e0": 1}))
    with pytest.raises(PipelineNotFound):
        store.update(decision({"moe1/e0": 1}, pipeline="other"))
    assert store.lookup("tiny", "moe1/e0").replicas == 4


def test_restart_answers_at_once_from_the_decision_file(tmp_path, clock):
    path = tmp_path / "tiny.json"
    first = DecisionStore(staleness_s=60, clock=clock)
    first.add_pipeline(tiny(), decision_path=path)
    first.update(decision({"moe1/e0": 5, "moe1/e1": 0}))
    restarted = DecisionStore(staleness_s=60, clock=clock)
    assert restarted.add_pipeline(tiny(), decision_path=path) is None
    assert restarted.lookup("tiny", "moe1/e0").replicas == 5
    assert restarted.lookup("tiny", "moe1/e1").replicas == 0
    clock.now = T0 + 61  # a restart does not make an old decision young
    with pytest.raises(StaleDecision):
        restarted.lookup("tiny", "moe1/e0")


@pytest.mark.parametrize("text,field", [
    ("not json", ""), ('{"pipeline": "gpt2-moe", "updated_at": 1, "experts": {}}', "pipeline"),
    (json.dumps({"pipeline": "tiny", "updated_at": T0, "experts": {"moe1/e0": {
        "replicas": -1, "cpu": 1, "memory_mb": 1, "gpu_share": 0, "concurrency": 1}}}),
     "experts.moe1/e0.replicas"),
    (json.dumps({"pipeline": "tiny", "updated_at": T0, "experts": {"moe7/e0": {
        "replicas": 1, "cpu": 1, "memory_mb": 1, "gpu_share": 0, "concurrency": 1}}}),
     "experts.moe7/e0"),
])
def test_corrupt_file_at_start_is_reported_and_served_unavailable(tmp_path, clock, text, field):
    path = tmp_path / "tiny.json"
    path.write_text(text)
    store = DecisionStore(staleness_s=60, clock=clock)
    error = store.add_pipeline(tiny(), decision_path=path)
    assert isinstance(error, ConfigError)
    assert error.lines()[0].startswith(f"{path}")
    assert f" {field}:" in error.lines()[0] if field else True
    with pytest.raises(NoDecision, match="decision file"):
        store.lookup("tiny", "moe1/e0")
    assert store.metric_of("tiny", "moe1/e0") == "tiny-moe1-e0"  # still answers the spec


def test_bad_rewrite_keeps_last_good_without_refreshing_its_age(tmp_path, clock):
    path = tmp_path / "tiny.json"
    store = DecisionStore(staleness_s=60, clock=clock)
    store.add_pipeline(tiny(), decision_path=path)
    store.update(decision({"moe1/e0": 2}))
    path.write_text("{ truncated")
    clock.now = T0 + 30
    assert store.reload_if_changed("tiny") is False
    assert store.state("tiny").load_error is not None
    assert store.lookup("tiny", "moe1/e0").replicas == 2
    assert store.decision_age_s("tiny") == 30
    clock.now = T0 + 61
    with pytest.raises(StaleDecision):
        store.lookup("tiny", "moe1/e0")
    path.write_text(json.dumps({"pipeline": "tiny", "updated_at": T0 + 60, "experts": {
        "moe1/e0": {"replicas": 7, "cpu": 1, "memory_mb": 1, "gpu_share": 0,
                    "concurrency": 1}}}))
    assert store.reload_if_changed("tiny") is True
    assert store.lookup("tiny", "moe1/e0").replicas == 7
    assert store.state("tiny").load_error is None


def test_own_writes_are_not_reread(tmp_path, clock):
    path = tmp_path / "tiny.json"
    store = DecisionStore(staleness_s=60, clock=clock)
    store.add_pipeline(tiny(), decision_path=path)
    store.update(decision({"moe1/e0": 2}))
    version = store.version
    assert store.reload_if_changed("tiny") is False
    assert store.version == version


def test_failed_write_changes_nothing(tmp_path, clock):
    directory = tmp_path / "gone"
    directory.mkdir()
    store = DecisionStore(staleness_s=60, clock=clock)
    store.add_pipeline(tiny(), decision_path=directory / "tiny.json")
    store.update(decision({"moe1/e0": 2}))
    (directory / "tiny.json").unlink()
    directory.rmdir()
    with pytest.raises(OSError):
        store.update(decision({"moe1/e0": 9}))
    assert store.lookup("tiny", "moe1/e0").replicas == 2


def test_concurrent_writers_and_readers_see_whole_decisions(clock):
    store = DecisionStore(staleness_s=60, clock=clock)
    store.add_pipeline(tiny())
    store.update(decision({"moe1/e0": 0, "moe1/e1": 0}))
    seen: list[tuple[int, int]] = []

    def write():
        for n in range(1, 200):  # within the pipeline's replica bounds [0, 16]
            store.update(decision({"moe1/e0": n % 17, "moe1/e1": n % 17}))

    def read():
        for _ in range(2000):
            state = store.state("tiny")
            d = state.decision
            seen.append((d.experts["moe1/e0"].replicas, d.experts["moe1/e1"].replicas))

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read)
                                                  for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a == b for a, b in seen)
    assert store.lookup("tiny", "moe1/e1").replicas == 199 % 17


def test_pipelines_are_independent(clock):
    store = DecisionStore(staleness_s=60, clock=clock)
    store.add_pipeline(tiny("a"))
    store.add_pipeline(tiny("b"))
    with pytest.raises(ValueError):
        store.add_pipeline(tiny("a"))
    store.update(decision({"moe1/e0": 1}, pipeline="a"))
    assert store.lookup("a", "moe1/e0").replicas == 1
    with pytest.raises(NoDecision):
        store.lookup("b", "moe1/e0")
    assert store.pipelines() == ("a", "b")
