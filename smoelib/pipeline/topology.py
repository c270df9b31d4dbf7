"""``pipeline.yml`` -> :class:`PipelineDAG`, the graph every other part of sMoE reads.

An MoE stage expands into one node per expert (``enc1/e0`` ...); a segment is one node
(``embed``). Each stage is fed by the stages in its ``after`` (default: the previous stage).
Where an MoE stage is fed by another MoE stage, a join node (``dec2/join``, the combine step) is
inserted so edges stay linear in the number of experts. Pure: no I/O beyond reading the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import networkx as nx

from smoelib.errors import PipelineError, Problem
from smoelib.pipeline.builder import assemble
from smoelib.pipeline.model import SLO, NodeSpec
from smoelib.pipeline.yamlsrc import YamlProblem, load

__all__ = ["NodeSpec", "SLO", "PipelineDAG", "build_dag", "slo_text"]

class PipelineDAG:
    """A pipeline's DAG over :class:`networkx.DiGraph` with typed node specs.

    Node ids are strings; graph node attributes are ``kind`` and ``stage`` (and ``spec``, a
    :class:`NodeSpec`, when built with ``attach_metadata=True``). Orders are stable: stages in
    declaration order where the edges allow, experts of a layer by index.
    """

    def __init__(self, graph: nx.DiGraph, *, name: str, namespace: str, kind: str, slo: SLO,
                 max_seq_tokens: int, decode_cap: int, prefill_chunk: int, accelerator: str,
                 rate_scale: float, after: Mapping[str, tuple[str, ...]],
                 moe_stages: tuple[str, ...],
                 source: str | None, has_metadata: bool):
        self.graph = graph
        self.name = name
        self.namespace = namespace
        self.kind = kind
        self.slo = slo
        self.max_seq_tokens = max_seq_tokens
        self.decode_cap = decode_cap
        self.prefill_chunk = prefill_chunk
        self.accelerator = accelerator
        self.rate_scale = rate_scale
        self.stages = tuple(after)
        self.after = dict(after)
        self.moe_stages = moe_stages
        self.source = source
        self.has_metadata = has_metadata
        rank = {node: i for i, node in enumerate(graph.nodes)}
        self._order = tuple(nx.lexicographical_topological_sort(graph, key=rank.__getitem__))

    @property
    def slo_ms(self) -> float:
        """The latency budget of one pass (:attr:`SLO.pass_ms`): TPOT when the pipeline
        decodes, TTFT for an encoder."""
        return self.slo.pass_ms

    @property
    def decodes(self) -> bool:
        """Whether requests generate tokens (decoder or encoder-decoder)."""
        return self.kind != "encoder"

    # ---- orders -------------------------------------------------------------------------
    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node id in a stable topological order."""
        return self._order

    @cached_property
    def experts(self) -> tuple[str, ...]:
        """Expert node ids in topological order (layer by layer, index within a layer)."""
        return tuple(n for n in self._order if self.graph.nodes[n]["kind"] == "expert")

    @cached_property
    def segments(self) -> tuple[str, ...]:
        return tuple(n for n in self._order if self.graph.nodes[n]["kind"] == "segment")

    @cached_property
    def joins(self) -> tuple[str, ...]:
        return tuple(n for n in self._order if self.graph.nodes[n]["kind"] == "join")

    @cached_property
    def moe_layers(self) -> dict[str, tuple[str, ...]]:
        """MoE stage id -> its expert node ids, stages in topological order."""
        layers: dict[str, list[str]] = {s: [] for s in self.moe_stages}
        for node in self.experts:
            layers[self.graph.nodes[node]["stage"]].append(node)
        return {s: tuple(v) for s, v in layers.items()}

    @cached_property
    def depth_levels(self) -> tuple[tuple[str, ...], ...]:
        """Topological generations: every node of level d has all predecessors above d."""
        rank = {node: i for i, node in enumerate(self._order)}
        return tuple(tuple(sorted(level, key=rank.__getitem__))
                     for level in nx.topological_generations(self.graph))

    @cached_property
    def depth(self) -> dict[str, int]:
        """Node id -> its depth level."""
        return {n: d for d, level in enumerate(self.depth_levels) for n in level}

    def predecessors(self, node: str) -> tuple[str, ...]:
        return tuple(self.graph.predecessors(node))

    def successors(self, node: str) -> tuple[str, ...]:
        return tuple(self.graph.successors(node))

    # ---- specs --------------------------------------------------------------------------
    def spec(self, node: str) -> NodeSpec:
        """The typed spec of ``node``.

        Raises:
            KeyError: ``node`` is not in the pipeline.
            PipelineError: the DAG was built with ``attach_metadata=False``.
        """
        if not self.has_metadata:
            raise PipelineError([Problem("", "built with attach_metadata=False: no node specs")],
                                source=self.source)
        return self._specs[node]

    @cached_property
    def _specs(self) -> dict[str, NodeSpec]:
        return {n: data["spec"] for n, data in self.graph.nodes(data=True)}

    def function_name(self, node: str) -> str | None:
        """The OpenFaaS function (Deployment) serving ``node``; None for a join."""
        return self.spec(node).function

    @cached_property
    def function_of(self) -> dict[str, str]:
        """Node id -> function name, for every node that has one."""
        return {n: s.function for n in self._order if (s := self.spec(n)).function is not None}

    def critical_path(self, weight: Mapping[str, float] | Callable[[str], float]
                      ) -> tuple[float, tuple[str, ...]]:
        """The heaviest source-to-sink path under node weights (e.g. per-node latency, ms).

        Scatter-gather makes this the end-to-end latency: a layer is done when its slowest
        expert is. Returns the path length and its nodes.
        """
        w = weight.__getitem__ if isinstance(weight, Mapping) else weight
        best: dict[str, float] = {}
        back: dict[str, str | None] = {}
        for node in self._order:
            preds = self.graph.pred[node]
            prev = max(preds, key=best.__getitem__, default=None)
            best[node] = (best[prev] if prev is not None else 0.0) + float(w(node))
            back[node] = prev
        if not best:
            return 0.0, ()
        end = max(best, key=best.__getitem__)
        path = [end]
        while (prev := back[path[-1]]) is not None:
            path.append(prev)
        return best[end], tuple(reversed(path))

    # ---- summaries ----------------------------------------------------------------------
    def totals(self, which: Literal["min", "max"], *, kinds: Iterable[str] = ("expert",)
               ) -> dict[str, float]:
        """Resources at every node's min or max replicas: cores, memory GiB, GPUs, replicas."""
        kinds = set(kinds)
        out = {"replicas": 0.0, "cpu": 0.0, "memory_gib": 0.0, "gpus": 0.0}
        for node in self._order:
            spec = self.spec(node)
            if spec.kind not in kinds:
                continue
            n = spec.replicas_min if which == "min" else spec.replicas_max
            out["replicas"] += n
            out["cpu"] += n * spec.cpu
            out["memory_gib"] += n * spec.memory_mb / 1024
            out["gpus"] += n * spec.gpu_share
        return out

    def summary(self) -> str:
        """A few readable lines: stages, experts, edges, depth, resources at min and max."""
        g = self.graph
        lines = [
            f"pipeline {self.name} ({self.kind}, namespace {self.namespace}, "
            f"{slo_text(self.slo)}, max {self.max_seq_tokens} tokens per request, "
            f"accelerator {self.accelerator})",
            f"  stages: {len(self.stages)} ({len(self.moe_stages)} MoE, "
            f"{len(self.stages) - len(self.moe_stages)} segments)",
            f"  nodes: {g.number_of_nodes()} ({len(self.experts)} experts, "
            f"{len(self.segments)} segments, {len(self.joins)} joins); "
            f"edges: {g.number_of_edges()}; depth: {len(self.depth_levels)} levels",
        ]
        if self.has_metadata:
            for which in ("min", "max"):
                t = self.totals(which)
                lines.append(f"  experts at {which} replicas: {t['replicas']:.0f} replicas, "
                             f"{t['cpu']:g} cores, {t['memory_gib']:.1f} GiB, "
                             f"{t['gpus']:g} GPUs")
        lines.append("  segments keep their own HPA; sMoE scales experts only")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return (f"PipelineDAG(name={self.name!r}, nodes={self.graph.number_of_nodes()}, "
                f"experts={len(self.experts)})")

    def to_config(self) -> dict[str, Any]:
        """A fully resolved mapping that :func:`build_dag` turns back into this DAG."""
        stages = []
        for stage in self.stages:
            nodes = [n for n in self._order if self.graph.nodes[n]["stage"] == stage
                     and self.graph.nodes[n]["kind"] != "join"]
            first = self.spec(nodes[0])
            entry: dict[str, Any] = {"id": stage,
                                     "kind": "moe" if first.kind == "expert" else "segment"}
            if first.kind == "expert":
                entry["experts"] = first.layer_size
                entry["top_k"] = first.top_k
            if self.after[stage]:
                entry["after"] = list(self.after[stage])
            entry["overrides"] = {self.spec(n).index: _node_fields(self.spec(n)) for n in nodes}
            if first.kind == "segment":
                entry.update(_node_fields(first))
                del entry["overrides"]
            stages.append(entry)
        slo = {"ttft_ms": self.slo.ttft_ms, "attainment": self.slo.attainment}
        if self.slo.tpot_ms is not None:
            slo["tpot_ms"] = self.slo.tpot_ms
        if self.kind == "encoder-decoder":
            for entry, stage in zip(stages, self.stages, strict=True):
                entry["part"] = self._part(stage)
        return {"name": self.name, "namespace": self.namespace, "kind": self.kind, "slo": slo,
                "max_seq_tokens": self.max_seq_tokens, "decode_cap": self.decode_cap,
                "prefill_chunk": self.prefill_chunk, "accelerator": self.accelerator,
                "rate_scale": self.rate_scale, "stages": stages}

    def _part(self, stage: str) -> str:
        node = next(n for n in self._order if self.graph.nodes[n]["stage"] == stage)
        return self.spec(node).part

    @cached_property
    def stage_parts(self) -> dict[str, str]:
        """Stage id -> ``encoder`` or ``decoder`` (every stage is ``encoder`` unless the
        pipeline is encoder-decoder)."""
        return {st: self._part(st) for st in self.stages}


