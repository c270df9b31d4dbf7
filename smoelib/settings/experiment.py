"""The experiment settings: the simulated cluster and every baseline's tuned settings, read by
``smoe simulate``, ``smoe evaluate``, ``smoe tune``, ``smoe train`` and ``smoe demo``; ``smoe
serve`` never needs them (``examples/experiment.yaml``). Training's own recipe is
:class:`smoelib.policy.train.TrainConfig` (``smoe train``'s flags)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from smoelib.errors import ConfigError, Problem
from smoelib.pipeline.yamlsrc import load
from smoelib.settings.base import (
    fraction,
    non_negative,
    overlays,
    positive,
    section,
    setting,
)

__all__ = ["Accelerator", "Accelerators", "HpaStock", "Simulator", "StaticVertical",
           "HpaBaseline", "KpaVertical", "OpenFaasVertical", "KpaBaseline", "OpenFaasBaseline",
           "HindsightBaseline", "QueueingBaseline", "ElasticMoeBaseline", "FaasConfBaseline",
           "Baselines", "TUNED", "tuned_defaults"]


@dataclass(frozen=True)
class Accelerator:
    """One accelerator's datasheet figures for the expert model (docs/simulator.md, "Service
    time"): ``t = launch + max(W / (BW x min(1, s / s_bw)), FLOPs / (eff x P x s))``."""

    memory_bw_gb_s: float = setting(3350.0, "memory bandwidth", unit="GB/s", check=positive)
    bf16_tflops: float = setting(989.0, "dense BF16/FP16 tensor peak", unit="TFLOP/s",
                                 check=positive)
    fp8_tflops: float = setting(1979.0, "dense FP8 tensor peak (0: no FP8; BF16 is used)",
                                unit="TFLOP/s", check=non_negative)
    fp32_tflops: float = setting(67.0, "FP32 peak (non-tensor)", unit="TFLOP/s",
                                 check=positive)
    launch_us: float = setting(6.0, "kernel launch and synchronisation per batch", unit="us",
                               check=non_negative)
    efficiency: float = setting(
        0.63, "achieved fraction of the peak on an expert GEMM (fitted on DeepGEMM's "
        "4096-token H800 point; an assumption on other parts)", unit="fraction", check=fraction)


def _accelerator(doc: str, **figures: float):
    return dataclasses.field(default_factory=lambda: Accelerator(**figures),
                             metadata={"doc": doc, "unit": None, "check": None})


