"""The safety shield: a guard rule that lifts replicas so that no expert is offered more work
than a stability bound at its observed load and a short-horizon forecast of it, and lifts CPU
in place where a call alone would be too slow for the SLO. It never changes a knob that rolls
pods. Pure: no I/O, no clock (shielded RL, Alshiekh et al., AAAI 2018: the policy proposes,
the shield corrects the proposals that would leave the safe set).

Per expert, at the configuration the other rules let through (its GPU share and
``max_inflight``, which the shield never changes; its CPU unless the first rule lifts it):

- the **service floor** (only where CPU resizes in place: ``cluster.in_place_resize`` and a
  vertical backend that resizes, not the OpenFaaS gateway, which rolls, nor ``none``): one
  call alone, at the observed tokens per call, must take at most
  ``guards.shield_service_fraction`` of its layer's share of one pass's SLO (the pass SLO
  over the MoE layers on the longest path). Where it takes longer, CPU is lifted to
  the least of ``actions.cpu`` at which it fits (the fastest when none does; never a CPU that
  does not shorten the call). More replicas never shorten a call: without this rule a policy
  that starves a CPU expert of cores misses the SLO at any utilisation;

- the **load** is the larger of the observed call rate and its forecast ``horizon_s`` ahead
  (the trend of the last two observations, at most a doubling; none for an expert that had
  no calls at the last observation);
- the **offered utilisation** at ``R`` replicas is ``load x s / (R x c)``: ``c`` the workers
  of a pod, ``s`` a call's share of a full batch (``max_inflight / c`` calls at the observed
  tokens per call, the service model of :mod:`smoelib.core.service`), so ``1 / s`` is the
  most a worker can serve; the shield lifts ``R`` to the fewest replicas that keep it at most
  ``bound`` (``guards.shield_bound``, default 0.9). No tail budget and no headroom: a queue
  near its capacity is stable but slow, so this is looser than ``queueing``'s sizing, a floor
  under any policy and never a plan;
- after a **burst of refusals** (429s above ``guards.shield_reject_fraction`` of the expert's
  calls over the rate window) it lifts at once to one replica more than the expert has ready,
  unless capacity is already on its way (replicas starting or pending, or a decision above
  what is ready): the window's rate lags, and a lift per tick on a stale rate would run
  away.

A replica lift is held ``guards.shield_hold_s`` (a stabilisation window, as the HPA's scale-down
window): a policy that proposes less on the next tick keeps the replicas the shield started
until then. Every lift, held ones included, is one note naming the expert, what it lifted (CPU,
replicas or both) and why; each note is one intervention (an expert-tick), which training
penalises and evaluation reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from smoelib.core.decisions import ExpertDecision, ExpertTable
from smoelib.core.knobs import KNOB_COLUMN
from smoelib.core.service import full_gpu_interference, service_models
from smoelib.core.slow_knobs import SlowKnobRules

__all__ = ["ShieldMemory", "shield", "shield_utilisation", "lifts"]


@dataclass(frozen=True)
class ShieldMemory:
    """The last observation the shield saw: its time (s) and call rate per node, for the
    trend; and its recent lifts, each held until a time (s) so that a policy proposing less
    the next tick does not drop the replicas the shield just started."""

    time_s: float = math.nan
    calls_per_s: tuple[float, ...] = ()
    held: tuple[tuple[str, int, float], ...] = ()  # (expert, replicas, until s)


class _Models:
    """Per pipeline and settings, built once: the experts' node positions, workers and
    maxima, and the experts grouped by identical service model (a pipeline's experts share a
    few shapes), so each group's service times are one vectorised call; for the service
    floor, one call's budget (ms), the CPU choices and whether CPU may be lifted at all."""

    _cache: dict[int, tuple[Any, Any, _Models]] = {}

    def __init__(self, dag: Any, settings: Any):
        models = service_models(dag, settings)
        pos = {n: i for i, n in enumerate(dag.nodes)}
        modelled = tuple(n for n in dag.experts if models[pos[n]] is not None)
        self.nodes = dag.experts if len(modelled) == len(dag.experts) else modelled
        self.index = np.array([pos[n] for n in self.nodes], np.int64)
        specs = [dag.spec(n) for n in self.nodes]
        self.workers = np.array([max(1, s.parallelism) for s in specs], float)
        self.rmax = np.array([s.replicas_max for s in specs], np.int64)
        groups: dict[Any, list[int]] = {}
        for k, i in enumerate(self.index):
            groups.setdefault(models[i], []).append(k)
        self.groups = [(m, np.array(ks, np.int64)) for m, ks in groups.items()]
        experts = frozenset(dag.experts)
        layers, _ = dag.critical_path(lambda n: 1.0 if n in experts else 0.0)
        # one call's share of a pass's SLO: the pass over the MoE layers it crosses
        self.call_budget_ms = (settings.guards.shield_service_fraction * dag.slo_ms
                               / max(layers, 1.0))
        self.cpus = np.array(sorted(settings.actions.cpu), float)
        # CPU resizes in place unless the slow-knob rules say a CPU change rolls pods
        self.lifts_cpu = bool(settings.guards.shield_service_fraction > 0
                              and "cpu" not in SlowKnobRules.from_settings(settings).knobs
                              and settings.vertical.backend != "none" and self.cpus.size)

    @classmethod
    def of(cls, dag: Any, settings: Any) -> _Models:
        key = id(dag)
        got = cls._cache.get(key)
        if got is None or got[0] is not dag or got[1] is not settings:
            if len(cls._cache) > 64:
                cls._cache.clear()
            got = cls._cache[key] = (dag, settings, cls(dag, settings))
        return got[2]


