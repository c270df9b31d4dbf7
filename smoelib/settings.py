"""One frozen settings tree for every ``smoe`` command, loaded from ``config.yaml``.

Every field has a default, a docstring and a unit (see :func:`~smoelib.settings_base.setting`);
the defaults ship inside the package, so every command works without a file. Validation
collects every problem (unknown keys, wrong types, out-of-range values) and raises them together
as one :class:`~smoelib.errors.ConfigError`. Derived values are properties.

``examples/config.yaml`` is :func:`render_example` of the defaults: it shows every field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from smoelib.errors import ConfigError, Problem
from smoelib.pipeline.yamlsrc import YamlProblem, load
from smoelib.settings_base import (
    each,
    fraction,
    from_mapping,
    non_negative,
    positive,
    render_commented,
    section,
    setting,
)

__all__ = ["Settings", "load_settings", "render_example", "GpuSharingMode"]

GpuSharingMode = Literal["mps-env", "mps-device-plugin", "none"]


@dataclass(frozen=True)
class GpuSharing:
    """How pods share GPUs. The action space, the simulator and the cost model follow it."""

    mode: GpuSharingMode = setting(
        "mps-env", "mps-env: pods share a GPU through an MPS daemon and "
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE (the share is per pod); mps-device-plugin: the NVIDIA "
        "device plugin gives every pod 1/slots_per_gpu of a GPU (the share is a property of the "
        "node pool); none: CPU-only experts")
    slots_per_gpu: int = setting(
        4, "mps-device-plugin: pods per GPU (the plugin's 'replicas'); each gets 1/N of the GPU",
        unit="pods", check=positive)
    pin_device_memory: bool = setting(
        False, "mps-env: also set CUDA_MPS_PINNED_DEVICE_MEM_LIMIT from the memory knob")
    max_clients_per_gpu: int = setting(
        48, "MPS client limit per GPU (48 on Volta-class MPS)", unit="pods", check=positive)


@dataclass(frozen=True)
class Actions:
    """The choices the policy picks from, per knob (each a sorted list)."""

    gpu_share: tuple[float, ...] = setting(
        (0.1, 0.25, 0.5, 0.75, 1.0), "GPU share choices (MPS thread percentage / 100)",
        unit="fraction of one GPU", check=each(fraction))
    cpu: tuple[float, ...] = setting((0.5, 1.0, 2.0, 4.0), "CPU choices", unit="cores",
                                     check=each(positive))
    memory_mb: tuple[int, ...] = setting((1024, 2048, 4096, 8192), "memory choices",
                                         unit="MiB", check=each(positive))
    concurrency: tuple[int, ...] = setting(
        (1, 2, 4, 8, 16), "OpenFaaS max_inflight choices", unit="calls", check=each(positive))
    max_replica_step: int = setting(
        8, "largest replica change the policy may propose for one expert in one tick",
        unit="replicas", check=positive)


@dataclass(frozen=True)
class Cluster:
    """What the cluster holds. Pods beyond it stay Pending."""

    gpus: int = setting(64, "GPUs available to expert functions", unit="GPUs",
                        check=non_negative)
    cpu_cores: float = setting(1024.0, "schedulable cores for expert and segment pods",
                               unit="cores", check=positive)
    memory_gib: float = setting(4096.0, "schedulable memory", unit="GiB", check=positive)
    in_place_resize: bool = setting(
        True, "the cluster supports in-place pod resize (pods/resize, Kubernetes >= 1.33); "
        "without it CPU and memory changes roll pods like the slow knobs")
    hpa_configurable_tolerance: bool = setting(
        True, "the HPA honours a per-ScaledObject tolerance (Kubernetes >= 1.35 or the "
        "HPAConfigurableTolerance gate); without it the 10% default applies")


@dataclass(frozen=True)
class Prices:
    """Unit prices for the cost model: replica-seconds x (cores, GiB, GPU share) x price.

    Defaults: Google Cloud Compute Engine on-demand list prices, us-central1 (N2 vCPU and
    memory; NVIDIA L4 GPU), from cloud.google.com/compute/vm-instance-pricing and
    cloud.google.com/compute/gpus-pricing. Check the current sheet before quoting costs in
    money; the comparisons in docs/ depend only on ratios.
    """

    currency: str = setting("USD", "currency of every cost figure")
    cpu_core_hour: float = setting(0.031611, "price of one core for an hour",
                                   unit="currency / core-hour", check=non_negative)
    memory_gib_hour: float = setting(0.004237, "price of one GiB for an hour",
                                     unit="currency / GiB-hour", check=non_negative)
    gpu_hour: float = setting(0.56, "price of one whole GPU for an hour",
                              unit="currency / GPU-hour", check=non_negative)


@dataclass(frozen=True)
class Control:
    """The control loop."""

    interval_s: float = setting(5.0, "control interval: one decision per pipeline per tick",
                                unit="s", check=positive)
    warmup_s: float = setting(30.0, "wait before the first action", unit="s",
                              check=non_negative)
    slo_weight: float = setting(
        10.0, "initial weight of SLO overrun against cost (the Lagrange multiplier lambda)",
        unit="cost units per unit of P95/SLO overrun", check=non_negative)


@dataclass(frozen=True)
class Guards:
    """Safety rules applied to every decision before it reaches the cluster."""

    max_step_up: int = setting(8, "largest replica increase per expert per tick",
                               unit="replicas", check=positive)
    max_step_down: int = setting(2, "largest replica decrease per expert per tick",
                                 unit="replicas", check=positive)
    pressure_threshold: float = setting(
        0.9, "hold scale-down while the observed P95 is above this fraction of the SLO",
        unit="fraction of SLO", check=positive)
    hysteresis_ticks: int = setting(
        3, "a slow knob (GPU share, concurrency) changes only after the new value has "
        "persisted this many ticks", unit="ticks", check=positive)
    slow_knob_threshold: float = setting(
        0.2, "a slow knob changes only when the relative change exceeds this",
        unit="fraction", check=non_negative)
    rollout_budget_per_min: int = setting(
        4, "most pods replaced per minute per pipeline by slow-knob rollouts",
        unit="pods / minute", check=non_negative)
    pause_scaledobject_during_rollout: bool = setting(
        False, "annotate the expert's ScaledObject autoscaling.keda.sh/paused while it rolls")


@dataclass(frozen=True)
class Metrics:
    """Where the controller reads observations."""

    prometheus_url: str = setting("http://prometheus:9090", "Prometheus base URL")
    query_timeout_s: float = setting(3.0, "timeout of every Prometheus query", unit="s",
                                     check=positive)
    rate_window_s: float = setting(30.0, "window of rate() and histogram_quantile() queries",
                                   unit="s", check=positive)
    max_sample_age_s: float = setting(
        60.0, "refuse metrics whose newest sample is older than this (an exporter that is gone "
        "keeps being answered from its last samples)", unit="s", check=positive)
    queries: Mapping[str, str] = setting(
        MappingProxyType({}), "PromQL overrides by template name (see smoelib.control.metrics "
        "for the names and the placeholders each template takes)")


@dataclass(frozen=True)
class Scaler:
    """The KEDA external scaler."""

    grpc_port: int = setting(9090, "gRPC port KEDA connects to", unit="port",
                             check=non_negative)
    metrics_port: int = setting(8080, "port of the scaler's own /metrics", unit="port",
                                check=non_negative)
    staleness_s: float = setting(
        60.0, "a decision older than this is answered UNAVAILABLE so KEDA's fallback acts",
        unit="s", check=positive)


@dataclass(frozen=True)
class Vertical:
    """How GPU share, CPU, memory and concurrency reach the functions."""

    backend: Literal["kubernetes", "openfaas-gateway", "simulated", "none"] = setting(
        "kubernetes", "one writer per Deployment: the Kubernetes API, the OpenFaaS gateway, "
        "or the simulator; none: replicas only, the other knobs stay as deployed")
    gateway_url: str = setting("http://gateway.openfaas:8080", "OpenFaaS gateway base URL")
    stack_file: str = setting("", "stack.yml with every function's full spec "
                                  "(required by the openfaas-gateway backend)")
    request_timeout_s: float = setting(10.0, "timeout of every API call", unit="s",
                                       check=positive)
    gateway_auth_dir: str = setting(
        "", "openfaas-gateway: directory where the gateway's basic-auth Secret is mounted (files "
        "basic-auth-user and basic-auth-password); empty: no authentication")
    conflict_retries: int = setting(
        3, "kubernetes: re-reads and re-plans of one object after a 409 conflict",
        unit="retries", check=non_negative)
    resize_watch_s: float = setting(
        2.0, "kubernetes: how long to watch resized pods for PodResizePending before falling "
        "back to a rollout", unit="s", check=non_negative)
    resize_deferred_grace_s: float = setting(
        60.0, "a resize Deferred for longer than this falls back to a rollout (Infeasible does "
        "at once)", unit="s", check=non_negative)
    gpu_resource: str = setting(
        "nvidia.com/gpu", "mps-device-plugin: the extended resource one MPS slot is requested as")
    mps_pool_label: str = setting(
        "", "mps-device-plugin: node label whose value is the node pool's slots per GPU; the GPU "
        "share picks the pool (1/share slots); empty: one pool of gpu_sharing.slots_per_gpu")


@dataclass(frozen=True)
class HpaStock:
    """HPA behaviour and KEDA knobs of a stock ScaledObject: the Kubernetes and KEDA defaults
    (shared/research/keda.md 3.2 and 3.5; scale-up policies as in the defaulting code, 15 s)."""

    tolerance: float = setting(0.1, "HPA tolerance: no change while |ratio - 1| is within it",
                               unit="fraction", check=non_negative)
    scale_up_pods: int = setting(4, "scale-up policy: pods added per period", unit="pods",
                                 check=positive)
    scale_up_percent: float = setting(100.0, "scale-up policy: percent added per period",
                                      unit="%", check=non_negative)
    scale_up_period_s: float = setting(15.0, "scale-up policy period", unit="s", check=positive)
    scale_down_window_s: float = setting(
        300.0, "scale-down stabilisation window (highest recommendation inside it)", unit="s",
        check=non_negative)
    cooldown_s: float = setting(300.0, "KEDA cooldownPeriod before scaling to zero", unit="s",
                                check=non_negative)
    activation: float = setting(0.0, "KEDA activation threshold: active iff metric > it",
                                unit="replicas", check=non_negative)


@dataclass(frozen=True)
class Simulator:
    """The simulated cluster (the embedded default). Assumptions and sources: docs/simulator.md.
    """

    hpa_sync_s: float = setting(15.0, "HPA sync period", unit="s", check=positive)
    cold_start_median_s: float = setting(
        2.5, "median pod start before weights load (lognormal)", unit="s", check=positive)
    cold_start_sigma: float = setting(0.5, "lognormal sigma of pod start", check=non_negative)
    weights_load_mb_per_s: float = setting(
        500.0, "weight-loading throughput at start", unit="MiB/s", check=positive)
    rpc_overhead_ms: float = setting(
        0.5, "per-hop network overhead between stages (the low end of 0.5-5 ms, research "
        "brief 5.4: a node's base_ms already holds its per-call serialisation)", unit="ms",
        check=non_negative)
    mode: Literal["auto", "request", "aggregated"] = setting(
        "auto", "request: every call simulated; aggregated: per-expert queueing arithmetic per "
        "tick; auto: aggregated above aggregate_above_experts experts")
    aggregate_above_experts: int = setting(
        2000, "auto mode switches to aggregated above this many experts", unit="experts",
        check=positive)
    hpa_preset: Literal["smoe", "stock"] = setting(
        "smoe", "HPA behaviour applied to policy-driven experts: smoe (what `smoe manifests` "
        "writes, derived from control.interval_s and the manifests section) or stock "
        "(simulator.hpa_stock)")
    hpa_stock: HpaStock = section(HpaStock, "the stock preset (also used by segment HPAs)")
    segment_target_utilization: float = setting(
        0.6, "segments keep their own HPA on busy-time utilisation with this target",
        unit="fraction", check=fraction)
    share_exponent: float = setting(
        0.3, "diminishing returns of GPU share (or cores): per-token time x share^-gamma "
        "(small expert kernels are latency-bound, so a quarter GPU is far from 4x slower)",
        check=non_negative)
    mps_interference: float = setting(
        0.1, "MPS interference: per-token time x (1 + beta x the other pods' share of the GPU)",
        check=non_negative)
    service_cv: float = setting(
        0.2, "coefficient of variation of service time (gamma noise; 1 = exponential)",
        check=non_negative)
    retry_backoff_ms: float = setting(25.0, "first retry backoff after a 429/503 (doubles, "
                                      "jittered 50-100 %)", unit="ms", check=positive)
    retry_cap_ms: float = setting(1000.0, "longest retry backoff", unit="ms", check=positive)
    max_retries: int = setting(10, "retries of one call before its request is dropped",
                               unit="retries", check=non_negative)
    routing_gini: float = setting(0.25, "routing Gini of expert popularity per layer (0.1-0.4 "
                                  "on real text)", check=fraction)
    routing_drift_time_s: float = setting(
        600.0, "correlation time of the slow popularity drift (AR(1) on log-shares)", unit="s",
        check=positive)
    routing_shift_every_s: float = setting(
        900.0, "mean time between sudden popularity shifts per layer (0: never)", unit="s",
        check=non_negative)
    routing_affinity: float = setting(
        0.0, "inter-layer affinity: weight of the previous layer's choice on the next",
        check=fraction)
    synthetic_rate_per_s: float = setting(
        5.5, "mean request rate of the synthetic traces (conv's mean)", unit="requests/s",
        check=positive)
    rate_scale: float = setting(
        1.0, "multiply every trace's request rate (replayed and synthetic) by this: conv is a "
        "sample of one service at ~5.5 requests/s, where one replica of every expert at the "
        "smallest configuration is busy ~1% of the time; examples/loaded.yaml replays it 10x",
        unit="factor", check=positive)
    drain_s: float = setting(30.0, "after the last arrival, serve this long to finish requests",
                             unit="s", check=non_negative)


@dataclass(frozen=True)
class Policy:
    """The decider the controller and the demo run."""

    name: str = setting("smoe", "registry name of the decider: smoe (the bundled learned "
                        "policy), or a baseline (queueing, hpa, ...)")
    checkpoint: str = setting("", "policy checkpoint; empty: the registry name's checkpoint "
                              "in policy.pretrained")
    pretrained: str = setting(
        "", "folder of the learned policies' checkpoints, default.pt (smoe), smoe-mlp.pt and "
        "smoe-independent.pt, as `smoe train --export` writes them; empty: the bundled ones "
        "(smoelib/policy/pretrained/). Relative paths are read from the working directory")
    torch_threads: int = setting(2, "CPU threads for policy inference", unit="threads",
                                 check=positive)


@dataclass(frozen=True)
class Manifests:
    """What ``smoe manifests`` writes into each expert's ScaledObject.

    ``pollingInterval`` is the control interval (rounded up to whole seconds); the HPA behavior
    allows the guards' largest replica step per control tick.
    """

    scaler_address: str = setting(
        "smoe-scaler.smoe-system.svc:9090", "host:port KEDA dials for the external-push trigger "
        "(the smoe-scaler Service; with TLS the server certificate must name this host)")
    cooldown_ticks: int = setting(
        2, "KEDA cooldownPeriod in control ticks: the wait after the last active answer before "
        "KEDA scales an expert to zero (the guards already hold scale-down)", unit="ticks",
        check=positive)
    fallback_failures: int = setting(
        3, "consecutive failed scaler calls before KEDA's fallback holds the expert",
        unit="calls", check=non_negative)
    fallback_fraction: float = setting(
        0.25, "while the scaler fails, each expert keeps its current replicas or this fraction "
        "of replicas.max (rounded up, at least replicas.min and 1), whichever is higher",
        unit="fraction of replicas.max", check=fraction)
    hpa_period_s: int = setting(
        15, "periodSeconds of the generated HPA scaling policies; set it to the cluster's "
        "--horizontal-pod-autoscaler-sync-period", unit="s",
        check=lambda v: None if 1 <= v <= 1800 else "must be within [1, 1800]")
    use_cached_metrics: bool = setting(
        True, "the HPA reads the value KEDA's poll fetched instead of calling the scaler again")


@dataclass(frozen=True)
class StaticVertical:
    """A baseline's vertical configuration: the same for every expert, the best static one
    found by ``smoe tune`` (docs/results/tuning.md)."""

    gpu_share: float = setting(0.1, "GPU share of every expert replica",
                               unit="fraction of one GPU", check=fraction)
    cpu: float = setting(0.5, "CPU of every expert replica", unit="cores", check=positive)
    memory_mb: int = setting(1024, "memory of every expert replica", unit="MiB", check=positive)
    concurrency: int = setting(4, "OpenFaaS max_inflight of every expert replica", unit="calls",
                               check=positive)


@dataclass(frozen=True)
class HpaBaseline:
    """``hpa`` / ``hpa-stock``: KEDA's Prometheus scaler plus the HPA on per-replica load."""

    metric: Literal["rps", "inflight"] = setting(
        "inflight", "per-replica metric: calls per second or calls in flight")
    target: float = setting(1.0, "AverageValue target of the metric per replica",
                            unit="calls/s or calls", check=positive)
    vertical: StaticVertical = section(StaticVertical, "per-expert vertical configuration")