@dataclass(frozen=True)
class Accelerators:
    """Named accelerators a pipeline's ``accelerator`` picks. Sources: NVIDIA datasheets (H100
    SXM5, H800 SXM5 product brief, A100 80 GB SXM4, L4), dense (not sparse) tensor peaks; the
    CPU core figures are measured on a 2-core Xeon with torch 2.13 FP32 (research note
    "workload", section 3: ``max(0.9 ms, 0.075 ms x n)`` for a 768 x 3072 expert)."""

    h100: Accelerator = _accelerator("NVIDIA H100 SXM5: 3.35 TB/s HBM3, 989 TFLOP/s BF16, "
                                     "1979 FP8", memory_bw_gb_s=3350.0, bf16_tflops=989.0,
                                     fp8_tflops=1979.0, fp32_tflops=67.0)
    h800: Accelerator = _accelerator("NVIDIA H800 SXM5: H100 compute and HBM3, less NVLink",
                                     memory_bw_gb_s=3350.0, bf16_tflops=989.0,
                                     fp8_tflops=1979.0, fp32_tflops=67.0)
    a100: Accelerator = _accelerator("NVIDIA A100 80 GB SXM4: 2.04 TB/s HBM2e, 312 TFLOP/s "
                                     "BF16, no FP8", memory_bw_gb_s=2039.0, bf16_tflops=312.0,
                                     fp8_tflops=0.0, fp32_tflops=19.5)
    l4: Accelerator = _accelerator("NVIDIA L4: 300 GB/s GDDR6, 121 TFLOP/s BF16, 242.5 FP8",
                                   memory_bw_gb_s=300.0, bf16_tflops=121.0, fp8_tflops=242.5,
                                   fp32_tflops=30.3)
    cpu: Accelerator = _accelerator(
        "one CPU core (CPU-only experts and GPU share 0), FP32: 21 GB/s and 0.125 TFLOP/s "
        "per core as measured; efficiency 1 (the figures are achieved ones)",
        memory_bw_gb_s=21.0, bf16_tflops=0.125, fp8_tflops=0.0, fp32_tflops=0.125,
        launch_us=0.0, efficiency=1.0)

    def get(self, name: str) -> Accelerator:
        return getattr(self, name)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


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
        0.5, "per-hop network overhead between stages (the low end of 0.5-1 ms per hop, "
        "research note 'workload' 3; a call's handler and serialisation are separate)",
        unit="ms", check=non_negative)
    hpa_preset: Literal["smoe", "stock"] = setting(
        "smoe", "HPA behaviour applied to policy-driven experts: smoe (what `smoe manifests` "
        "writes, derived from control.interval_s and the manifests section) or stock "
        "(simulator.hpa_stock)")
    hpa_stock: HpaStock = section(HpaStock, "the stock preset (also used by segment HPAs)")
    segment_target_utilization: float = setting(
        0.6, "segments keep their own HPA; its first metric is busy-time utilisation, with "
        "this target", unit="fraction", check=fraction)
    segment_target_inflight: float = setting(
        0.5, "the segments' HPA's second metric: mean calls in flight per ready replica over "
        "its max_inflight (OpenFaaS's capacity scaling), with this target; the HPA takes the "
        "higher proposal of its metrics (a replica that batches its waiting calls can be "
        "full at low busy time)", unit="fraction", check=fraction)
    mps_bandwidth_share: float = setting(
        0.4, "s_bw: the MPS share below which an expert kernel no longer saturates memory "
        "bandwidth (not published; 0.3-0.5 is the range to sweep)", unit="fraction",
        check=fraction)
    mps_interference: float = setting(
        0.1, "MPS interference: expert time x (1 + beta x the other pods' share of the GPU); "
        "a published A100 case study lost 7.5-19.5 % with two clients at 60 %",
        check=non_negative)
    oom_restart_s: float = setting(
        10.0, "CrashLoopBackOff wait before an OOM-killed replica starts again", unit="s",
        check=positive)
    handler_ms: float = setting(
        0.25, "handler time per call on the pod's CPU (HTTP parse, dispatch; research note "
        "'workload' 3), for nodes that do not declare it", unit="ms", check=non_negative)
    serialise_ms_per_kb: float = setting(
        0.00015, "(de)serialisation per KiB of activations, in and out, on the pod's CPU (raw "
        "bytes: 0.195 - 0.136 ms for 127 more 768-d fp16 tokens, 3 KiB each), for nodes that "
        "do not declare it",
        unit="ms/KiB", check=non_negative)
    engine: Literal["compiled", "reference", "fluid"] = setting(
        "compiled", "the engine: compiled (numba; per-sequence invocation) or reference (pure "
        "Python; both invocations), request-level with the same results for the same seed "
        "(step-batched invocation always runs on the reference); or fluid, the fast training "
        "mode (queueing arithmetic per node and tick, per-sequence; docs/simulator.md says "
        "how far it agrees)")
    fluid_pods: Literal["arithmetic", "chain"] = setting(
        "arithmetic", "how the fast mode serves a pod of one worker: arithmetic (the queueing "
        "arithmetic of every pod, which the bundled policies were trained on) or chain (the "
        "chain of its batch sizes, exact for Poisson arrivals; docs/simulator.md measures both)")
    noise_stream: int = setting(
        0, "which stream of a seed's own engine draws a run uses: 0 the seed's; another "
        "number draws the per-request routing picks, service noise, replica choice, backoff "
        "jitter and cold starts afresh, with the seed's arrivals and popularity path kept (the "
        "noise floor of a comparison between engines; docs/simulator.md)", check=non_negative)
    invocation: Literal["per-sequence", "step-batched"] = setting(
        "per-sequence", "how calls reach experts: per-sequence (one call per sequence, pass, "
        "layer and selected expert; a serverless router) or step-batched (continuous "
        "batching: running sequences advance in lock-step, one call per touched expert and "
        "step carrying its tokens)")
    max_running: int = setting(
        256, "step-batched: most sequences in one step (vLLM max_num_seqs)", unit="sequences",
        check=positive)
    max_step_tokens: int = setting(
        2048, "step-batched: most tokens in one step, prefill chunks included (vLLM "
        "max_num_batched_tokens)", unit="tokens", check=positive)
    accelerators: Accelerators = section(Accelerators, "named accelerators (datasheet figures)")
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
        0.3, "inter-layer affinity: weight of the previous layer's choice on the next (expert "
        "popularity is correlated across layers: Lina, ExFlow)", check=fraction)
    routing_class_divergence: float = setting(
        0.5, "how much expert popularity differs between task classes (0: the same for chat, "
        "code and agent traffic; 1: independent)", check=fraction)
    synthetic_rate_per_s: float = setting(
        5.5, "mean request rate of the synthetic traces (conv's mean)", unit="requests/s",
        check=positive)
    rate_scale: float = setting(
        1.0, "multiply every trace's request rate (replayed and synthetic) by this: conv is a "
        "sample of one service at ~5.5 requests/s, where one replica of every expert at the "
        "smallest configuration is busy ~1% of the time; examples/loaded.yaml replays it 10x",
        unit="factor", check=positive)
    warm_start: bool = setting(
        True, "start every episode from the policy's first decision as a steady state (its "
        "pods ready at its configuration, no rollout from the pipeline defaults), so that "
        "short episodes measure the policy rather than one reconfiguration the rollout budget "
        "rations")
    drain_s: float | None = setting(
        None, "after the last arrival, serve until every request has finished or been dropped, "
        "at most this long; null: the longest a request of the pipeline can take and still "
        "meet its SLO (TTFT SLO + decode cap x TPOT SLO), so a request still running then has "
        "missed it", unit="s", check=lambda v: None if v is None else non_negative(v))