def shield(experts: Mapping[str, ExpertDecision], *, observation: Any, dag: Any, settings: Any,
           memory: ShieldMemory | None, notes: Any) -> tuple[ExpertTable, ShieldMemory]:
    """Lift ``experts``' replicas (and CPU, in place) where the observation says they are
    unsafe (module docstring); returns the decisions (a table) and the memory for the next
    tick. ``notes.add("shield", text)`` records each lift."""
    experts = ExpertTable.of(experts)
    g = settings.guards
    nodes = observation.nodes
    calls = np.nan_to_num(np.asarray(observation.calls_per_s, float))
    mem = memory if memory is not None else ShieldMemory()
    load = calls
    dt = observation.time_s - mem.time_s
    if len(mem.calls_per_s) == len(nodes) and math.isfinite(dt) and dt > 0:
        before = np.asarray(mem.calls_per_s)
        slope = (calls - before) / dt
        # an expert without calls before has no trend yet (a rate window filling up at the
        # start reads as a steep one), and a short horizon forecasts at most a doubling
        ahead = np.minimum(calls + slope * g.shield_horizon_s, 2.0 * calls)
        load = np.where(before > 0, np.maximum(calls, ahead), calls)
    tokens = np.nan_to_num(np.asarray(observation.tokens_per_s, float))
    rejected = np.nan_to_num(np.asarray(observation.rejected_per_s, float))
    ready = np.nan_to_num(np.asarray(observation.replicas_ready, float))
    starting = (np.nan_to_num(np.asarray(observation.replicas_starting, float))
                + np.nan_to_num(np.asarray(observation.replicas_pending, float)))
    m = _Models.of(dag, settings)
    now = float(observation.time_s)
    held = {n: (r, until) for n, r, until in mem.held if until > now}
    rows = experts.rows(m.nodes)  # each modelled expert's row in the decision (-1: none)
    k_ix = np.flatnonzero(rows >= 0)  # the modelled experts the decision has
    ix = m.index[k_ix]
    at = rows[k_ix]  # their rows in the decision
    dec = experts.knobs[at]
    replicas, cpu = dec[:, _REPLICAS].copy(), dec[:, _CPU].copy()
    # a worker at full batches: max_inflight per pod over its workers
    full = np.maximum(dec[:, _CONCURRENCY] / m.workers[k_ix], 1.0)
    share = (dec[:, _SHARE].copy() if dag.accelerator != "cpu" else np.zeros(len(dec)))
    per_call = _tokens_per_call(calls[ix], tokens[ix])
    inter = full_gpu_interference(share, settings.simulator.mps_interference)
    where = np.full(len(m.nodes), -1, np.int64)
    where[k_ix] = np.arange(len(k_ix))
    cpu_why = _lift_cpu(m, where, cpu, per_call, share, inter, k_ix) if m.lifts_cpu else {}
    s_ms = _call_share_ms(m, k_ix, where, full, per_call, cpu, share, inter)
    work = load[ix] * s_ms / 1000.0 / m.workers[k_ix]  # busy workers' worth
    fit = np.ceil(work / g.shield_bound - 1e-9)
    coming = (starting[ix] > 0) | (replicas > ready[ix])  # capacity already on its way
    burst = ((rejected[ix] > 0) & ~coming
             & (rejected[ix] > g.shield_reject_fraction * (calls[ix] + rejected[ix])))
    was_held = np.array([m.nodes[k] in held for k in k_ix.tolist()], bool) if held else False
    out = None
    lifted = np.zeros(len(dec), bool)
    lifted[list(cpu_why)] = True
    for j in np.flatnonzero((fit > replicas) | burst | was_held | lifted).tolist():
        node, has = m.nodes[k_ix[j]], int(replicas[j])
        need, why = has, ""
        if fit[j] > need:
            need = int(fit[j])
            why = (f"offered utilisation {work[j] / max(has, 1):.2f} > "
                   f"{g.shield_bound:g} at {load[ix[j]]:.0f} calls/s"
                   + (" (forecast)" if load[ix[j]] > calls[ix[j]] + 1e-9 else ""))
        if burst[j] and int(ready[ix[j]]) + 1 > need:
            need = int(ready[ix[j]]) + 1
            why = f"{rejected[ix[j]]:.0f} 429s/s"
        if need > has:
            held[node] = (need, now + g.shield_hold_s)
        elif node in held and held[node][0] > need:
            need = held[node][0]
            why = f"held since a lift until t={held[node][1]:.0f} s"
        need = min(need, int(m.rmax[k_ix[j]]))
        what = [cpu_why[j]] if j in cpu_why else []
        if need > has:
            what.append(f"replicas {has} -> {need} ({why})")
        if what:
            notes.add("shield", f"{node}: shield lifted {' and '.join(what)}")
            if out is None:
                out = experts.knobs.copy()
            out[at[j], _REPLICAS] = max(need, has)
            out[at[j], _CPU] = cpu[j]
    memory_out = ShieldMemory(now, tuple(calls.tolist()),
                              tuple((n, r, u) for n, (r, u) in sorted(held.items())))
    return (experts if out is None else experts.replaced(out)), memory_out