@dataclass(frozen=True)
class KpaVertical(StaticVertical):
    """``kpa``'s tuned vertical configuration."""

    concurrency: int = setting(8, "OpenFaaS max_inflight of every expert replica", unit="calls",
                               check=positive)


@dataclass(frozen=True)
class OpenFaasVertical(StaticVertical):
    """``openfaas``'s tuned vertical configuration."""

    concurrency: int = setting(2, "OpenFaaS max_inflight of every expert replica", unit="calls",
                               check=positive)


@dataclass(frozen=True)
class KpaBaseline:
    """``kpa``: Knative's KPA (knative/serving config/core/configmaps/autoscaler.yaml)."""

    metric: Literal["concurrency", "rps"] = setting(
        "concurrency", "what a pod's target counts: in-flight calls or calls per second")
    target: float = setting(10.0, "per-pod target (container-concurrency-target or rps target)",
                            unit="calls or calls/s", check=positive)
    utilization: float = setting(0.7, "container-concurrency-target-percentage / 100",
                                 unit="fraction", check=fraction)
    stable_window_s: float = setting(60.0, "stable window", unit="s", check=positive)
    panic_window_pct: float = setting(10.0, "panic window as a percentage of the stable window",
                                      unit="%", check=positive)
    panic_threshold: float = setting(2.0, "panic when the panic-window pods exceed this many "
                                     "times the ready pods", unit="ratio", check=positive)
    max_scale_up_rate: float = setting(1000.0, "most pods per tick as a multiple of ready pods",
                                       unit="ratio", check=positive)
    max_scale_down_rate: float = setting(2.0, "ready pods divided by this is the floor per tick",
                                         unit="ratio", check=positive)
    scale_to_zero_grace_s: float = setting(30.0, "wait before the last pod goes", unit="s",
                                           check=non_negative)
    vertical: KpaVertical = section(KpaVertical, "per-expert vertical configuration")