@dataclass(frozen=True)
class StaticVertical:
    """A baseline's vertical configuration: the same for every expert, the best static one
    found by ``smoe tune`` (docs/results/tuning.md)."""

    gpu_share: float = setting(0.1, "GPU share of every expert replica",
                               unit="fraction of one GPU", check=fraction)
    cpu: float = setting(0.5, "CPU of every expert replica", unit="cores", check=positive)
    memory_mb: int = setting(2048, "memory of every expert replica", unit="MiB", check=positive)
    concurrency: int = setting(4, "OpenFaaS max_inflight of every expert replica", unit="calls",
                               check=positive)


@dataclass(frozen=True)
class HpaVertical(StaticVertical):
    """``hpa``'s tuned vertical configuration (docs/results/tuning.md)."""

    gpu_share: float = setting(0.25, "GPU share of every expert replica",
                               unit="fraction of one GPU", check=fraction)
    cpu: float = setting(2.0, "CPU of every expert replica", unit="cores", check=positive)


@dataclass(frozen=True)
class HpaBaseline:
    """``hpa`` / ``hpa-stock``: KEDA's Prometheus scaler plus the HPA on per-replica load."""

    metric: Literal["rps", "inflight"] = setting(
        "rps", "per-replica metric: calls per second or calls in flight")
    target: float = setting(5.0, "AverageValue target of the metric per replica",
                            unit="calls/s or calls", check=positive)
    vertical: HpaVertical = section(HpaVertical, "per-expert vertical configuration")


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
class HindsightBaseline:
    """``oracle``, ``static-best``, ``static-mean``, ``static-peak``: the queueing sizer's model
    (M/M/c/K per expert, the SLO split across layers by load), its budget calibration and its
    slow-knob hysteresis, fed the episode's true load (docs/baselines.md). Tuned on its own
    (``smoe tune --policy oracle``): a model setting tuned for ``queueing``'s forecasts need not
    fit the true load."""

    slo_fraction: float = setting(1.1, "aim the P95 bound at this fraction of the SLO",
                                  unit="fraction of SLO", check=positive)
    tail: float = setting(0.01, "per-call tail probability each expert must meet its layer "
                          "budget at", unit="probability", check=fraction)
    arrival_scv: float = setting(1.5, "squared coefficient of variation of call arrivals "
                                 "(Allen-Cunneen burstiness correction)", check=non_negative)
    max_block: float = setting(0.001, "largest accepted 429 probability per call",
                               unit="probability", check=fraction)
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
class QueueingBaseline(HindsightBaseline):
    """``queueing``: the hindsight sizers' model (:class:`HindsightBaseline`, its own values)
    on EWMA forecasts of the observed load, with forecast headroom and a scale-down delay."""

    ewma_fast_s: float = setting(15.0, "time constant of the fast load EWMA", unit="s",
                                 check=positive)
    ewma_slow_s: float = setting(120.0, "time constant of the slow load EWMA", unit="s",
                                 check=positive)
    headroom: float = setting(0.0, "forecast load x (1 + headroom)", unit="fraction",
                              check=non_negative)
    scale_down_delay_s: float = setting(30.0, "keep the highest replica count of this long",
                                        unit="s", check=non_negative)


