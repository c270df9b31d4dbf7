"""The scaler over a real channel on 127.0.0.1:0: answers, every error path, staleness on the
injected clock, restart, corrupt files, push streams, health, reflection and its own metrics."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from smoelib.keda_proto import externalscaler_pb2 as pb
from smoelib.scaler import DecisionStore, create_server
from tests.integration.scaler_fixtures import (
    STALENESS_S,
    T0,
    SettableClock,
    decision,
    ref,
    running_scaler,
    tiny_pipeline,
)

pytestmark = pytest.mark.integration
NOT_FOUND, INVALID, UNAVAILABLE = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                                   grpc.StatusCode.UNAVAILABLE)


@pytest.fixture
def clock():
    return SettableClock()


@pytest.fixture
def store(clock):
    s = DecisionStore(staleness_s=STALENESS_S, clock=clock)
    s.add_pipeline(tiny_pipeline())
    return s


@pytest.fixture
def scaler(store):
    with running_scaler(store) as s:
        yield s


def metrics_request(r: pb.ScaledObjectRef, name: str = "tiny-moe1-e0") -> pb.GetMetricsRequest:
    return pb.GetMetricsRequest(scaledObjectRef=r, metricName=name)


def status_of(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=5)
    return e.value.code()


def poll(stub, r: pb.ScaledObjectRef) -> tuple[str, float, bool]:
    """One KEDA evaluation: GetMetricSpec, then GetMetrics with the advertised name (KEDA strips
    its sN- prefix), then IsActive."""
    spec = stub.GetMetricSpec(r, timeout=5).metricSpecs
    assert len(spec) == 1 and spec[0].targetSize == 1 and spec[0].targetSizeFloat == 1.0
    values = stub.GetMetrics(metrics_request(r, spec[0].metricName), timeout=5).metricValues
    assert len(values) == 1 and values[0].metricName == spec[0].metricName
    assert values[0].metricValue == values[0].metricValueFloat
    return spec[0].metricName, values[0].metricValueFloat, stub.IsActive(r, timeout=5).result


def test_keda_style_poll_of_every_expert(scaler, store):
    store.update(decision("tiny", {"moe1/e0": 0, "moe1/e1": 1, "moe1/e2": 12}))
    got = {e: poll(scaler.stub, ref(expert=e)) for e in ("moe1/e0", "moe1/e1", "moe1/e2")}
    assert got == {"moe1/e0": ("tiny-moe1-e0", 0.0, False),
                   "moe1/e1": ("tiny-moe1-e1", 1.0, True),
                   "moe1/e2": ("tiny-moe1-e2", 12.0, True)}


def test_spec_answers_before_any_decision_but_values_do_not(scaler):
    assert scaler.stub.GetMetricSpec(ref(), timeout=5).metricSpecs[0].metricName == "tiny-moe1-e0"
    assert status_of(scaler.stub.GetMetrics, metrics_request(ref())) is UNAVAILABLE
    assert status_of(scaler.stub.IsActive, ref()) is UNAVAILABLE


def test_metric_name_matches_case_insensitively_and_with_prefix(scaler, store):
    store.update(decision("tiny", {"moe1/e0": 2}))
    for name in ("TINY-MOE1-E0", "s0-tiny-moe1-e0"):
        assert scaler.stub.GetMetrics(metrics_request(ref(), name)).metricValues[0].metricValue == 2
    assert status_of(scaler.stub.GetMetrics, metrics_request(ref(), "tiny-moe1-e1")) is NOT_FOUND


@pytest.mark.parametrize("r,code", [
    (ref(pipeline="nope"), NOT_FOUND),
    (ref(expert="moe1/e9"), NOT_FOUND),
    (ref(expert="embed"), NOT_FOUND),
    (ref(pipeline=None), INVALID),
    (ref(expert=None), INVALID),
    (ref(expert=""), INVALID),
])
def test_error_paths_on_every_method(scaler, store, r, code):
    store.update(decision("tiny", {"moe1/e0": 2}))
    assert status_of(scaler.stub.GetMetricSpec, r) is code
    assert status_of(scaler.stub.GetMetrics, metrics_request(r)) is code
    assert status_of(scaler.stub.IsActive, r) is code
    stream = scaler.stub.StreamIsActive(r, timeout=5)
    with pytest.raises(grpc.RpcError) as e:
        next(stream)
    assert e.value.code() is code


def test_missing_expert_in_decision_is_unavailable_not_zero(scaler, store):
    store.update(decision("tiny", {"moe1/e0": 2}))
    assert status_of(scaler.stub.GetMetrics, metrics_request(ref(expert="moe1/e1"),
                                                             "tiny-moe1-e1")) is UNAVAILABLE


def test_stale_decision_is_unavailable(scaler, store, clock):
    store.update(decision("tiny", {"moe1/e0": 2}))
    clock.now = T0 + STALENESS_S
    assert scaler.stub.GetMetrics(metrics_request(ref())).metricValues[0].metricValue == 2
    clock.now = T0 + STALENESS_S + 0.5
    assert status_of(scaler.stub.GetMetrics, metrics_request(ref())) is UNAVAILABLE
    assert status_of(scaler.stub.IsActive, ref()) is UNAVAILABLE
    store.update(decision("tiny", {"moe1/e0": 3}, at=clock.now))
    assert scaler.stub.GetMetrics(metrics_request(ref())).metricValues[0].metricValue == 3


def test_restart_from_decision_file_answers_at_once(tmp_path, clock):
    path = tmp_path / "tiny.json"
    first = DecisionStore(staleness_s=STALENESS_S, clock=clock)
    first.add_pipeline(tiny_pipeline(), decision_path=path)
    with running_scaler(first) as s:
        first.update(decision("tiny", {"moe1/e0": 4}))
        assert poll(s.stub, ref())[1:] == (4.0, True)
    again = DecisionStore(staleness_s=STALENESS_S, clock=clock)
    assert again.add_pipeline(tiny_pipeline(), decision_path=path) is None
    with running_scaler(again) as s:
        assert poll(s.stub, ref())[1:] == (4.0, True)


@pytest.mark.parametrize("text", ["{not json", '{"pipeline": "other", "updated_at": 1, '
                                               '"experts": {}}'])
def test_corrupt_or_foreign_file_is_served_unavailable(tmp_path, clock, text):
    path = tmp_path / "tiny.json"
    path.write_text(text)
    store = DecisionStore(staleness_s=STALENESS_S, clock=clock)
    error = store.add_pipeline(tiny_pipeline(), decision_path=path)
    assert error is not None and str(path) in error.lines()[0]
    with running_scaler(store) as s:
        assert s.stub.GetMetricSpec(ref(), timeout=5).metricSpecs[0].targetSize == 1
        with pytest.raises(grpc.RpcError) as e:
            s.stub.GetMetrics(metrics_request(ref()), timeout=5)
        assert e.value.code() is UNAVAILABLE and str(path) in e.value.details()


def test_concurrent_clients(store):
    store.add_pipeline(tiny_pipeline("wide", experts=16))
    store.update(decision("wide", {f"moe1/e{i}": i for i in range(16)}))
    with running_scaler(store) as s:
        channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for _ in range(4)]

        def client(k: int) -> list[float]:
            stub = type(s.stub)(channels[k % 4])
            return [poll(stub, ref("wide", f"moe1/e{i}"))[1] for i in range(16) for _ in range(3)]

        try:
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(client, range(8)))
        finally:
            for c in channels:
                c.close()
    expected = [float(i) for i in range(16) for _ in range(3)]
    assert results == [expected] * 8


def test_stream_pushes_true_when_an_expert_leaves_zero(scaler, store):
    store.update(decision("tiny", {"moe1/e0": 0, "moe1/e1": 0}))
    stream = scaler.stub.StreamIsActive(ref(), timeout=10)
    received: list[bool] = []
    first = threading.Event()

    def read():
        try:
            for message in stream:
                received.append(message.result)
                first.set()
        except grpc.RpcError as e:  # our own cancel below ends the stream
            assert e.code() is grpc.StatusCode.CANCELLED

    reader = threading.Thread(target=read)
    reader.start()
    assert _wait_for(lambda: scaler.registry.get_sample_value("smoe_scaler_streams_open") == 1)
    # Changes that must not push: another expert, and 0 -> 0.
    store.update(decision("tiny", {"moe1/e0": 0, "moe1/e1": 5}))
    store.update(decision("tiny", {"moe1/e0": 0, "moe1/e1": 0}))
    store.update(decision("tiny", {"moe1/e0": 2}))  # 0 -> 2: push
    assert first.wait(5)
    store.update(decision("tiny", {"moe1/e0": 3}))  # 2 -> 3: still active, no push
    stream.cancel()
    reader.join(5)
    assert received == [True]


def test_stream_pushes_at_open_when_already_active(scaler, store):
    store.update(decision("tiny", {"moe1/e0": 1}))
    stream = scaler.stub.StreamIsActive(ref(), timeout=5)
    assert next(stream).result is True
    stream.cancel()


def test_stream_ends_cleanly_on_shutdown(store):
    registry = CollectorRegistry()
    server, port = create_server("127.0.0.1:0", store=store, registry=registry)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = type_stub(channel).StreamIsActive(ref(), timeout=10)
        assert _wait_for(lambda: registry.get_sample_value("smoe_scaler_streams_open") == 1)
        server.stop(grace_s=2)
        assert list(stream) == []  # ended with status OK, nothing pushed
        assert stream.code() is grpc.StatusCode.OK
    assert registry.get_sample_value("smoe_scaler_rpcs_total",
                                     {"method": "StreamIsActive", "code": "OK"}) == 1


def test_cancelled_stream_is_released(scaler):
    stream = scaler.stub.StreamIsActive(ref(), timeout=10)
    assert _wait_for(lambda: scaler.registry.get_sample_value("smoe_scaler_streams_open") == 1)
    stream.cancel()
    assert _wait_for(lambda: scaler.registry.get_sample_value("smoe_scaler_streams_open") == 0)


def test_health_liveness_apart_from_readiness(clock):
    store = DecisionStore(staleness_s=STALENESS_S, clock=clock)
    with running_scaler(store) as s:
        health = health_pb2_grpc.HealthStub(s.channel)

        def status(service: str):
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                                health_pb2.HealthCheckResponse.NOT_SERVING)
        assert status("") == status("liveness") == serving
        assert status("readiness") == status("externalscaler.ExternalScaler") == not_serving
        store.add_pipeline(tiny_pipeline())  # loaded: ready, though no decision exists yet
        assert _wait_for(lambda: status("readiness") == serving)
        assert status("externalscaler.ExternalScaler") == serving


def test_reflection_is_opt_in(scaler, store):
    stub = reflection_pb2_grpc.ServerReflectionStub(scaler.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as info:  # off by default
        next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with running_scaler(store, reflection=True) as on:
        stub = reflection_pb2_grpc.ServerReflectionStub(on.channel)
        response = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {"externalscaler.ExternalScaler", "grpc.health.v1.Health"} <= names


def test_metrics_registry_content(scaler, store, clock):
    store.update(decision("tiny", {"moe1/e0": 1}, at=T0 - 12.5))
    poll(scaler.stub, ref())
    status_of(scaler.stub.GetMetrics, metrics_request(ref(pipeline="nope")))
    sample = scaler.registry.get_sample_value
    assert sample("smoe_scaler_rpcs_total", {"method": "GetMetrics", "code": "OK"}) == 1
    assert sample("smoe_scaler_rpcs_total", {"method": "GetMetrics", "code": "NOT_FOUND"}) == 1
    assert sample("smoe_scaler_rpcs_total", {"method": "IsActive", "code": "OK"}) == 1
    assert sample("smoe_scaler_rpc_duration_seconds_count", {"method": "GetMetricSpec"}) == 1
    assert sample("smoe_scaler_decision_age_seconds", {"pipeline": "tiny"}) == 12.5
    clock.now += 10  # computed at collection time
    assert sample("smoe_scaler_decision_age_seconds", {"pipeline": "tiny"}) == 22.5
    assert sample("smoe_scaler_decision_file_error", {"pipeline": "tiny"}) == 0


def test_busy_port_is_refused(scaler, store):
    with pytest.raises(RuntimeError):
        create_server(f"127.0.0.1:{scaler.port}", store=store, registry=CollectorRegistry())


def type_stub(channel):
    from smoelib.keda_proto.externalscaler_pb2_grpc import ExternalScalerStub

    return ExternalScalerStub(channel)


def _wait_for(condition, *, attempts: int = 200) -> bool:
    """Bounded wait for server-side state another thread produces (no fixed sleeps)."""
    done = threading.Event()
    for _ in range(attempts):
        if condition():
            return True
        done.wait(0.025)
    return False


def test_store_outlives_a_stopped_server(store):
    with running_scaler(store) as s:
        stream = s.stub.StreamIsActive(ref(), timeout=5)  # held: a dropped call is cancelled
        assert _wait_for(lambda: s.registry.get_sample_value("smoe_scaler_streams_open") == 1)
        stream.cancel()
    store.update(decision("tiny", {"moe1/e0": 1}))  # no listener left on the closed loop
    with running_scaler(store) as s:
        assert poll(s.stub, ref())[1:] == (1.0, True)