@dataclass(frozen=True)
class OpenFaasBaseline:
    """``openfaas``: the OpenFaaS Pro autoscaler (docs.openfaas.com/architecture/autoscaling)."""

    mode: Literal["capacity", "rps"] = setting(
        "capacity", "capacity: in-flight calls per replica; rps: calls per second per replica")
    target: float = setting(10.0, "target load per replica", unit="calls or calls/s",
                            check=positive)
    target_proportion: float = setting(0.9, "com.openfaas.scale.target-proportion",
                                       unit="fraction", check=positive)
    vertical: OpenFaasVertical = section(OpenFaasVertical, "per-expert vertical configuration")


@dataclass(frozen=True)
class QueueingBaseline:
    """``queueing`` (and ``oracle``, ``static-peak``): M/M/c/K sizing per expert on EWMA
    forecasts, the SLO split across layers by load, EPLB apportionment (docs/baselines.md)."""

    ewma_fast_s: float = setting(15.0, "time constant of the fast load EWMA", unit="s",
                                 check=positive)
    ewma_slow_s: float = setting(120.0, "time constant of the slow load EWMA", unit="s",
                                 check=positive)
    headroom: float = setting(0.0, "forecast load x (1 + headroom)", unit="fraction",
                              check=non_negative)
    slo_fraction: float = setting(1.1, "aim the P95 bound at this fraction of the SLO",
                                  unit="fraction of SLO", check=positive)
    tail: float = setting(0.01, "per-call tail probability each expert must meet its layer "
                          "budget at", unit="probability", check=fraction)
    arrival_scv: float = setting(1.5, "squared coefficient of variation of call arrivals "
                                 "(Allen-Cunneen burstiness correction)", check=non_negative)
    max_block: float = setting(0.001, "largest accepted 429 probability per call",
                               unit="probability", check=fraction)
    scale_down_delay_s: float = setting(30.0, "keep the highest replica count of this long",
                                        unit="s", check=non_negative)
    reconfigure_s: float = setting(300.0, "least time between GPU share or concurrency "
                                   "changes of one expert", unit="s", check=non_negative)
    reconfigure_saving: float = setting(0.15, "change the slow knobs only for this relative "
                                        "saving", unit="fraction", check=non_negative)
    feedback_target: float = setting(0.85, "the measured end-to-end P95 the budget "
                                     "calibration aims at", unit="fraction of SLO",
                                     check=positive)
    feedback_gain: float = setting(0.5, "per plan, budgets x (target / measured P95) ^ gain "
                                   "(0: the model alone)", check=non_negative)
    feedback_window_s: float = setting(120.0, "the calibration reads the highest measured "
                                       "P95 of this long: one burst keeps the budgets tight",
                                       unit="s", check=positive)
    feedback_max: float = setting(3.0, "the calibration relaxes the model's budgets by at "
                                  "most this factor",
                                  check=lambda v: None if v >= 1 else "must be >= 1")


