"""Every answer shape Prometheus' HTTP API can give maps to one clear error naming the query.

A real HTTP server on loopback stands in for a misbehaving Prometheus; the real
``PrometheusSource`` queries it. "Unreachable" only when nothing answered.
"""

from __future__ import annotations

import json
import socket

import pytest

from smoelib.control.metrics import PrometheusSource
from smoelib.errors import PermanentError, TransientError
from smoelib.topology import build_dag
from tests.integration.http_fixtures import JsonHandler, serving

pytestmark = pytest.mark.integration
DAG = build_dag({"name": "tiny", "slo_ms": 60, "stages": [
    {"id": "attn"}, {"id": "moe1", "experts": 2, "top_k": 1}, {"id": "head"}]})


def vector(*values):
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"expert": f"moe1/e{i}"}, "value": [1.0, v]} for i, v in enumerate(values)]}}


class Scripted(JsonHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.answer(*self.server.answer)


@pytest.fixture(scope="module")
def prometheus():
    with serving(Scripted, answer=(200, b"{}")) as server:
        yield server


def ask(server, status, body, name="calls_per_s", queries=None):
    server.answer = (status, body)
    source = PrometheusSource(DAG, url=f"http://127.0.0.1:{server.server_address[1]}",
                              timeout_s=2, queries=queries)
    return source.query(name)


@pytest.mark.parametrize("status, body, error, message", [
    (200, {"status": "error", "errorType": "internal", "error": "boom"}, TransientError,
     "Prometheus query 'calls_per_s': Prometheus answered status 'error' (internal: boom)"),
    (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}, PermanentError,
     "Prometheus query 'calls_per_s': Prometheus answered status 'error' (bad_data: parse "
     "error)"),
    (503, b"<html>unavailable</html>", TransientError,
     "Prometheus query 'calls_per_s': Prometheus answered HTTP 503"),
    (200, b"not json at all", TransientError,
     "Prometheus query 'calls_per_s': HTTP 200 with a body that is not a JSON object"),
    (200, {"status": "success"}, TransientError,
     "Prometheus query 'calls_per_s': the answer has no data.result"),
    (200, {"status": "success", "data": {"resultType": "vector", "result": {"a": 1}}},
     TransientError, "Prometheus query 'calls_per_s': data.result is a dict, not a list"),
    (200, vector("abc"), TransientError,
     "Prometheus query 'calls_per_s': sample value 'abc' is not a number"),
    (200, {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
     TransientError, "Prometheus query 'calls_per_s': a sample without a [time, value] pair"),
    (200, {"status": "success", "data": {"resultType": "matrix", "result": []}},
     PermanentError, "Prometheus query 'calls_per_s' returns a 'matrix', not an instant "
     "vector: check its metrics.queries override"),
])
def test_every_odd_answer_is_one_clear_error(prometheus, status, body, error, message):
    with pytest.raises(error) as info:
        ask(prometheus, status, body)
    assert str(info.value).startswith(message)
    assert "unreachable" not in str(info.value)


def test_a_good_vector_and_a_scalar_parse(prometheus):
    assert [s["value"][1] for s in ask(prometheus, 200, vector("1.5", "NaN"))][0] == 1.5
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "7"]}}
    assert ask(prometheus, 200, scalar)[0]["value"][1] == 7.0


def test_unreachable_only_when_nothing_answers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens
    source = PrometheusSource(DAG, url=f"http://127.0.0.1:{port}", timeout_s=1)
    with pytest.raises(TransientError, match="Prometheus unreachable for query 'calls_per_s'"):
        source.query("calls_per_s")


def test_a_nan_sample_age_is_named_as_such(prometheus):
    source = PrometheusSource(DAG, url=f"http://127.0.0.1:{prometheus.server_address[1]}",
                              timeout_s=2)
    prometheus.answer = (200, json.dumps({"status": "success", "data": {
        "resultType": "vector", "result": [{"metric": {}, "value": [1.0, "NaN"]}]}}).encode())
    with pytest.raises(TransientError, match="NaN for the age of the newest sample") as info:
        source.fetch(0.0)
    assert "exporters are gone" not in str(info.value)


def test_a_range_vector_override_is_refused_as_the_query_s_fault(prometheus):
    matrix = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"expert": "moe1/e0"}, "values": [[1.0, "1"], [2.0, "2"]]}]}}
    with pytest.raises(PermanentError, match="check its metrics.queries override"):
        ask(prometheus, 200, matrix, queries={"calls_per_s": "smoe_expert_calls_total[5m]"})


