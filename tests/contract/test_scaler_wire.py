"""The KEDA wire contract, checked field by field.

Requests are built byte by byte from KEDA's field table (research note ``keda.md`` §1) and sent
over a real channel as raw bytes; responses are decoded by hand the same way. Our generated
stubs play no part on the client side, so a wrong field number in our .proto fails here.
"""

from __future__ import annotations

import struct

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from smoelib.keda_proto import externalscaler_pb2 as pb
from smoelib.scaler import DecisionStore
from tests.integration.scaler_fixtures import (
    STALENESS_S,
    SettableClock,
    decision,
    running_scaler,
    tiny_pipeline,
)

VARINT, I64, LEN = 0, 1, 2


# ---- a minimal protobuf encoder/decoder, straight from the wire-format spec ---------------
def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def string(field: int, text: str) -> bytes:
    data = text.encode()
    return key(field, LEN) + varint(len(data)) + data


def message(field: int, body: bytes) -> bytes:
    return key(field, LEN) + varint(len(body)) + body


def scaled_object_ref(name: str, namespace: str, metadata: dict[str, str]) -> bytes:
    """ScaledObjectRef: name=1, namespace=2, scalerMetadata=3 (map entries key=1, value=2)."""
    out = string(1, name) + string(2, namespace)
    for k, v in metadata.items():
        out += message(3, string(1, k) + string(2, v))
    return out


def get_metrics_request(ref: bytes, metric_name: str) -> bytes:
    """GetMetricsRequest: scaledObjectRef=1, metricName=2."""
    return message(1, ref) + string(2, metric_name)


def decode(data: bytes) -> dict[int, list[tuple[int, object]]]:
    """Field number -> [(wire type, raw value)] (varint int, 8 bytes, or bytes)."""
    fields: dict[int, list[tuple[int, object]]] = {}
    i = 0

    def read_varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        tag = read_varint()
        field, wire_type = tag >> 3, tag & 7
        if wire_type == VARINT:
            value: object = read_varint()
        elif wire_type == I64:
            value, i = data[i:i + 8], i + 8
        elif wire_type == LEN:
            n = read_varint()
            value, i = data[i:i + n], i + n
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
        fields.setdefault(field, []).append((wire_type, value))
    return fields


def as_double(raw: object) -> float:
    return struct.unpack("<d", raw)[0]


# ---- tests -------------------------------------------------------------------------------
PATH = "/externalscaler.ExternalScaler/"
METADATA = {"scalerAddress": "smoe-scaler.smoe:9090", "pipeline": "tiny", "expert": "moe1/e1"}


@pytest.fixture
def scaler():
    clock = SettableClock()
    store = DecisionStore(staleness_s=STALENESS_S, clock=clock)
    store.add_pipeline(tiny_pipeline())
    store.update(decision("tiny", {"moe1/e0": 0, "moe1/e1": 3}))
    with running_scaler(store) as s:
        yield s


def raw(scaler, method: str, request: bytes) -> bytes:
    call = scaler.channel.unary_unary(PATH + method, request_serializer=None,
                                      response_deserializer=None)
    return call(request, timeout=5)


def test_get_metric_spec_by_hand(scaler):
    body = raw(scaler, "GetMetricSpec", scaled_object_ref("so", "openfaas-fn", METADATA))
    top = decode(body)
    assert list(top) == [1] and len(top[1]) == 1  # exactly one MetricSpec in metricSpecs=1
    spec = decode(top[1][0][1])
    assert spec[1] == [(LEN, b"tiny-moe1-e1")]  # metricName=1
    assert spec[2] == [(VARINT, 1)]  # targetSize=2, int64
    assert spec[3][0][0] == I64 and as_double(spec[3][0][1]) == 1.0  # targetSizeFloat=3


def test_get_metrics_by_hand(scaler):
    ref = scaled_object_ref("so", "openfaas-fn", METADATA)
    body = raw(scaler, "GetMetrics", get_metrics_request(ref, "tiny-moe1-e1"))
    top = decode(body)
    assert list(top) == [1] and len(top[1]) == 1  # exactly one MetricValue
    value = decode(top[1][0][1])
    assert value[1] == [(LEN, b"tiny-moe1-e1")]
    assert value[2] == [(VARINT, 3)]  # metricValue=2
    assert as_double(value[3][0][1]) == 3.0  # metricValueFloat=3


def test_is_active_by_hand(scaler):
    active = decode(raw(scaler, "IsActive", scaled_object_ref("so", "ns", METADATA)))
    assert active == {1: [(VARINT, 1)]}  # result=1, true
    idle = raw(scaler, "IsActive", scaled_object_ref("so", "ns", {**METADATA,
                                                                  "expert": "moe1/e0"}))
    assert idle == b""  # proto3: false is the empty message


def test_stream_is_active_by_hand(scaler):
    call = scaler.channel.unary_stream(PATH + "StreamIsActive", request_serializer=None,
                                       response_deserializer=None)
    stream = call(scaled_object_ref("so", "ns", METADATA), timeout=5)
    assert decode(next(stream)) == {1: [(VARINT, 1)]}
    stream.cancel()


def test_error_status_by_hand(scaler):
    with pytest.raises(grpc.RpcError) as e:
        raw(scaler, "GetMetricSpec", scaled_object_ref("so", "ns", {"pipeline": "tiny"}))
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_proto_matches_the_field_table():
    table = {
        "ScaledObjectRef": {"name": (1, "string"), "namespace": (2, "string"),
                            "scalerMetadata": (3, "map")},
        "IsActiveResponse": {"result": (1, "bool")},
        "GetMetricSpecResponse": {"metricSpecs": (1, "repeated MetricSpec")},
        "MetricSpec": {"metricName": (1, "string"), "targetSize": (2, "int64"),
                       "targetSizeFloat": (3, "double")},
        "GetMetricsRequest": {"scaledObjectRef": (1, "ScaledObjectRef"),
                              "metricName": (2, "string")},
        "GetMetricsResponse": {"metricValues": (1, "repeated MetricValue")},
        "MetricValue": {"metricName": (1, "string"), "metricValue": (2, "int64"),
                        "metricValueFloat": (3, "double")},
    }
    fd = FieldDescriptor
    scalar = {fd.TYPE_STRING: "string", fd.TYPE_BOOL: "bool", fd.TYPE_INT64: "int64",
              fd.TYPE_DOUBLE: "double"}
    assert pb.DESCRIPTOR.package == "externalscaler"
    for name, fields in table.items():
        descriptor = pb.DESCRIPTOR.message_types_by_name[name]
        got = {}
        for f in descriptor.fields:
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                kind = "map"
            elif f.message_type is not None:
                kind = ("repeated " if f.is_repeated else "") + f.message_type.name
            else:
                kind = scalar[f.type]
            got[f.name] = (f.number, kind)
        assert got == fields, name
    service = pb.DESCRIPTOR.services_by_name["ExternalScaler"]
    methods = {m.name: (m.input_type.name, m.output_type.name, m.server_streaming)
               for m in service.methods}
    assert methods == {
        "IsActive": ("ScaledObjectRef", "IsActiveResponse", False),
        "StreamIsActive": ("ScaledObjectRef", "IsActiveResponse", True),
        "GetMetricSpec": ("ScaledObjectRef", "GetMetricSpecResponse", False),
        "GetMetrics": ("GetMetricsRequest", "GetMetricsResponse", False),
    }
