"""The service time of one batch on one replica, and the memory a replica needs. Pure.

One rule, read by the simulator (every batch it serves), the baselines' sizing (``queueing``,
``oracle``, ``floor``, the static policies) and the policy's features.

A replica runs ``parallelism`` workers (OpenFaaS of-watchdog processes). A worker takes the
calls waiting for it and executes them as one batch:

- **handler and serialisation** on the pod's CPU: ``handler_ms`` per call plus
  ``serialise_ms_per_kb`` per KiB of activations (each token carries ``d_model`` fp16 values
  in and out). The handler is single-threaded: a worker uses at most one core, and a pod with
  ``cpu`` cores gives each worker ``cpu / parallelism`` of them (CFS quota), so a fraction of a
  core slows the handler and cores beyond one per worker buy nothing: more cores pay off
  through more workers (``parallelism``).
- **the expert FFN** for the batch's tokens. On a GPU (``gpu_share`` > 0, the MPS share s):
  ``launch + max(W / (BW x min(1, s / s_bw)), FLOPs(n) / (eff x P x s))`` times MPS
  interference, W the weight bytes and FLOPs(n) = 2 x matrices x d_model x d_ff x n, BW, P,
  launch and eff from the pipeline's accelerator. On CPU (share 0) the same roofline with the
  measured per-core figures (``accelerators.cpu``, FP32 weights) and the worker's cores.
  A ``profile`` replaces the roofline with a measured curve (a line ``base_ms + per_token_ms
  x n``, or points ``tokens``/``ms`` interpolated linearly and extrapolated along the last
  segment): its value at the smallest measured batch is the flat, bandwidth-bound part (scaled
  by ``1 / min(1, s / s_bw)``, or by cores below one on CPU) and the rest the compute part
  (scaled by ``1 / s``, or ``1 / cores``).

Units: milliseconds, tokens, cores, fractions of a GPU, MiB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from smoelib.pipeline.model import NodeSpec
from smoelib.pipeline.schema import DTYPES

__all__ = ["ServiceModel", "service_model", "service_models", "memory_floor_mb", "memory_choice",
           "handler_slowdown", "full_gpu_interference", "ACTIVATION_BYTES"]

ACTIVATION_BYTES = 2
"""Bytes per activation value on the wire (fp16/bf16)."""


@dataclass(frozen=True)
class ServiceModel:
    """The service-time model of one node (see the module docstring)."""

    handler_ms: float
    serialise_ms_per_token: float
    kind: str  # "shape" | "linear" | "curve"
    weight_bytes: float
    cpu_weight_bytes: float  # FP32 on CPU
    flops_per_token: float
    gpu_bw: float  # bytes per ms
    gpu_peak: float  # FLOPs per ms, times efficiency
    gpu_launch_ms: float
    cpu_bw: float  # bytes per ms per core (FP32 weights)
    cpu_peak: float  # FLOPs per ms per core
    s_bw: float
    has_gpu: bool = True  # False: the pipeline's accelerator is the CPU (share is ignored)
    base_ms: float = 0.0
    per_token_ms: float = 0.0
    curve_tokens: tuple[float, ...] = ()
    curve_ms: tuple[float, ...] = ()

    def ffn_ms(self, tokens, *, share, cores):
        """The FFN time (ms) of a batch of ``tokens`` at GPU ``share`` (0: on ``cores`` CPU
        cores), before interference. Broadcasts over arrays."""
        n = np.asarray(tokens, dtype=float)
        share = np.asarray(share, dtype=float)
        cores = np.maximum(np.asarray(cores, dtype=float), 1e-3)
        gpu = (share > 0) & self.has_gpu
        s = np.where(gpu, share, 1.0)
        bw_factor = np.where(gpu, np.minimum(1.0, s / self.s_bw), np.minimum(1.0, cores))
        compute = np.where(gpu, s, cores)
        if self.kind == "shape":
            mem = np.where(gpu, self.weight_bytes / self.gpu_bw,
                           self.cpu_weight_bytes / self.cpu_bw) / bw_factor
            peak = np.where(gpu, self.gpu_peak, self.cpu_peak) * compute
            t = np.maximum(mem, self.flops_per_token * n / peak)
            return np.where(gpu, self.gpu_launch_ms, 0.0) + t
        if self.kind == "linear":
            flat, rest = np.full_like(n, self.base_ms), self.per_token_ms * n
        else:
            total = np.interp(n, self.curve_tokens, self.curve_ms)
            x0, x1 = self.curve_tokens[-2], self.curve_tokens[-1]
            slope = (self.curve_ms[-1] - self.curve_ms[-2]) / (x1 - x0)
            total = np.where(n > x1, self.curve_ms[-1] + slope * (n - x1), total)
            flat = np.minimum(total, self.curve_ms[0])
            rest = total - flat
        return flat / bw_factor + rest / compute

    def cpu_coefficients(self, *, cpu, parallelism=1):
        """``(per_call_ms, per_token_ms)`` of the handler on a worker of a pod with ``cpu``
        cores and ``parallelism`` workers (at most one core per worker)."""
        slow = handler_slowdown(cpu, parallelism)
        return self.handler_ms * slow, self.serialise_ms_per_token * slow

    def batch_ms(self, calls, tokens, *, cpu, share, parallelism=1, interference=1.0):
        """Time (ms) of one batch of ``calls`` calls carrying ``tokens`` tokens on a worker of
        a pod with ``cpu`` cores, GPU ``share`` and ``parallelism`` workers."""
        per_call, per_token = self.cpu_coefficients(cpu=cpu, parallelism=parallelism)
        cores = np.asarray(cpu, dtype=float) / np.maximum(parallelism, 1)
        return (per_call * np.asarray(calls, dtype=float)
                + per_token * np.asarray(tokens, dtype=float)
                + self.ffn_ms(tokens, share=share, cores=cores) * interference)


def full_gpu_interference(share, mps_interference: float):
    """The MPS interference factor of an expert at GPU ``share`` when the rest of its GPU
    (``1 - share``) is busy: the assumption of a sizer that cannot see its neighbours
    (``1`` off the GPU). Broadcasts."""
    share = np.asarray(share, dtype=float)
    return 1.0 + mps_interference * np.where(share > 0, 1.0 - share, 0.0)


def handler_slowdown(cpu, parallelism=1):
    """How much slower the single-threaded handler runs on a worker of a pod with ``cpu``
    cores and ``parallelism`` workers: ``1 / min(1, cores per worker)`` (broadcasts)."""
    per_worker = np.asarray(cpu, dtype=float) / np.maximum(parallelism, 1)
    return 1.0 / np.minimum(1.0, np.maximum(per_worker, 1e-3))


def service_model(spec: NodeSpec, *, accelerator, cpu_core, s_bw: float, handler_ms: float,
                  serialise_ms_per_kb: float, d_model: int) -> ServiceModel:
    """The model of ``spec`` on ``accelerator`` (a settings ``Accelerator``), with the
    simulator's handler defaults where the node declares none; ``d_model`` sizes the
    activations of a node without a shape (a segment)."""
    width = spec.d_model or d_model
    per_kb = spec.serialise_ms_per_kb if spec.serialise_ms_per_kb is not None \
        else serialise_ms_per_kb
    params = float(spec.matrices * spec.d_model * spec.d_ff)
    dtype_bytes = DTYPES.get(spec.dtype, 2)
    peak_tflops = (accelerator.fp8_tflops if spec.dtype == "fp8" and accelerator.fp8_tflops > 0
                   else accelerator.fp32_tflops if spec.dtype == "fp32"
                   else accelerator.bf16_tflops)
    kind = {"none": "shape"}.get(spec.profile_kind, spec.profile_kind)
    return ServiceModel(
        handler_ms=spec.handler_ms if spec.handler_ms is not None else handler_ms,
        serialise_ms_per_token=per_kb * 2 * width * ACTIVATION_BYTES / 1024.0,
        kind=kind, weight_bytes=params * dtype_bytes, cpu_weight_bytes=params * 4.0,
        flops_per_token=2.0 * params,
        gpu_bw=accelerator.memory_bw_gb_s * 1e6,
        gpu_peak=accelerator.efficiency * peak_tflops * 1e9,
        gpu_launch_ms=accelerator.launch_us / 1000.0,
        cpu_bw=cpu_core.memory_bw_gb_s * 1e6, cpu_peak=cpu_core.efficiency
        * cpu_core.fp32_tflops * 1e9, s_bw=s_bw, has_gpu=accelerator is not cpu_core,
        base_ms=spec.base_ms,
        per_token_ms=spec.per_token_ms, curve_tokens=tuple(float(t) for t in spec.profile_tokens),
        curve_ms=spec.profile_ms)


def memory_choice(floor_mb: float, choices) -> int:
    """The smallest of ``choices`` (MiB) at or above ``floor_mb``; the floor itself, rounded
    up to a MiB, when every choice is below it."""
    above = [c for c in choices if c >= floor_mb]
    return int(min(above)) if above else int(math.ceil(floor_mb))


def memory_floor_mb(spec: NodeSpec, *, runtime_memory_mb: float) -> float:
    """The least memory a replica of ``spec`` runs in: the runtime plus its weights (MiB);
    below it the replica is OOM-killed."""
    return float(runtime_memory_mb) + float(spec.weights_mb)


def service_models(dag, settings) -> list[ServiceModel | None]:
    """Per node of ``dag`` (``dag.nodes`` order) its model under ``settings``; None for a
    join."""
    sim = settings.simulator
    accel = sim.accelerators.get(dag.accelerator)
    width = next((dag.spec(n).d_model for n in dag.experts if dag.spec(n).d_model), 768)
    out: list[ServiceModel | None] = []
    for node in dag.nodes:
        spec = dag.spec(node)
        out.append(None if spec.kind == "join" else service_model(
            spec, accelerator=accel, cpu_core=sim.accelerators.cpu,
            s_bw=sim.mps_bandwidth_share, handler_ms=sim.handler_ms,
            serialise_ms_per_kb=sim.serialise_ms_per_kb, d_model=width))
    return out
