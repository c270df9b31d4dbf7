"""``floor``: exactly the capacity the offered load needs at every instant, billed by the
busy second, with no cold starts, no queueing and no MPS interference: a lower bound on the
cost of any policy that keeps up with the load.

Its cost is not the simulator's bill: :meth:`FloorDecider.episode_cost` is the experts' busy
time at the cheapest configuration per unit of work (:func:`floor_cost`, from the harness's
:class:`~smoelib.policy.baselines.common.Hindsight`) plus the segments' bill of its own run
(segments keep their HPA for every policy). In the simulator it runs every expert at that
cheapest configuration with just enough replicas for the load, so its latency columns describe
that run and are no claim.
"""

from __future__ import annotations

import numpy as np

from smoelib.core.accounting import price_per_hour
from smoelib.policy.base import register
from smoelib.policy.baselines.common import (
    PASS_THROUGH,
    Experts,
    Hindsight,
    decide_all,
    service_ms,
)

__all__ = ["FloorDecider", "floor_cost", "warm_cost", "cheapest_work"]


def cheapest_work(ex: Experts, settings) -> dict[str, np.ndarray]:
    """Per expert, per candidate configuration (GPU share x CPU choices, or cores when
    CPU-only): ``per_call`` and ``per_token`` cost (currency) of the busy time one call and one
    token take with perfect batching (the FFN's flat, bandwidth-bound part shared by an
    unbounded batch, so only the handler, serialisation and the FFN's marginal compute per
    token remain), no interference and mean service noise; plus the candidates' ``share``,
    ``cpu`` and per expert the ``memory_mb`` floor."""
    a = settings.actions
    if settings.gpu_sharing.mode == "none":
        share, cpu = np.zeros(len(a.cpu)), np.array(a.cpu, float)
    else:
        grid = [(sh, cp) for sh in a.gpu_share for cp in a.cpu]
        share, cpu = np.array([g[0] for g in grid]), np.array([g[1] for g in grid])
    memory = ex.memory_floor(settings)
    price_s = price_per_hour(settings, cpu=cpu[None, :], memory_mb=memory[:, None],
                             gpu_share=share[None, :]) / 3600.0  # (E, C)
    per_s = price_s / ex.parallelism[:, None]  # a call holds 1/c of a pod
    big = 1 << 16
    kw = dict(gpu_share=share[None, :], cpu=cpu[None, :], interference=False)
    one_call = service_ms(ex, settings, tokens=np.zeros((1, 1)), calls=1, **kw) \
        - service_ms(ex, settings, tokens=np.zeros((1, 1)), calls=0, **kw)
    per_token = (service_ms(ex, settings, tokens=np.full((1, 1), 2.0 * big), calls=0, **kw)
                 - service_ms(ex, settings, tokens=np.full((1, 1), float(big)), calls=0, **kw)
                 ) / big
    return {"per_call": per_s * one_call / 1000.0, "per_token": per_s * per_token / 1000.0,
            "share": share, "cpu": cpu, "memory_mb": memory}


def floor_cost(ex: Experts, settings, future: Hindsight) -> float:
    """The experts' floor cost over the episode: per tick and expert, the offered calls and
    tokens priced at the configuration that makes that work cheapest."""
    w = cheapest_work(ex, settings)
    calls, tokens = future.calls * future.dt, future.tokens * future.dt  # per tick
    cost = calls[:, :, None] * w["per_call"][None] + tokens[:, :, None] * w["per_token"][None]
    return float(cost.min(axis=2).sum())


def warm_cost(ex: Experts, settings, future: Hindsight) -> float:
    """The experts' warm floor over the episode: one replica of every expert through each tick
    it is offered calls, at its cheapest configuration. What a policy pays at least if every
    call finds a warm replica (a decoder's experts are offered calls every tick, so at low
    load this, not the busy time, bounds what any scaling can save)."""
    w = cheapest_work(ex, settings)
    price_s = price_per_hour(settings, cpu=w["cpu"][None, :], memory_mb=w["memory_mb"][:, None],
                             gpu_share=w["share"][None, :]).min(axis=1) / 3600.0  # (E,)
    return float(((future.calls > 0) * price_s[None, :]).sum() * future.dt)


@register("floor", guards="physical")
class FloorDecider:
    """The reference lower bound (see the module docstring)."""

    simulator_overrides = PASS_THROUGH

    def __init__(self, *, dag, settings):
        self.ex, self.s = Experts(dag), settings
        self.future: Hindsight | None = None

    def reset(self, seed: int) -> None:
        self.future = None

    def see_future(self, future: Hindsight) -> None:
        """The episode's true offered load (from the harness)."""
        self.future = future

    def episode_cost(self, *, segment_cost: float) -> float:
        """The cost reported for the episode: the experts' floor plus ``segment_cost``."""
        if self.future is None:
            raise RuntimeError("floor needs the harness's hindsight (see_future)")
        return floor_cost(self.ex, self.s, self.future) + segment_cost

    def warm_cost(self, *, segment_cost: float) -> float:
        """The experts' warm floor (:func:`warm_cost`) plus ``segment_cost``."""
        if self.future is None:
            raise RuntimeError("floor needs the harness's hindsight (see_future)")
        return warm_cost(self.ex, self.s, self.future) + segment_cost

    def decide(self, obs):
        ex, a = self.ex, self.s.actions
        w = cheapest_work(ex, self.s)
        best = int(np.argmin(w["per_call"][0] + w["per_token"][0] * 100.0))
        k = int(round(float(obs.time_s) / self.s.control.interval_s))
        f = self.future
        busy = np.zeros(len(ex))
        if f is not None and f.calls.shape[0]:
            k = min(k, f.calls.shape[0] - 1)
            per_s = w["per_call"][:, best] * f.calls[k] + w["per_token"][:, best] * f.tokens[k]
            price_s = price_per_hour(self.s, cpu=w["cpu"][best], memory_mb=w["memory_mb"],
                                     gpu_share=w["share"][best]) / 3600.0
            busy = per_s / price_s  # busy pods
        replicas = np.clip(np.ceil(busy - 1e-9), np.maximum(ex.rmin, 1), ex.rmax)
        return decide_all(ex, float(obs.time_s), replicas=replicas, cpu=w["cpu"][best],
                          memory_mb=w["memory_mb"], gpu_share=w["share"][best],
                          concurrency=max(a.concurrency))