@dataclass(frozen=True)
class ElasticMoeBaseline:
    """``elasticmoe``: one elastic expert-parallel instance; the scale unit is one GPU."""

    gpu_share: float = setting(0.1, "GPU share of one expert slot (slots per GPU = 1 / share)",
                               unit="fraction of one GPU", check=fraction)
    scale_up_utilization: float = setting(0.3, "add a GPU above this busy fraction of the "
                                          "busiest slot", unit="fraction", check=positive)
    scale_down_utilization: float = setting(0.05, "remove a GPU below this busy fraction",
                                            unit="fraction", check=non_negative)
    scale_up_p95: float = setting(0.9, "add a GPU while the P95 exceeds this fraction of the SLO",
                                  unit="fraction of SLO", check=positive)
    cooldown_s: float = setting(60.0, "least time between two scale events", unit="s",
                                check=non_negative)
    scale_up_start_s: float = setting(0.3, "pod start of a scale-up (P2P weight transfer, "
                                      "zero-copy remapping; about 9x faster than a cold start)",
                                      unit="s", check=positive)
    concurrency: int = setting(4, "max_inflight of every slot", unit="calls", check=positive)


@dataclass(frozen=True)
class FaasConfBaseline:
    """``faasconf``: FaaSConf's per-function configurator, re-implemented from the paper's
    description (attention over DAG neighbours, the safe-exploration band)."""

    target_utilization: float = setting(0.1, "replicas for this busy fraction per replica",
                                        unit="fraction", check=positive)
    neighbour_weight: float = setting(0.0, "weight of the attention summary of DAG neighbours",
                                      unit="fraction", check=fraction)
    latency_gain: float = setting(1.0, "GPU share step per unit of latency over target",
                                  check=non_negative)
    band_sigmas: float = setting(2.0, "safe-exploration band: mean +- this many sigmas of the "
                                 "good-configuration library's price", check=positive)
    noise: float = setting(0.05, "Gaussian noise on a library configuration (fraction of range)",
                           check=non_negative)
    concurrency: int = setting(4, "max_inflight", unit="calls", check=positive)