_REPLICAS, _CPU, _SHARE, _CONCURRENCY = (KNOB_COLUMN[k] for k in (
    "replicas", "cpu", "gpu_share", "concurrency"))


def _tokens_per_call(calls: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return np.where(calls > 0, np.maximum(tokens / np.maximum(calls, 1e-12), 1.0), 1.0)


def _call_share_ms(m: _Models, k_ix: np.ndarray, where: np.ndarray, full: np.ndarray,
                   per_call: np.ndarray, cpu: np.ndarray, share: np.ndarray,
                   inter: np.ndarray) -> np.ndarray:
    """Per position ``j`` (``where`` maps the model's experts to positions, -1: none), a
    call's share (ms) of a full batch of ``full[j]`` calls: what the offered utilisation
    counts (module docstring)."""
    s_ms = np.zeros(len(full))
    for model, members in m.groups:
        js = where[members]
        js = js[js >= 0]
        if js.size:
            s_ms[js] = model.batch_ms(full[js], full[js] * per_call[js], cpu=cpu[js],
                                      share=share[js], parallelism=m.workers[k_ix[js]],
                                      interference=inter[js]) / full[js]
    return s_ms


def shield_utilisation(observation: Any, dag: Any, settings: Any) -> np.ndarray:
    """Per node (``dag.nodes`` order), each modelled expert's offered utilisation at its
    observed call rate, configuration and desired replicas, over ``guards.shield_bound``: 1
    where the shield starts lifting replicas (module docstring; the observed rate, not its
    forecast), 0 for the other nodes. The learned policy's view of the shield's margin."""
    m = _Models.of(dag, settings)
    ix = m.index
    calls = np.nan_to_num(np.asarray(observation.calls_per_s, float))[ix]
    tokens = np.nan_to_num(np.asarray(observation.tokens_per_s, float))[ix]
    cpu = np.asarray(observation.cpu, float)[ix]
    share = (np.asarray(observation.gpu_share, float)[ix] if dag.accelerator != "cpu"
             else np.zeros(len(ix)))
    full = np.maximum(np.asarray(observation.concurrency, float)[ix] / m.workers, 1.0)
    inter = full_gpu_interference(share, settings.simulator.mps_interference)
    k_ix = np.arange(len(ix))
    s_ms = _call_share_ms(m, k_ix, k_ix, full, _tokens_per_call(calls, tokens), cpu, share,
                          inter)
    replicas = np.maximum(np.asarray(observation.replicas_desired, float)[ix], 1.0)
    out = np.zeros(len(observation.nodes))
    out[ix] = calls * s_ms / 1000.0 / m.workers / replicas / settings.guards.shield_bound
    return out


def _lift_cpu(m: _Models, where: np.ndarray, cpu: np.ndarray, per_call: np.ndarray,
              share: np.ndarray, inter: np.ndarray, k_ix: np.ndarray) -> dict[int, str]:
    """The service floor (module docstring): lifts ``cpu`` in place where one call alone
    takes longer than its budget; returns, per lifted position, the note's text."""
    budget = m.call_budget_ms
    out: dict[int, str] = {}
    for model, members in m.groups:
        js = where[members]
        js = js[js >= 0]
        if not js.size:
            continue
        one = model.batch_ms(1.0, per_call[js], cpu=cpu[js], share=share[js],
                             parallelism=m.workers[k_ix[js]], interference=inter[js])
        slow = one > budget
        if not slow.any():
            continue
        js, one = js[slow], one[slow]
        at = model.batch_ms(1.0, per_call[js, None], cpu=m.cpus[None, :],
                            share=share[js, None], parallelism=m.workers[k_ix[js], None],
                            interference=inter[js, None])  # (slow experts, CPU choices)
        for j, now_ms, row in zip(js, one, at, strict=True):
            higher = m.cpus > cpu[j] + 1e-9
            fits = higher & (row <= budget)
            if fits.any():
                choice = int(np.argmax(fits))
            elif higher.any() and row[higher].min() < now_ms * (1.0 - 1e-6):
                choice = int(np.argmax(higher & (row <= row[higher].min() * (1.0 + 1e-9))))
            else:
                continue  # no CPU shortens the call
            out[int(j)] = (f"cpu {cpu[j]:g} -> {m.cpus[choice]:g} (one call of "
                           f"{per_call[j]:.0f} tokens takes {now_ms:.1f} ms > {budget:.1f} ms, "
                           f"its share of the SLO)")
            cpu[j] = m.cpus[choice]
    return out


def lifts(fired: tuple[str, ...]) -> int:
    """The experts the shield lifted in a tick, from its guards' ``fired`` rules (one note
    per lifted expert): the interventions evaluation reports and training pays for."""
    return fired.count("shield")
