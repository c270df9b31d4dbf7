"""The ``externalscaler.ExternalScaler`` service: KEDA's questions answered from the store.

Handlers never compute anything expensive: they look the expert up in the
:class:`~smoelib.scaler.store.DecisionStore` and return response bytes that are serialised once
and cached (the metric spec never changes; a GetMetrics answer changes only with the replicas).
Every failure goes through :func:`~smoelib.scaler.status.grpc_status`.

The expert is named by the trigger metadata: ``pipeline`` (the pipeline's name) and ``expert``
(the node id, e.g. ``moe1/e0``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from time import perf_counter

import grpc

from smoelib.keda_proto import externalscaler_pb2 as pb
from smoelib.scaler.naming import requested_metric
from smoelib.scaler.status import (
    MetricNotFound,
    MissingMetadata,
    ScalerLookupError,
    grpc_status,
)
from smoelib.scaler.store import DecisionStore
from smoelib.scaler.telemetry import ScalerTelemetry

__all__ = ["ExternalScalerServicer", "SERVICE_NAME"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExternalScaler"].full_name
_OK = grpc.StatusCode.OK
_ACTIVE = pb.IsActiveResponse(result=True).SerializeToString()
_INACTIVE = pb.IsActiveResponse(result=False).SerializeToString()
# The HPA target: desired replicas / 1 = desired replicas (AverageValue). Never 0: the API
# server rejects a zero target.
_TARGET = 1


def _target(ref: pb.ScaledObjectRef) -> tuple[str, str]:
    """(pipeline, expert node id) from the trigger metadata. Raises MissingMetadata."""
    metadata = ref.scalerMetadata
    pipeline = metadata.get("pipeline")
    expert = metadata.get("expert")
    if not pipeline or not expert:
        raise MissingMetadata(
            f"ScaledObject {ref.namespace}/{ref.name}: trigger metadata needs 'pipeline' and "
            f"'expert' (the node id, e.g. moe1/e0); got keys {sorted(metadata)}")
    return pipeline, expert


class ExternalScalerServicer:
    """Answers GetMetricSpec, GetMetrics, IsActive and StreamIsActive (grpc.aio handlers).

    Must be constructed on the event loop that serves it: store changes (made on any thread)
    are handed to that loop to wake StreamIsActive streams.
    """

    def __init__(self, store: DecisionStore, telemetry: ScalerTelemetry):
        self._store = store
        self._telemetry = telemetry
        self._loop = asyncio.get_running_loop()
        self._spec_bytes: dict[tuple[str, str], bytes] = {}
        self._value_bytes: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._closing = False
        self._unsubscribe = store.subscribe(self._on_store_change)

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """The service's handlers; responses are pre-serialised bytes."""
        ref = pb.ScaledObjectRef.FromString
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "GetMetricSpec": grpc.unary_unary_rpc_method_handler(
                self.GetMetricSpec, request_deserializer=ref),
            "GetMetrics": grpc.unary_unary_rpc_method_handler(
                self.GetMetrics, request_deserializer=pb.GetMetricsRequest.FromString),
            "IsActive": grpc.unary_unary_rpc_method_handler(
                self.IsActive, request_deserializer=ref),
            "StreamIsActive": grpc.unary_stream_rpc_method_handler(
                self.StreamIsActive, request_deserializer=ref),
        })

    # ---- unary RPCs -----------------------------------------------------------------------
    async def GetMetricSpec(self, request: pb.ScaledObjectRef, context) -> bytes:  # noqa: N802
        """One metric per expert, target 1; answered before any decision exists."""
        started = perf_counter()
        try:
            key = _target(request)
            body = self._spec_bytes.get(key)
            if body is None:
                name = self._store.metric_of(*key)
                body = pb.GetMetricSpecResponse(metricSpecs=[pb.MetricSpec(
                    metricName=name, targetSize=_TARGET, targetSizeFloat=float(_TARGET))]
                ).SerializeToString()
                self._spec_bytes[key] = body
        except Exception as e:
            await self._fail("GetMetricSpec", e, started, context)
        self._telemetry.observe("GetMetricSpec", _OK, perf_counter() - started)
        return body

    async def GetMetrics(self, request: pb.GetMetricsRequest, context) -> bytes:  # noqa: N802
        """Exactly one value: the desired replicas (int and float fields)."""
        started = perf_counter()
        try:
            key = _target(request.scaledObjectRef)
            name = self._store.metric_of(*key)
            if not requested_metric(request.metricName, advertised=name):
                raise MetricNotFound(f"{key[0]}/{key[1]} serves metric {name!r}, "
                                     f"not {request.metricName!r}")
            replicas = self._store.lookup(*key).replicas
            cached = self._value_bytes.get(key)
            if cached is None or cached[0] != replicas:
                cached = (replicas, pb.GetMetricsResponse(metricValues=[pb.MetricValue(
                    metricName=name, metricValue=replicas, metricValueFloat=float(replicas))]
                ).SerializeToString())
                self._value_bytes[key] = cached
        except Exception as e:
            await self._fail("GetMetrics", e, started, context)
        self._telemetry.observe("GetMetrics", _OK, perf_counter() - started)
        return cached[1]

    async def IsActive(self, request: pb.ScaledObjectRef, context) -> bytes:  # noqa: N802
        """Active iff the desired replicas are above 0."""
        started = perf_counter()
        try:
            body = _ACTIVE if self._store.lookup(*_target(request)).replicas > 0 else _INACTIVE
        except Exception as e:
            await self._fail("IsActive", e, started, context)
        self._telemetry.observe("IsActive", _OK, perf_counter() - started)
        return body

    # ---- the push stream ------------------------------------------------------------------
    async def StreamIsActive(self, request: pb.ScaledObjectRef, context  # noqa: N802
                             ) -> AsyncIterator[bytes]:
        """Push ``true`` whenever the expert becomes active (also at once on open, if it is).

        Never pushes ``false``: KEDA >= 2.18 ignores it, and older KEDA scaled to zero on it
        regardless of other triggers; scale-down comes from the polled RPCs. Ends cleanly
        (status OK) when the server shuts down.
        """
        started = perf_counter()
        try:
            pipeline, expert = _target(request)
            self._store.metric_of(pipeline, expert)
        except Exception as e:
            await self._fail("StreamIsActive", e, started, context)
        self._telemetry.streams_open.inc()
        code = grpc.StatusCode.CANCELLED
        try:
            was_active = False
            while not self._closing:
                changed = self._event(pipeline)  # taken before the check: no lost wake-up
                active = self._active(pipeline, expert)
                if active and not was_active:
                    yield _ACTIVE
                was_active = active
                await changed.wait()
            code = _OK
        finally:
            self._telemetry.streams_open.dec()
            self._telemetry.observe("StreamIsActive", code, None)

    def close(self) -> None:
        """End every open stream cleanly; call on the serving loop before stopping the server."""
        self._closing = True
        self._unsubscribe()
        for event in self._changed.values():
            event.set()

    # ---- internals ------------------------------------------------------------------------
    def _active(self, pipeline: str, expert: str) -> bool:
        try:
            return self._store.lookup(pipeline, expert).replicas > 0
        except ScalerLookupError:
            return False  # unanswerable is not a reason to push anything

    def _event(self, pipeline: str) -> asyncio.Event:
        event = self._changed.get(pipeline)
        if event is None:
            event = self._changed[pipeline] = asyncio.Event()
        return event

    def _on_store_change(self, pipeline: str) -> None:
        # Called on the writer's thread; the events belong to the loop.
        self._loop.call_soon_threadsafe(self._wake, pipeline)

    def _wake(self, pipeline: str) -> None:
        event = self._changed.pop(pipeline, None)
        if event is not None:
            event.set()

    async def _fail(self, method: str, error: Exception, started: float, context) -> None:
        code, message = grpc_status(error)
        if code is grpc.StatusCode.INTERNAL:
            log.error("%s failed", method, exc_info=error)
        self._telemetry.observe(method, code, perf_counter() - started)
        await context.abort(code, message)