@dataclass(frozen=True)
class Baselines:
    """Each baseline's tuned settings (``smoe tune``; docs/results/tuning.md)."""

    hpa: HpaBaseline = section(HpaBaseline, "hpa: with sMoE's ScaledObject behaviour")
    hpa_stock: HpaBaseline = section(HpaBaseline, "hpa-stock: with the stock HPA defaults")
    kpa: KpaBaseline = section(KpaBaseline, "kpa: Knative KPA")
    openfaas: OpenFaasBaseline = section(OpenFaasBaseline, "openfaas: OpenFaaS Pro autoscaler")
    queueing: QueueingBaseline = section(QueueingBaseline, "queueing, oracle, static-peak")
    elasticmoe: ElasticMoeBaseline = section(ElasticMoeBaseline, "elasticmoe")
    faasconf: FaasConfBaseline = section(FaasConfBaseline, "faasconf")


@dataclass(frozen=True)
class Settings:
    """The whole settings tree (``config.yaml``)."""

    gpu_sharing: GpuSharing = section(GpuSharing, "GPU sharing mode")
    actions: Actions = section(Actions, "action space: the choices per knob")
    cluster: Cluster = section(Cluster, "cluster capacity and features")
    prices: Prices = section(Prices, "prices for the cost model")
    control: Control = section(Control, "control loop and SLO weighting")
    guards: Guards = section(Guards, "guards: maximum steps, rollout budget, hysteresis")
    metrics: Metrics = section(Metrics, "metric source and PromQL overrides")
    scaler: Scaler = section(Scaler, "KEDA external scaler")
    vertical: Vertical = section(Vertical, "vertical backend")
    simulator: Simulator = section(Simulator, "simulated cluster")
    policy: Policy = section(Policy, "policy and checkpoint")
    manifests: Manifests = section(Manifests, "generated KEDA ScaledObjects")
    baselines: Baselines = section(Baselines, "each baseline's tuned settings")


def load_settings(config: str | Path | Mapping[str, Any] | None = None) -> Settings:
    """Load ``config.yaml`` (a path, a parsed mapping, or None for the packaged defaults).

    Raises:
        ConfigError: every problem found, each naming the file, the field and its line.
    """
    if config is None:
        return Settings()
    source_name = None if isinstance(config, Mapping) else str(config)
    try:
        src = load(config)
    except YamlProblem as e:
        raise ConfigError([e.problem], source=source_name) from None
    problems: list[Problem] = []
    settings = from_mapping(Settings, src.data, source=src, problems=problems)
    if problems:
        raise ConfigError(problems, source=src.name)
    return settings


def render_example(settings: Settings | None = None) -> str:
    """``config.yaml`` text with every field, its docstring and unit as comments."""
    header = ["# sMoE settings: every field with its default, meaning and unit.",
              "# Generated from smoelib/settings.py (smoe config --example); every command",
              "# takes --config FILE and works without one.", ""]
    return "\n".join(header + render_commented(settings or Settings())) + "\n"
