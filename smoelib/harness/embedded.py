"""The embedded default: the simulated cluster behind the same ports a real cluster offers.

:class:`EmbeddedCluster` wraps a :class:`~smoelib.sim.env.SimEnv` and plays every part the
controller talks to in production:

- the metric source (``fetch``: what Prometheus would return, or a real Prometheus scraping the
  simulator's exporter);
- KEDA: every polling interval it asks the scaler over a real gRPC channel for each expert's
  replicas (``GetMetrics``, ``IsActive``), and falls back to the ScaledObject's ``fallback``
  replicas (``currentReplicasIfHigher``) when the scaler answers an error;
- the functions the vertical module patches (:attr:`EmbeddedCluster.functions`, a
  :class:`~smoelib.sim.actuator.SimulatedFunctions`: the simulated backend's port).

:class:`SimClock` is the controller's clock in simulated time: ``sleep`` advances the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import grpc

from smoelib.core.keda import fallback_replicas
from smoelib.core.observation import Observation
from smoelib.keda_proto import externalscaler_pb2 as pb
from smoelib.keda_proto import externalscaler_pb2_grpc as pb_grpc
from smoelib.pipeline.topology import PipelineDAG
from smoelib.settings import Settings
from smoelib.sim.actuator import SimulatedFunctions
from smoelib.sim.env import SimEnv, StepResult

__all__ = ["EmbeddedCluster", "KedaPoller", "SimClock"]

RPC_TIMEOUT_S = 2.0


class KedaPoller:
    """KEDA's side of the external-scaler wire for one pipeline's ScaledObjects.

    Args:
        address: the scaler's ``host:port``.
        dag: the pipeline; one ScaledObject per expert, named after its function.
        settings: the fallback rule of the generated ScaledObjects.
    """

    def __init__(self, address: str, dag: PipelineDAG, settings: Settings):
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.ExternalScalerStub(self.channel)
        self.dag = dag
        self.refs = {n: pb.ScaledObjectRef(name=dag.function_name(n), namespace=dag.namespace,
                                           scalerMetadata={"pipeline": dag.name, "expert": n})
                     for n in dag.experts}
        self.fallback = {n: fallback_replicas(dag.spec(n), settings) for n in dag.experts}
        self.metric: dict[str, str] = {}
        self.errors = 0

    def metric_specs(self) -> None:
        """``GetMetricSpec`` for every ScaledObject, as KEDA does when it builds the HPA."""
        for node, ref in self.refs.items():
            spec = self.stub.GetMetricSpec(ref, timeout=RPC_TIMEOUT_S)
            self.metric[node] = spec.metricSpecs[0].metricName

    def poll(self, current: Mapping[str, int]) -> dict[str, int]:
        """Desired replicas per expert: ``GetMetrics`` (metric = replicas, target 1) gated by
        ``IsActive``; on an error the fallback, ``max(current, fallback replicas)``."""
        if not self.metric:
            self.metric_specs()
        calls = {n: (self.stub.GetMetrics.future(pb.GetMetricsRequest(
                    scaledObjectRef=ref, metricName=self.metric[n]), timeout=RPC_TIMEOUT_S),
                     self.stub.IsActive.future(ref, timeout=RPC_TIMEOUT_S))
                 for n, ref in self.refs.items()}
        out = {}
        for node, (metrics, active) in calls.items():
            try:
                value = metrics.result().metricValues[0].metricValueFloat
                out[node] = int(round(value)) if active.result().result else 0
            except grpc.RpcError:
                self.errors += 1
                out[node] = max(int(current.get(node, 0)), self.fallback[node])
        return out

    def close(self) -> None:
        self.channel.close()


class EmbeddedCluster:
    """A simulated cluster seen through production's ports (see the module docstring).

    Args:
        env: the simulator, already ``reset``.
        poller: KEDA's polling of the scaler.
        first: the observation ``reset`` returned.
        on_tick: called after every simulated tick with its :class:`StepResult`.
    """

    def __init__(self, env: SimEnv, poller: KedaPoller, first: Observation, *,
                 on_tick: Callable[[StepResult], None] | None = None):
        self.env = env
        self.dag = env.dag
        self.poller = poller
        self.observation = first
        self.on_tick = on_tick
        self.functions = SimulatedFunctions(env)
        self.replicas = {n: max(1, env.dag.spec(n).replicas_min) for n in env.dag.experts}
        self.done = False

    @property
    def time_s(self) -> float:
        """Simulated seconds since the episode started."""
        return self.env.tick * self.env.dt

    @property
    def knobs(self) -> Mapping[str, Mapping[str, float]]:
        """The functions' pod templates, by node id, as the vertical backend set them."""
        return self.functions.knobs

    # ---- the metric source -------------------------------------------------------------------
    def fetch(self, now: float) -> Observation:
        """The latest observation, as a metric source (``now`` is not used: it is the tick's)."""
        return self.observation

    # ---- time -------------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Simulate ``seconds`` (whole ticks): KEDA polls the scaler, the cluster serves."""
        for _ in range(max(1, round(seconds / self.env.dt))):
            if self.done:
                return
            current = {n: int(self.env.spec_replicas[self.functions.index[n]])
                       for n in self.env.dag.experts}
            self.replicas = self.poller.poll(current)
            result = self.env.step(self.functions.decision(self.replicas))
            self.observation = result.observation
            self.done = result.done
            if self.on_tick is not None:
                self.on_tick(result)


class SimClock:
    """Simulated time for the controller: ``now`` is ``epoch`` plus simulated seconds;
    ``sleep`` advances the cluster (and, when ``speed`` is set, waits ``seconds / speed`` of
    real time so that a real Prometheus can scrape the exporter)."""

    def __init__(self, cluster: EmbeddedCluster, *, epoch: float = 1_700_000_000.0,
                 speed: float | None = None):
        self.cluster = cluster
        self.epoch = epoch
        self.speed = speed

    def now(self) -> float:
        return self.epoch + self.cluster.time_s

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        start = time.monotonic()
        self.cluster.advance(seconds)
        if self.speed:
            time.sleep(max(0.0, seconds / self.speed - (time.monotonic() - start)))