def test_smoe_serve_refuses_a_range_vector_override_before_it_listens(prometheus, tmp_path,
                                                                      capsys):
    import yaml

    from smoelib.cli import main

    prometheus.answer = (200, json.dumps({"status": "success", "data": {
        "resultType": "matrix", "result": []}}).encode())
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "metrics": {"queries": {"calls_per_s": "smoe_expert_calls_total[5m]"}},
        "vertical": {"backend": "none"}, "policy": {"name": "static"}}))
    pipeline = tmp_path / "tiny.yml"
    pipeline.write_text(yaml.safe_dump({"name": "tiny", "slo_ms": 60, "stages": [
        {"id": "attn"}, {"id": "moe1", "experts": 2, "top_k": 1}]}))
    code = main(["serve", "--pipeline", str(pipeline), "--config", str(config), "--prometheus",
                 f"http://127.0.0.1:{prometheus.server_address[1]}", "--grpc-port", "0",
                 "--metrics-port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"error: {config}: metrics.queries: Prometheus query 'calls_per_s' returns a "
                   "'matrix', not an instant vector: check its metrics.queries override"]


@pytest.fixture
def https_prometheus(tmp_path):
    import ssl

    from tests.integration.scaler_fixtures import make_pki

    pki = make_pki(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    with serving(Scripted, tls=context, answer=(200, vector("2"))) as server:
        yield f"https://127.0.0.1:{server.server_address[1]}", pki.ca


def test_https_is_verified_by_default_with_a_ca_bundle_setting_and_an_explicit_opt_out(
        https_prometheus, caplog):
    url, ca = https_prometheus
    with pytest.raises(PermanentError, match="certificate is not trusted .*metrics.ca_bundle"):
        PrometheusSource(DAG, url=url, timeout_s=2).query("calls_per_s")
    trusted = PrometheusSource(DAG, url=url, timeout_s=2, verify=str(ca))
    assert trusted.query("calls_per_s")[0]["value"][1] == 2.0
    unverified = PrometheusSource(DAG, url=url, timeout_s=2, verify=False)
    assert unverified.query("calls_per_s")[0]["value"][1] == 2.0
    assert "metrics.tls_verify is false" in caplog.text


class ByQuery(JsonHandler):
    """Answers each PromQL query by a rule of the test: ``server.rules`` maps a substring of
    the query to the vector to answer; anything else is an empty vector."""

    def do_GET(self):  # noqa: N802 - the stdlib's name
        from urllib.parse import parse_qs, urlparse

        promql = parse_qs(urlparse(self.path).query)["query"][0]
        result = next((v for k, v in self.server.rules.items() if k in promql), [])
        self.answer(200, {"status": "success", "data": {"resultType": "vector",
                                                        "result": result}})


def test_pending_replicas_without_their_series_are_unknown_said_once_never_zero(caplog):
    fn = DAG.function_name("moe1/e0")
    rules = {
        "time() - max(timestamp": [{"metric": {}, "value": [1.0, "1"]}],
        "smoe_expert_calls_total": [{"metric": {"expert": "moe1/e0"}, "value": [1.0, "2"]}],
        "kube_deployment_status_replicas_ready": [
            {"metric": {"deployment": fn}, "value": [1.0, "1"]}],
        "kube_deployment_status_replicas_unavailable": [
            {"metric": {"deployment": fn}, "value": [1.0, "2"]}],
    }
    with serving(ByQuery, rules=rules) as server:
        source = PrometheusSource(DAG, url=f"http://127.0.0.1:{server.server_address[1]}",
                                  timeout_s=2)
        i = DAG.nodes.index("moe1/e0")
        for _ in range(2):
            obs = source.fetch(0.0)
            assert obs.replicas_pending[i] != obs.replicas_pending[i]  # NaN: unknown
            assert obs.replicas_starting[i] == 2.0  # every unavailable pod counted as starting
        assert source.unknown == {"replicas_pending"}
        assert caplog.text.count("pending replicas are unknown") == 1
        server.rules["kube_pod_owner"] = [{"metric": {"deployment": fn}, "value": [1.0, "1"]}]
        obs = source.fetch(0.0)
        assert obs.replicas_pending[i] == 1.0 and obs.replicas_starting[i] == 1.0
        assert source.unknown == set()
