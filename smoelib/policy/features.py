"""Observation + :class:`PipelineDAG` -> the tensors the network reads. The only module that
knows the observation's fields and the feature layout.

Every feature is scale-free (logs of rates, ratios to the node's own bounds or SLO share,
fractions of the largest choice, depth as a fraction), so one checkpoint serves pipelines of any
size. The per-DAG part (level schedule, expert slots, static specs) is computed once and cached
by the DAG object; a tick only fills arrays. The layout's signature is stored in checkpoints and
checked at load (:func:`feature_signature`).
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from smoelib.core.decisions import same_ids
from smoelib.core.knobs import VERTICAL_KNOBS
from smoelib.core.shield import shield_utilisation
from smoelib.core.slo import slo_pressure
from smoelib.policy.config import PolicyConfig
from smoelib.policy.schedule import DagSchedule, build_schedule

__all__ = ["FEATURE_NAMES", "PLAN_FEATURES", "LOOKAHEAD_FEATURES", "FEATURE_VERSION",
           "feature_names",
           "feature_signature", "PolicyInput", "TrendState", "DagTensors", "dag_tensors",
           "build_features", "collate"]

FEATURE_VERSION = 1
FEATURE_NAMES = (
    "is_expert", "is_segment", "is_join", "log_tokens_per_s", "log_calls_per_s",
    "token_share_vs_uniform", "trend_short", "trend_long", "p95_vs_slo_share",
    "p50_vs_slo_share", "has_latency", "utilisation", "log_rejected_per_s", "log_replicas",
    "log_replicas_ready", "log_replicas_pending", "log_replicas_min", "log_replicas_max",
    "cpu_vs_max_choice", "memory_vs_max_choice", "gpu_share", "concurrency_vs_max_choice",
    "depth_fraction", "routing_fraction", "log_weights_mb", "log_service_ms",
    "pipeline_p95_vs_slo", "pipeline_p99_vs_slo", "log_request_rate", "gpu_pressure",
)
PLAN_FEATURES = ("log_plan_replicas", "plan_vs_replicas")
"""appended for a residual policy (``PolicyConfig.replica_base`` a plan): the plan's replicas
and their log ratio to the desired ones (0 on other nodes)"""
LOOKAHEAD_FEATURES = ("load_vs_shield_bound", "layer_popularity_shift",
                      "log_s_since_replica_change", "log_s_since_knob_change")
"""appended with ``PolicyConfig.features`` ``lookahead``: each expert's offered utilisation
over the shield's bound (1: where the shield lifts; core.shield.shield_utilisation), its layer's
popularity shift (the total variation distance between the layer's token shares now and their
long EWMA), and the time since its desired replicas and since any of its other knobs (CPU,
memory, GPU share, concurrency: the changes that roll pods or resize them) last changed, as
``log1p(s) / log1p(_AGE_HORIZON_S)`` capped at 1 (1 also before a change was seen)"""
_TOKENS_FOR_SLO_SHARE = 256  # tokens per call assumed when splitting the SLO along the path
_AGE_HORIZON_S = 600.0  # changes longer ago than this read alike


def feature_names(config: PolicyConfig) -> tuple[str, ...]:
    """The node features a network of ``config`` reads, in column order."""
    return (FEATURE_NAMES + (LOOKAHEAD_FEATURES if config.features == "lookahead" else ())
            + (PLAN_FEATURES if config.replica_base != "current" else ()))


def feature_signature(config: PolicyConfig) -> str:
    """A short hash of the feature layout and the action layout a network was built for."""
    parts = [str(FEATURE_VERSION), *feature_names(config),
             *(f"{h}:{len(config.choices(h))}" for h in config.heads)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class PolicyInput(NamedTuple):
    """One or more ticks of one pipeline, as tensors.

    Shapes: ``x`` ``(B, N, F)``; ``expert_index`` and ``expert_valid`` ``(L, E)`` (node index of
    each expert slot of each MoE layer; padding at the end of a row); ``replicas`` ``(B, L, E)``;
    ``choice_mask`` ``(B, L, E, heads, C)`` (True: allowed by the bounds; heads in
    ``PolicyConfig.heads`` order, columns past a head's size False); ``budget`` ``(B, L)`` GPUs
    each MoE layer's experts may use.
    """

    x: Tensor
    schedule: DagSchedule
    expert_index: Tensor
    expert_valid: Tensor
    replicas: Tensor
    choice_mask: Tensor
    budget: Tensor


@dataclass(frozen=True)
class TrendState:
    """What the features carry from tick to tick: EWMAs of ``log1p(tokens/s)`` per node; with
    the lookahead features also the long EWMA of each expert's share of its layer's tokens,
    the last tick's replicas and other knobs, and when (the observation's clock, s) each last
    changed (-inf: no change seen)."""

    short: np.ndarray
    long: np.ndarray
    share_long: np.ndarray | None = None
    knobs: np.ndarray | None = None  # (1 + len(VERTICAL_KNOBS), N): replicas, then the others
    changed_s: np.ndarray | None = None  # (2, N): the replicas', any other knob's


@dataclass(frozen=True)
class DagTensors:
    """What one DAG contributes to every tick, computed once."""

    schedule: DagSchedule
    expert_index: Tensor
    expert_valid: Tensor
    expert_pos: np.ndarray  # (L, E) node index of each slot (0 for padding)
    layer_of: np.ndarray  # (N,) MoE layer of each expert node, -1 otherwise
    layer_sizes: np.ndarray  # (L,)
    static: dict[str, np.ndarray]  # per-node spec arrays
    expert_slots: tuple[np.ndarray, np.ndarray]  # (layer, slot) of every valid slot, in order
    expert_nodes: tuple[str, ...]  # the node id of each of them


_CACHE: weakref.WeakKeyDictionary[Any, DagTensors] = weakref.WeakKeyDictionary()


def dag_tensors(dag: Any) -> DagTensors:
    """The per-DAG tensors, cached by the DAG object."""
    cached = _CACHE.get(dag)
    if cached is None:
        cached = _CACHE[dag] = _build_dag_tensors(dag)
    return cached


def _build_dag_tensors(dag: Any) -> DagTensors:
    nodes = dag.nodes
    pos = {n: i for i, n in enumerate(nodes)}
    edges = np.array([(pos[u], pos[v]) for u, v in dag.graph.edges], dtype=np.int64).reshape(-1, 2)
    schedule = build_schedule(torch.as_tensor(edges.T.copy()), len(nodes))
    layers = list(dag.moe_layers.values())
    width = max((len(x) for x in layers), default=0)
    expert_pos = np.zeros((len(layers), width), dtype=np.int64)
    valid = np.zeros((len(layers), width), dtype=bool)
    layer_of = np.full(len(nodes), -1, dtype=np.int64)
    for li, experts in enumerate(layers):
        idx = [pos[n] for n in experts]
        expert_pos[li, :len(idx)], valid[li, :len(idx)] = idx, True
        layer_of[idx] = li
    specs = [dag.spec(n) for n in nodes]
    depth = dag.depth
    static = {
        "kind": np.array([("expert", "segment", "join").index(s.kind) for s in specs]),
        "replicas_min": np.array([s.replicas_min for s in specs], dtype=float),
        "replicas_max": np.array([s.replicas_max for s in specs], dtype=float),
        "weights_mb": np.array([s.weights_mb for s in specs], dtype=float),
        "parallelism": np.array([s.parallelism for s in specs], dtype=float),
        "service_ms": _default_service_ms(dag, specs),
        "routing": np.array([(s.top_k or 1) / (s.layer_size or 1) for s in specs]),
        "depth": np.array([depth[n] for n in nodes], dtype=float)
        / max(1, len(dag.depth_levels) - 1),
    }
    weight = static["service_ms"]
    path_ms, _ = dag.critical_path(dict(zip(nodes, weight, strict=True)))
    static["slo_share_ms"] = dag.slo_ms * weight / max(path_ms, 1e-9)
    # the DAG's own tuple where the slot order is its order (every example pipeline): the
    # guards then find a decision's experts by identity (core.decisions.same_ids)
    slots = np.nonzero(valid)
    ids = tuple(nodes[i] for i in expert_pos[slots].tolist())
    return DagTensors(schedule=schedule, expert_index=torch.as_tensor(expert_pos),
                      expert_valid=torch.as_tensor(valid), expert_pos=expert_pos,
                      layer_of=layer_of, layer_sizes=valid.sum(1), static=static,
                      expert_slots=slots,
                      expert_nodes=dag.experts if same_ids(ids, dag.experts) else ids)


def _default_service_ms(dag: Any, specs: list) -> np.ndarray:
    """Per node, one call's time (ms) of ``_TOKENS_FOR_SLO_SHARE`` tokens at its pipeline
    defaults under the default service model (joins: 0): a static weight, independent of the
    settings a run uses."""
    from smoelib.core.service import service_models
    from smoelib.settings import Settings

    models = service_models(dag, Settings())
    return np.array([0.0 if m is None else float(m.batch_ms(
        1, _TOKENS_FOR_SLO_SHARE, cpu=s.cpu, share=s.gpu_share,
        parallelism=max(s.parallelism, 1))) for m, s in zip(models, specs, strict=True)])


def _log_ratio(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(num) & (num > 0) & (den > 0)
    out = np.zeros_like(den, dtype=float)
    out[ok] = np.clip(np.log(num[ok] / den[ok]), -5.0, 5.0)
    return out, ok


def build_features(obs: Any, dag: Any, *, config: PolicyConfig, gpus: float,
                   trend: TrendState | None = None, plan: np.ndarray | None = None,
                   settings: Any = None) -> tuple[PolicyInput, TrendState]:
    """One tick's :class:`PolicyInput` (batch of 1) and the next trend state.

    Args:
        obs: a :class:`smoelib.core.observation.Observation` (arrays in ``dag.nodes`` order).
        dag: the pipeline.
        config: the policy's config (the choices, for normalisation and masks).
        gpus: GPUs in the cluster (``settings.cluster.gpus``).
        trend: the previous tick's trend state; None starts the trends at the current load.
        plan: with ``config.replica_base`` a plan, its replicas per node (``dag.nodes`` order;
            NaN where it has none: the desired replicas). The replica head's changes are
            relative to it (within the node's bounds).
        settings: the run's settings (the shield's bound and service model), needed by the
            lookahead features.

    Raises:
        ValueError: a residual config without a plan; lookahead features without settings.
    """
    d = dag_tensors(dag)
    s = d.static
    tok = np.log1p(np.asarray(obs.tokens_per_s, dtype=float))
    trend = trend or TrendState(short=tok, long=tok)
    nxt = TrendState(short=trend.short + config.trend_short * (tok - trend.short),
                     long=trend.long + config.trend_long * (tok - trend.long))
    tokens = np.asarray(obs.tokens_per_s, dtype=float)
    layer_tok = np.bincount(d.layer_of[d.layer_of >= 0], weights=tokens[d.layer_of >= 0],
                            minlength=len(d.layer_sizes))
    share = np.ones_like(tokens)
    is_exp = d.layer_of >= 0
    lt = layer_tok[d.layer_of[is_exp]]
    share[is_exp] = np.where(lt > 0, tokens[is_exp] / np.maximum(lt, 1e-12)
                             * d.layer_sizes[d.layer_of[is_exp]], 1.0)
    p95, has = _log_ratio(np.asarray(obs.latency_p95_ms, dtype=float), s["slo_share_ms"])
    p50, _ = _log_ratio(np.asarray(obs.latency_p50_ms, dtype=float), s["slo_share_ms"])
    ready, desired = np.asarray(obs.replicas_ready, float), np.asarray(obs.replicas_desired, float)
    conc, gshare = np.asarray(obs.concurrency, float), np.asarray(obs.gpu_share, float)
    calls = np.asarray(obs.calls_per_s, float)
    per_call = np.where(calls > 0, tokens / np.maximum(calls, 1e-12), 0.0)
    service = s["service_ms"] * (1.0 + per_call / _TOKENS_FOR_SLO_SHARE) / 2.0
    seg_gpu = float((desired * gshare)[~is_exp].sum())
    exp_gpu = float((desired * gshare)[is_exp].sum())
    expert_budget = max(float(gpus) - seg_gpu, 0.0)
    pressure = slo_pressure(obs, slo=dag.slo)
    miss = 1.0 - float(obs.slo_attainment)
    glob = [_log_ratio(np.array([pressure], float), np.ones(1))[0][0],
            _log_ratio(np.array([miss], float), np.array([1.0 - dag.slo.attainment]))[0][0],
            np.log1p(obs.request_rate) / 10.0, min(exp_gpu / max(expert_budget, 1e-6), 4.0)]
    cols = [s["kind"] == 0, s["kind"] == 1, s["kind"] == 2, tok / 10.0, np.log1p(calls) / 10.0,
            np.log1p(share), tok - trend.short, tok - trend.long, p95, p50, has,
            np.clip(np.asarray(obs.inflight, float) / np.maximum(ready * conc, 1.0), 0.0, 4.0),
            np.log1p(np.asarray(obs.rejected_per_s, float)) / 5.0, np.log1p(desired),
            np.log1p(ready),
            np.log1p(np.asarray(obs.replicas_starting, float)  # pending unknown (NaN): none
                     + np.nan_to_num(np.asarray(obs.replicas_pending, float))),
            np.log1p(s["replicas_min"]), np.log1p(s["replicas_max"]),
            np.asarray(obs.cpu, float) / config.cpu_choices[-1],
            np.asarray(obs.memory_mb, float) / config.memory_choices[-1], gshare,
            np.log1p(conc) / np.log1p(config.concurrency_choices[-1]), s["depth"], s["routing"],
            np.log1p(s["weights_mb"]) / 10.0, np.log1p(service) / 5.0,
            *(np.full(len(tokens), g) for g in glob)]
    if config.features == "lookahead":
        if settings is None:
            raise ValueError("the lookahead features need the run's settings")
        more, nxt = _lookahead(obs, dag, d, settings, config, share, trend, nxt, desired)
        cols += more
    base = desired
    if config.replica_base != "current":
        if plan is None:
            raise ValueError(f"a policy relative to the {config.replica_base!r} plan needs it")
        planned = np.asarray(plan, float)
        base = np.clip(np.where(is_exp & np.isfinite(planned), planned, desired),
                       s["replicas_min"], s["replicas_max"])
        cols += [np.log1p(base), np.clip(np.log1p(base) - np.log1p(desired), -5.0, 5.0)]
    x = torch.as_tensor(np.stack(cols, -1), dtype=torch.float32).unsqueeze(0)  # (1, N, F)
    slots = d.expert_pos  # (L, E) node index per expert slot
    mask = _choice_mask(config, dag, base[slots])
    n_experts = max(int(d.layer_sizes.sum()), 1)
    if config.capacity == "spare":  # each layer keeps its use, plus its share of what is free
        use = np.bincount(d.layer_of[is_exp], weights=(desired * gshare)[is_exp],
                          minlength=len(d.layer_sizes))  # (L,) GPUs
        budget = use + max(expert_budget - float(use.sum()), 0.0) * d.layer_sizes / n_experts
    else:  # by expert count
        budget = expert_budget * d.layer_sizes / n_experts  # (L,)
    inp = PolicyInput(x=x, schedule=d.schedule, expert_index=d.expert_index,
                      expert_valid=d.expert_valid,
                      replicas=torch.as_tensor(base[slots], dtype=torch.float32).unsqueeze(0),
                      choice_mask=torch.as_tensor(mask).unsqueeze(0),
                      budget=torch.as_tensor(budget, dtype=torch.float32).unsqueeze(0))
    return inp, nxt


def _lookahead(obs: Any, dag: Any, d: DagTensors, settings: Any, config: PolicyConfig,
               share: np.ndarray, trend: TrendState, nxt: TrendState, desired: np.ndarray
               ) -> tuple[list[np.ndarray], TrendState]:
    """The LOOKAHEAD_FEATURES columns and the trend state that carries them. ``share`` is
    each expert's token share times its layer's size (1: uniform)."""
    is_exp = d.layer_of >= 0
    layer = d.layer_of[is_exp]
    p = np.zeros(len(share))  # each expert's share of its layer's tokens
    p[is_exp] = share[is_exp] / d.layer_sizes[layer]
    q = trend.share_long if trend.share_long is not None else p
    shift = np.zeros(len(share))  # its layer's total variation distance
    shift[is_exp] = np.bincount(layer, weights=np.abs(p - q)[is_exp],
                                minlength=len(d.layer_sizes))[layer] / 2.0
    now = float(obs.time_s)
    knobs = np.stack([desired, *(np.asarray(getattr(obs, k), float) for k in VERTICAL_KNOBS)])
    changed = (trend.changed_s if trend.changed_s is not None
               else np.full((2, len(desired)), -np.inf))
    if trend.knobs is not None:
        moved = knobs != trend.knobs
        changed = np.where(np.stack([moved[0], moved[1:].any(0)]), now, changed)
    age = np.minimum(np.log1p(np.maximum(now - changed, 0.0)) / np.log1p(_AGE_HORIZON_S), 1.0)
    cols = [shield_utilisation(obs, dag, settings).clip(0.0, 4.0), shift, age[0], age[1]]
    return cols, TrendState(short=nxt.short, long=nxt.long,
                            share_long=q + config.trend_long * (p - q), knobs=knobs,
                            changed_s=changed)


def _ensure_one(mask: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return np.where(mask.any(-1, keepdims=True), mask, fallback)


def _choice_mask(config: PolicyConfig, dag: Any, cur: np.ndarray) -> np.ndarray:
    """Bounds masks ``(L, E, heads, C)`` at replicas ``cur`` per slot, at least one True per
    head: the replica head's from ``cur`` and the bounds, the others' from the DAG alone
    (built once per DAG and config)."""
    d = dag_tensors(dag)
    s, slots = d.static, d.expert_pos
    per_dag = _STATIC_MASKS.setdefault(dag, {})
    static = per_dag.get(config)
    if static is None:
        static = per_dag[config] = _static_mask(config, s["weights_mb"][slots],
                                                s["parallelism"][slots])
    padded = static.copy()
    deltas = np.array(config.choices("replicas"))
    target = cur[..., None] + deltas  # (L, E, C)
    rmin, rmax = s["replicas_min"][slots][..., None], s["replicas_max"][slots][..., None]
    ok = (target >= rmin) & (target <= rmax)  # in bounds
    outside = ~ok.any(-1)  # (L, E): no choice in bounds, so the steps toward them (nearest)
    if outside.any():
        t = target[outside]
        off = np.abs(np.clip(t, rmin[outside], rmax[outside]) - t)
        ok[outside] = off == off.min(-1, keepdims=True)
    padded[..., config.heads.index("replicas"), :len(deltas)] = ok
    return padded


_STATIC_MASKS: weakref.WeakKeyDictionary[Any, dict[PolicyConfig, np.ndarray]] = (
    weakref.WeakKeyDictionary())


def _static_mask(config: PolicyConfig, weights: np.ndarray, parallelism: np.ndarray
                 ) -> np.ndarray:
    """The masks of every head but the replicas' (left False), per slot ``(L, E, heads, C)``:
    memory above the weights, concurrency at least the workers (each: the largest choice if
    none is)."""
    shape = weights.shape
    last = {}
    for h in ("memory_mb", "concurrency"):
        last[h] = np.zeros((*shape, len(config.choices(h))), dtype=bool)
        last[h][..., -1] = True
    out = {"cpu": np.ones((*shape, len(config.cpu_choices)), dtype=bool),
           "memory_mb": _ensure_one(np.array(config.memory_choices) >= weights[..., None],
                                    last["memory_mb"]),
           "concurrency": _ensure_one(np.array(config.concurrency_choices)
                                      >= parallelism[..., None], last["concurrency"])}
    if "gpu_share" in config.heads:
        out["gpu_share"] = np.ones((*shape, len(config.gpu_share_choices)), dtype=bool)
    padded = np.zeros((*shape, len(config.heads), config.max_choices), dtype=bool)
    for i, h in enumerate(config.heads):
        if h in out:
            padded[..., i, :out[h].shape[-1]] = out[h]
    return padded


def collate(inputs: list[PolicyInput]) -> PolicyInput:
    """Stack ticks of one pipeline along the batch dimension."""
    first = inputs[0]
    return first._replace(x=torch.cat([i.x for i in inputs]),
                          replicas=torch.cat([i.replicas for i in inputs]),
                          choice_mask=torch.cat([i.choice_mask for i in inputs]),
                          budget=torch.cat([i.budget for i in inputs]))
