"""What a pod occupies and costs: one rule for the guards, the simulator's placement and
billing, the baselines' sizing, the policy's capacity masks, the vertical planner and the
controller's report. Pure.

GPU sharing modes (``gpu_sharing.mode``): ``mps-env``, a pod takes its GPU share; ``mps-device-
plugin``, every GPU pod takes one slot of ``1 / slots_per_gpu`` of a GPU, whatever share was
asked for (the share is a property of the node pool); ``none``, no pod takes a GPU. A pod is
billed for what it occupies: cores x core price + GiB x GiB price + GPUs x GPU price, per hour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["gpu_per_pod", "pod_price_per_hour", "price_per_hour", "gpu_demand"]


def gpu_per_pod(gpu_share: Any, *, mode: str, slots_per_gpu: int) -> Any:
    """GPUs one pod with this ``gpu_share`` occupies (and is billed for) under ``mode``.

    Scalars give a float, arrays an array of the same shape."""
    share = np.asarray(gpu_share, dtype=float)
    if mode == "none":
        out = np.zeros_like(share)
    elif mode == "mps-device-plugin":
        out = np.where(share > 0, 1.0 / slots_per_gpu, 0.0)
    else:
        out = share
    return float(out) if out.ndim == 0 else out


def pod_price_per_hour(prices: Any, *, cpu: Any, memory_mb: Any, gpus: Any) -> Any:
    """Price of one pod for an hour (``prices.currency``) holding ``cpu`` cores, ``memory_mb``
    MiB and ``gpus`` GPUs (already under the sharing mode: :func:`gpu_per_pod`)."""
    return (np.asarray(cpu, float) * prices.cpu_core_hour
            + np.asarray(memory_mb, float) / 1024.0 * prices.memory_gib_hour
            + np.asarray(gpus, float) * prices.gpu_hour)


def price_per_hour(settings: Any, *, cpu: Any, memory_mb: Any, gpu_share: Any) -> Any:
    """Price of one replica for an hour with these knobs, as the simulator bills it."""
    g = settings.gpu_sharing
    gpus = gpu_per_pod(gpu_share, mode=g.mode, slots_per_gpu=g.slots_per_gpu)
    return pod_price_per_hour(settings.prices, cpu=cpu, memory_mb=memory_mb, gpus=gpus)


def gpu_demand(experts: Mapping[str, Any], settings: Any) -> float:
    """GPUs the experts of a decision (node id -> knobs with ``replicas`` and ``gpu_share``)
    occupy under the configured sharing mode."""
    g = settings.gpu_sharing
    return float(sum(e.replicas * gpu_per_pod(e.gpu_share, mode=g.mode,
                                               slots_per_gpu=g.slots_per_gpu)
                     for e in experts.values()))
