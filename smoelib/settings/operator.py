"""The operator's settings: what ``smoe serve`` (the scaler and the controller), ``smoe plan``
and ``smoe manifests`` read. An operator's ``config.yaml`` holds only these sections
(``examples/config.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from smoelib.settings.base import (
    each,
    fraction,
    non_negative,
    port,
    positive,
    setting,
)

__all__ = ["GpuSharingMode", "GpuSharing", "Actions", "Cluster", "Prices", "Control", "Guards",
           "Metrics", "Scaler", "Vertical", "Policy", "Manifests"]

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
    memory_mb: tuple[int, ...] = setting((2048, 4096, 8192, 16384), "memory choices (the "
                                         "smallest holds the runtime and a small expert)",
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
    in_place_memory_decrease: bool = setting(
        False, "the cluster lowers a container's memory limit in place (Kubernetes >= 1.35); "
        "1.33 and 1.34 refuse it (422 Invalid) unless the container's resizePolicy for memory is "
        "RestartContainer, so there a memory decrease rolls the function's pods: a slow change")
    hpa_configurable_tolerance: bool = setting(
        True, "the HPA honours a per-ScaledObject tolerance (Kubernetes >= 1.35 or the "
        "HPAConfigurableTolerance gate); without it the 10% default applies")
    runtime_memory_mb: int = setting(
        1536, "memory an expert replica needs besides its weights (Python, torch, CUDA "
        "context: 1.5-2 GB); below runtime + weights it is OOM-killed, so the guards raise a "
        "lower memory decision to that floor", unit="MiB", check=positive)


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
    shield_bound: float = setting(
        0.9, "the shield lifts replicas so that no expert's offered utilisation (its load "
        "and forecast times a call's service time, over its workers) exceeds this",
        unit="fraction", check=positive)
    shield_horizon_s: float = setting(
        30.0, "how far ahead the shield extrapolates each expert's call-rate trend", unit="s",
        check=non_negative)
    shield_reject_fraction: float = setting(
        0.02, "the shield adds a replica at once to an expert refusing (429) more than this "
        "share of its calls", unit="fraction", check=non_negative)
    shield_service_fraction: float = setting(
        0.5, "where CPU resizes in place, the shield lifts an expert's CPU so that one call "
        "alone takes at most this fraction of its layer's share of one pass's SLO (the pass "
        "SLO over the MoE layers on the longest path); 0: never", unit="fraction",
        check=non_negative)
    shield_hold_s: float = setting(
        120.0, "a shield lift stays at least this long (a stabilisation window)", unit="s",
        check=non_negative)
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
    tls_verify: bool = setting(
        True, "verify the certificate of an https prometheus_url; false is an explicit opt-out "
        "(logged at start), e.g. for a self-signed test server")
    ca_bundle: str = setting(
        "", "PEM file of the CA that signed Prometheus' certificate (empty: the system's CAs)")
    queries: Mapping[str, str] = setting(
        MappingProxyType({}), "PromQL overrides by template name (see smoelib.control.metrics "
        "for the names and the placeholders each template takes)")


@dataclass(frozen=True)
class Scaler:
    """The KEDA external scaler."""

    grpc_port: int = setting(9090, "gRPC port KEDA connects to", unit="port",
                             check=port)
    metrics_port: int = setting(8080, "port of the scaler's own /metrics", unit="port",
                                check=port)
    staleness_s: float = setting(
        60.0, "a decision older than this is answered UNAVAILABLE so KEDA's fallback acts",
        unit="s", check=positive)
    clock_skew_s: float = setting(
        30.0, "a decision dated more than this ahead of the scaler's clock is refused (it would "
        "never go stale)", unit="s", check=non_negative)


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
class Policy:
    """The decider the controller and the demo run."""

    name: str = setting("smoe", "registry name of the decider: smoe (the bundled learned "
                        "policy), or a baseline (queueing, hpa, ...)")
    checkpoint: str = setting("", "policy checkpoint; empty: the registry name's checkpoint "
                              "in policy.pretrained")
    pretrained: str = setting(
        "", "folder of the learned policies' checkpoints, default.pt (smoe), smoe-mlp.pt, "
        "smoe-independent.pt and smoe-unshielded.pt, as `smoe train --export` writes them; "
        "empty: the bundled ones (smoelib/policy/pretrained/). Relative paths are read from "
        "the working directory")
    torch_threads: int = setting(2, "CPU threads for policy inference", unit="threads",
                                 check=positive)
    compile: bool = setting(False, "compile the learned policy's decide path with "
                            "torch.compile in the background from its first tick (the eager "
                            "path decides meanwhile): faster decisions after a one-off "
                            "compilation of up to minutes per pipeline (BENCHMARKS.md); needs a "
                            "C++ compiler; for a long-running `smoe serve`, not for short "
                            "simulations")


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