def slo_text(slo: SLO) -> str:
    """``SLO TTFT 100 ms, TPOT 50 ms at 99%``."""
    tpot = f", TPOT {slo.tpot_ms:g} ms" if slo.tpot_ms is not None else ""
    return f"SLO TTFT {slo.ttft_ms:g} ms{tpot} at {slo.attainment:.0%}"


def _node_fields(spec: NodeSpec) -> dict[str, Any]:
    d = asdict(spec)
    if d["profile_kind"] == "curve":
        profile = {"tokens": list(d["profile_tokens"]), "ms": list(d["profile_ms"])}
    elif d["profile_kind"] == "linear":
        profile = {"base_ms": d["base_ms"], "per_token_ms": d["per_token_ms"]}
    else:
        profile = {}
    handler = {k: v for k, v in (("call_ms", d["handler_ms"]),
                                 ("serialise_ms_per_kb", d["serialise_ms_per_kb"]))
               if v is not None}
    out = {"function": d["function"], "cpu": d["cpu"], "memory_mb": d["memory_mb"],
           "gpu_share": d["gpu_share"], "concurrency": d["concurrency"],
           "parallelism": d["parallelism"], "max_batch": d["max_batch"],
           "weights_mb": d["weights_mb"],
           "gpu_memory_mb": d["gpu_memory_mb"],
           "replicas": {"min": d["replicas_min"], "max": d["replicas_max"]},
           "profile": profile, "handler": handler}
    if d["d_model"]:
        out["shape"] = {"d_model": d["d_model"], "d_ff": d["d_ff"], "matrices": d["matrices"],
                        "dtype": d["dtype"]}
    return out


def build_dag(config: str | Path | Mapping[str, Any], validate: bool = True,
              attach_metadata: bool = True) -> PipelineDAG:
    """Build the pipeline DAG from a ``pipeline.yml`` path or an already-parsed mapping.

    Args:
        config: path to ``pipeline.yml``, or the mapping it would parse to.
        validate: run the semantic checks (ranges, names, bounds). With False, input that
            cannot be parsed or built (bad YAML, wrong types, unknown ``after``, a cycle) is
            still refused.
        attach_metadata: attach a :class:`NodeSpec` to every node; False gives the bare graph
            (ids, kinds, stages, edges).

    Raises:
        PipelineError: every problem found, each naming the file, stage and field (and line).
    """
    source_name = None if isinstance(config, Mapping) else str(config)
    try:
        src = load(config)
    except YamlProblem as e:
        raise PipelineError([e.problem], source=source_name) from None
    graph, meta = assemble(src, validate=validate, attach_metadata=attach_metadata)
    return PipelineDAG(graph, source=src.name, has_metadata=attach_metadata, **meta)
