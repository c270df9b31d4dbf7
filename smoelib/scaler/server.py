"""The scaler's gRPC server: the ExternalScaler service, health, optional reflection and (m)TLS.

grpc.aio serves on its own event-loop thread, so one process holds thousands of open
StreamIsActive streams (one per external-push ScaledObject) without a thread each, while the
rest of the process (the controller, the CLI) stays synchronous.

Health (``grpc.health.v1``): ``""`` and ``"liveness"`` say the process serves (and, inside
``smoe serve``, that its controllers still tick: :meth:`ScalerServer.set_liveness`);
``"readiness"`` and ``"externalscaler.ExternalScaler"`` say a pipeline is loaded, so the scaler
can answer every GetMetricSpec. Missing decisions are reported per RPC (UNAVAILABLE), never by
readiness, and a failing dependency (a down Prometheus) changes neither.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from smoelib.scaler.servicer import SERVICE_NAME, ExternalScalerServicer
from smoelib.scaler.store import DecisionStore
from smoelib.scaler.telemetry import ScalerTelemetry
from smoelib.scaler.tls import TlsMaterial

__all__ = ["ScalerServer", "create_server", "install_shutdown_signals", "LIVENESS", "READINESS"]

log = logging.getLogger(__name__)

LIVENESS = ("", "liveness")
READINESS = ("readiness", SERVICE_NAME)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_START_TIMEOUT_S = 30.0
# Without this, Linux lets a second server bind a port already in use (SO_REUSEPORT) and the
# two silently share KEDA's connections.
_OPTIONS = (("grpc.so_reuseport", 0),)


class ScalerServer:
    """A started scaler server; made by :func:`create_server`.

    ``port`` is the bound port. :meth:`stop` ends streams cleanly, finishes in-flight RPCs
    within the grace period and joins the serving thread; it is idempotent.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self._loop = loop
        self._thread = thread
        self._server: grpc.aio.Server | None = None
        self._servicer: ExternalScalerServicer | None = None
        self._health: health.aio.HealthServicer | None = None
        self._stopped = threading.Event()
        self._unsubscribe: Callable[[], None] = lambda: None
        self.port = 0

    async def _start(self, address: str, *, store: DecisionStore, telemetry: ScalerTelemetry,
                     tls: TlsMaterial | None, reflection_on: bool) -> int:
        server = grpc.aio.server(options=_OPTIONS)
        servicer = ExternalScalerServicer(store, telemetry)
        server.add_generic_rpc_handlers((servicer.generic_handler(),))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if reflection_on:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.server_credentials())
        if not port:  # older grpcio returns 0 instead of raising
            raise RuntimeError(f"cannot bind {address}")
        await server.start()
        self._server, self._servicer, self._health, self.port = (
            server, servicer, health_servicer, port)
        for service in LIVENESS:
            await health_servicer.set(service, _SERVING)
        await self._set_readiness(store)
        self._unsubscribe = store.subscribe(lambda _pipeline: self._loop.call_soon_threadsafe(
            self._loop.create_task, self._set_readiness(store)))
        return port

    async def _set_readiness(self, store: DecisionStore) -> None:
        status = _SERVING if store.pipelines() else _NOT_SERVING
        for service in READINESS:
            await self._health.set(service, status)

    async def _stop(self, grace_s: float) -> None:
        self._unsubscribe()
        await self._health.enter_graceful_shutdown()
        self._servicer.close()
        await self._server.stop(grace_s)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop serving: readiness NOT_SERVING, streams end (OK), in-flight RPCs get
        ``grace_s`` seconds, then the loop thread ends."""
        if self._stopped.is_set():
            return
        try:
            if self._server is not None and self._loop.is_running():
                asyncio.run_coroutine_threadsafe(self._stop(grace_s), self._loop).result(
                    timeout=grace_s + _START_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            self._stopped.set()

    def set_liveness(self, serving: bool) -> None:
        """Report the process live (SERVING) or dead or wedged (NOT_SERVING) on the liveness
        services; thread-safe."""
        status = _SERVING if serving else _NOT_SERVING

        async def _set() -> None:
            for service in LIVENESS:
                await self._health.set(service, status)
        if self._health is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(_set(), self._loop).result(timeout=_START_TIMEOUT_S)

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        """Block until :meth:`stop` has finished (or ``timeout_s`` seconds); True if stopped."""
        return self._stopped.wait(timeout_s)


def create_server(address: str, *, store: DecisionStore, registry: CollectorRegistry,
                  tls: TlsMaterial | None = None, reflection: bool = False
                  ) -> tuple[ScalerServer, int]:
    """Build, bind and start the scaler server.

    Args:
        address: ``host:port`` to listen on; port 0 picks a free one (``127.0.0.1:0``).
        store: the decisions served.
        registry: where the scaler's own metrics are registered.
        tls: server certificate and key (and a client CA for mTLS); None for plaintext.
        reflection: also serve gRPC server reflection (for grpcurl; off unless asked for).

    Returns:
        The started server and its bound port.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    telemetry = ScalerTelemetry(registry, store)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="smoe-scaler-grpc", daemon=True)
    thread.start()
    server = ScalerServer(loop, thread)
    try:
        port = asyncio.run_coroutine_threadsafe(
            server._start(address, store=store, telemetry=telemetry, tls=tls,
                          reflection_on=reflection), loop
        ).result(timeout=_START_TIMEOUT_S)
    except BaseException:
        server.stop(grace_s=0)
        raise
    log.info("KEDA external scaler listening on %s (port %d, %s)", address, port,
             "plaintext" if tls is None else "mTLS" if tls.client_ca else "TLS")
    return server, port


def install_shutdown_signals(on_signal: Callable[[int], None], *,
                             signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)
                             ) -> Callable[[], None]:
    """Call ``on_signal(signum)`` on SIGTERM/SIGINT instead of dying; main thread only.

    ``on_signal`` runs in the main thread between bytecodes: it should only set an event.
    Returns the function that restores the previous handlers.
    """
    previous = {s: signal.signal(s, lambda signum, _frame: on_signal(signum)) for s in signals}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return restore
