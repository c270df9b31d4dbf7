"""What the controller prints: one compact line per tick and a per-layer table.

Pure formatting over a tick's report, its observation and decision.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from smoelib.core.accounting import price_per_hour
from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.pipeline.topology import PipelineDAG, slo_text
from smoelib.settings import Settings

__all__ = ["format_tick", "layer_table", "request_line", "changes", "cost_per_hour"]

MAX_NAMED = 4
"""Experts named per line; the rest are counted."""


def cost_per_hour(e: ExpertDecision, settings: Settings) -> float:
    """What ``e`` costs per hour at its replicas, in the configured currency."""
    return e.replicas * float(price_per_hour(settings, cpu=e.cpu, memory_mb=e.memory_mb,
                                             gpu_share=e.gpu_share))


def changes(before: PipelineDecision | None, after: PipelineDecision) -> list[str]:
    """``node knob a->b`` for every changed knob, hottest changes (replicas) first."""
    out = []
    for node, e in after.experts.items():
        old = before.experts.get(node) if before else None
        if old is None:
            continue
        parts = []
        if e.replicas != old.replicas:
            parts.append(f"{old.replicas}->{e.replicas}")
        if e.gpu_share != old.gpu_share:
            parts.append(f"gpu {old.gpu_share:g}->{e.gpu_share:g}")
        if e.concurrency != old.concurrency:
            parts.append(f"conc {old.concurrency}->{e.concurrency}")
        if e.cpu != old.cpu or e.memory_mb != old.memory_mb:
            parts.append(f"{old.cpu:g}c/{old.memory_mb}M->{e.cpu:g}c/{e.memory_mb}M")
        if parts:
            out.append(f"{node} {' '.join(parts)}")
    return out


def format_tick(report: Any, dag: PipelineDAG, settings: Settings,
                previous: PipelineDecision | None = None) -> str:
    """One line: time, status, replicas and cost rate, the experts that changed."""
    stamp = time.strftime("%H:%M:%S", time.gmtime(report.time))
    head = f"[{stamp}] {dag.name} {report.status:<12}"
    if report.status != "ok" or report.decision is None:
        detail = report.error or ("; ".join(report.notes[:1]) if report.notes else "")
        return f"{head} {detail}".rstrip()
    d = report.decision
    replicas = sum(e.replicas for e in d.experts.values())
    rate = sum(cost_per_hour(e, settings) for e in d.experts.values())
    line = (f"{head} decide {report.decide_ms:5.1f} ms  experts {len(d.experts)}  "
            f"replicas {replicas}  {rate:.2f} {settings.prices.currency}/h")
    changed = changes(previous, d)
    if changed:
        more = f" (+{len(changed) - MAX_NAMED} more)" if len(changed) > MAX_NAMED else ""
        line += "  changed: " + ", ".join(changed[:MAX_NAMED]) + more
    if report.patches:
        line += f"  patches {report.patches}"
    return line


def layer_table(observation: Any, decision: PipelineDecision, dag: PipelineDAG,
                settings: Settings) -> str:
    """Per MoE layer: tokens/s, calls/s, replicas, hottest expert's P95 against the layer's
    share of the SLO, cost rate; then :func:`request_line`."""
    index = {n: i for i, n in enumerate(observation.nodes)}
    budget = dag.slo_ms / max(1, len(dag.stages))
    rows = [f"{'layer':<10} {'tokens/s':>9} {'calls/s':>8} {'replicas':>8} "
            f"{'p95 ms':>7} {'budget':>7} {'cost/h':>7}"]
    for stage, experts in dag.moe_layers.items():
        idx = [index[n] for n in experts]
        p95 = observation.latency_p95_ms[idx]
        worst = float(np.nanmax(p95)) if np.isfinite(p95).any() else math.nan
        reps = sum(decision.experts[n].replicas for n in experts if n in decision.experts)
        cost = sum(cost_per_hour(decision.experts[n], settings) for n in experts
                   if n in decision.experts)
        rows.append(f"{stage:<10} {observation.tokens_per_s[idx].sum():9.0f} "
                    f"{observation.calls_per_s[idx].sum():8.1f} {reps:8d} {_ms(worst):>7} "
                    f"{budget:7.1f} {cost:7.2f}")
    rows.append(request_line(observation, dag))
    return "\n".join(rows)


def request_line(observation: Any, dag: PipelineDAG) -> str:
    """The window's requests against the pipeline's SLOs: P95 TTFT (and TPOT when it decodes)
    over each SLO, the end-to-end P95, the request rate."""
    if not math.isfinite(float(observation.p95_ms)):
        return (f"requests: none completed in the window ({slo_text(dag.slo)}) at "
                f"{observation.request_rate:.1f} req/s")
    parts = [f"P95 TTFT {_ms(float(observation.ttft_p95_ms))} of {dag.slo.ttft_ms:g} ms"]
    if dag.slo.tpot_ms is not None:
        parts.append(f"P95 TPOT {_ms(float(observation.tpot_p95_ms))} of {dag.slo.tpot_ms:g} ms")
    parts.append(f"end to end {observation.p95_ms:.1f} ms")
    return f"requests: {', '.join(parts)} at {observation.request_rate:.1f} req/s"


def _ms(value: float) -> str:
    """A latency for the table, or '-' where no call completed (NaN)."""
    return f"{value:.1f}" if math.isfinite(value) else "-"