@dataclass(frozen=True)
class ElasticMoeBaseline:
    """``elasticmoe``: one elastic expert-parallel instance; the scale unit is one GPU."""

    gpu_share: float = setting(0.25, "GPU share of one expert slot (slots per GPU = 1 / share)",
                               unit="fraction of one GPU", check=fraction)
    scale_up_utilization: float = setting(0.3, "add a GPU above this busy fraction of the "
                                          "busiest slot", unit="fraction", check=positive)
    scale_down_utilization: float = setting(0.2, "remove a GPU below this busy fraction",
                                            unit="fraction", check=non_negative)
    scale_up_p95: float = setting(0.8, "add a GPU while the P95 exceeds this fraction of the SLO",
                                  unit="fraction of SLO", check=positive)
    cooldown_s: float = setting(30.0, "least time between two scale events", unit="s",
                                check=non_negative)
    scale_up_start_s: float = setting(0.3, "pod start of a scale-up (P2P weight transfer, "
                                      "zero-copy remapping; about 9x faster than a cold start)",
                                      unit="s", check=positive)
    concurrency: int = setting(8, "max_inflight of every slot", unit="calls", check=positive)
    cpu: float = setting(2.0, "CPU of every slot (its handler runs on it)", unit="cores",
                         check=positive)


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
    queueing: QueueingBaseline = section(QueueingBaseline, "queueing")
    hindsight: HindsightBaseline = section(
        HindsightBaseline, "oracle, static-best, static-mean, static-peak (tuned as oracle)")
    elasticmoe: ElasticMoeBaseline = section(ElasticMoeBaseline, "elasticmoe")
    faasconf: FaasConfBaseline = section(FaasConfBaseline, "faasconf")
    per_pipeline: Mapping[str, Any] = setting(
        None, "settings of the baselines above for one pipeline (by its name), laid over them "
        "when that pipeline runs: what `smoe tune --per-pipeline` writes; the defaults are the "
        "example pipelines' picks (smoelib/settings/tuned.yaml, docs/results/tuning.md)",
        overlay=lambda: Baselines, factory=lambda: tuned_defaults())


TUNED = Path(__file__).with_name("tuned.yaml")
"""The example pipelines' per-pipeline baseline picks, as ``smoe tune --per-pipeline --write``
writes them (``baselines: per_pipeline: ...``)."""


@functools.cache
def tuned_defaults() -> Mapping[str, Any]:
    """:data:`TUNED`'s ``baselines.per_pipeline``, checked as a config file's would be."""
    src = load(TUNED)
    data = src.data if isinstance(src.data, Mapping) else {}
    problems = [Problem(k, "only baselines.per_pipeline belongs here", src.line((k,)))
                for k in data if k != "baselines"]
    inner = data.get("baselines") or {}
    problems += [Problem(f"baselines.{k}", "only baselines.per_pipeline belongs here",
                         src.line(("baselines", k))) for k in inner if k != "per_pipeline"]
    picks = overlays(Baselines, inner.get("per_pipeline"), source=src,
                     path=("baselines", "per_pipeline"), problems=problems)
    if problems:
        raise ConfigError(problems, source=src.name)
    return picks
