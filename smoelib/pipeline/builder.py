"""Assemble the networkx graph of a pipeline from its parsed YAML
(see :mod:`smoelib.pipeline.topology`).

Every problem is collected before anything is raised, so ``smoe validate`` prints them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import networkx as nx

from smoelib.errors import PipelineError
from smoelib.pipeline import schema
from smoelib.pipeline.model import SLO, NodeSpec
from smoelib.pipeline.schema import Checker
from smoelib.pipeline.yamlsrc import Source

_TOP_FIELDS = {"slo_ms": schema._Field("number", schema._positive),
               "max_seq_tokens": schema._Field("int", schema._positive),
               "decode_cap": schema._Field("int", schema._positive),
               "prefill_chunk": schema._Field("int", schema._non_negative),
               "rate_scale": schema._Field("number", schema._positive),
               "accelerator": schema._Field("str", lambda v: None if v in schema.ACCELERATORS
                                            else f"must be one of "
                                                 f"{', '.join(schema.ACCELERATORS)}")}


def assemble(src: Source, *, validate: bool, attach_metadata: bool
             ) -> tuple[nx.DiGraph, dict[str, Any]]:
    """Check ``src`` and build the graph; returns it with the pipeline-level fields."""
    ck = Checker(src, validate=validate)
    top = _check_top(ck, src.data)
    stages = _check_stages(ck, top)
    if ck.problems:
        raise PipelineError(ck.problems, source=src.name)
    graph, after, moe = _build(ck, top, stages, attach_metadata=attach_metadata)
    if ck.problems:
        raise PipelineError(ck.problems, source=src.name)
    meta = {"name": top["name"], "namespace": top["namespace"], "kind": top["kind"],
            "slo": top["slo"], "max_seq_tokens": int(top["max_seq_tokens"]),
            "decode_cap": int(top["decode_cap"]), "prefill_chunk": int(top["prefill_chunk"]),
            "accelerator": top["accelerator"], "rate_scale": float(top["rate_scale"]),
            "after": after, "moe_stages": moe}
    return graph, meta


def _check_top(ck: Checker, data: Any) -> dict[str, Any]:
    if data is None:
        ck.add((), "empty file: expected a mapping with name, slo_ms and stages")
        return {}
    top = ck.mapping(data, (), schema.TOP_KEYS)
    if top is None:
        return {}
    for key in ("name", "stages"):
        if key not in top:
            ck.add((), f"missing required key {key!r}")
    out = {**schema.PIPELINE_DEFAULTS, **top}
    for key, spec in _TOP_FIELDS.items():
        if key in top and not ck.scalar(top[key], (key,), spec):
            out.pop(key, None)
    for key, limit in (("name", schema.PIPELINE_NAME_MAX), ("namespace", 63)):
        if key in top:
            if ck.scalar(top[key], (key,), schema._Field("str")):
                ck.dns_label(top[key], (key,), limit, f"pipeline {key}")
            else:
                out.pop(key)
    if "description" in top:
        ck.scalar(top["description"], ("description",), schema._Field("str"))
    out["kind"], out["slo"] = _check_kind_and_slo(ck, top)
    defaults = ck.mapping(top.get("defaults", {}), ("defaults",), {"expert", "segment"}) or {}
    out["defaults"] = {kind: schema.merge(base, schema.check_node_fields(
        ck, defaults.get(kind, {}), ("defaults", kind)))
        for kind, base in schema.BUILTIN_DEFAULTS.items()}
    out["templates_given"] = {kind for kind, v in defaults.items()
                              if isinstance(v, Mapping) and "function" in v}
    return out


def _check_kind_and_slo(ck: Checker, top: Mapping[str, Any]) -> tuple[str, SLO | None]:
    """The pipeline's kind (declared, or inferred: ``encoder-decoder`` when a stage declares
    a ``part``, ``decoder`` when the SLO states ``tpot_ms``, else ``encoder``) and its SLO."""
    raw_slo = top.get("slo")
    slo = ck.mapping(raw_slo, ("slo",), schema.SLO_KEYS) if raw_slo is not None else None
    stages = top.get("stages") if isinstance(top.get("stages"), list) else []
    has_part = any(isinstance(st, Mapping) and "part" in st for st in stages)
    kind = top.get("kind")
    if kind is None:
        kind = ("encoder-decoder" if has_part else
                "decoder" if isinstance(slo, Mapping) and "tpot_ms" in slo else "encoder")
    elif kind not in schema.PIPELINE_KINDS:
        ck.add(("kind",), f"must be one of {', '.join(schema.PIPELINE_KINDS)}, got {kind!r}")
        return "encoder", None
    decodes = kind != "encoder"
    if raw_slo is None:
        if "slo_ms" not in top:
            ck.add((), "missing required key 'slo' (slo: {ttft_ms: ..., tpot_ms: ..., "
                       "attainment: 0.99}; an encoder pipeline may give slo: {ttft_ms: ...})")
            return kind, None
        if decodes:
            ck.add(("slo_ms",), f"a {kind} pipeline states its SLO per pass: write slo: "
                                f"{{ttft_ms: ..., tpot_ms: ..., attainment: 0.99}} instead "
                                f"of slo_ms")
            return kind, None
        if not ck.scalar(top["slo_ms"], ("slo_ms",), _TOP_FIELDS["slo_ms"]):
            return kind, None
        return kind, SLO(ttft_ms=float(top["slo_ms"]))
    if "slo_ms" in top:
        ck.add(("slo_ms",), "give slo (per pass) or the older slo_ms, not both")
    if slo is None:
        return kind, None
    ok = all(ck.scalar(v, ("slo", k), schema.SLO_FIELDS[k]) for k, v in slo.items())
    if "ttft_ms" not in slo:
        ck.add(("slo",), "missing required key 'ttft_ms'")
        ok = False
    if decodes and "tpot_ms" not in slo:
        ck.add(("slo",), f"missing required key 'tpot_ms' (a {kind} pipeline decodes)")
        ok = False
    if not decodes and "tpot_ms" in slo:
        ck.add(("slo", "tpot_ms"), "an encoder pipeline has TTFT only: it generates no "
                                   "tokens (declare kind: decoder to decode)")
        ok = False
    if not ok:
        return kind, None
    return kind, SLO(ttft_ms=float(slo["ttft_ms"]),
                     tpot_ms=float(slo["tpot_ms"]) if decodes else None,
                     attainment=float(slo.get("attainment", 0.99)))


def _check_stages(ck: Checker, top: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = top.get("stages")
    if raw is None:
        return []
    if not isinstance(raw, list):
        ck.add(("stages",), f"must be a list of stages, got {schema._typename(raw)}")
        return []
    if not raw:
        ck.add(("stages",), "must not be empty")
        return []
    for i, entry in enumerate(raw):
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            ck.stage_names[i] = entry["id"]
    seen: dict[str, int] = {}
    stages = []
    for i, entry in enumerate(raw):
        path = ("stages", i)
        stage = ck.mapping(entry, path, schema.STAGE_KEYS | schema.NODE_KEYS)
        if stage is None:
            continue
        sid = stage.get("id")
        if sid is None:
            ck.add(path, "missing required key 'id'")
            continue
        if not ck.scalar(sid, (*path, "id"), schema._Field("str")):
            continue
        ck.dns_label(sid, (*path, "id"), schema.STAGE_ID_MAX, "stage id")
        if sid in seen:
            ck.add((*path, "id"), f"duplicate stage id {sid!r} (first at stages[{seen[sid]}])")
            continue
        seen[sid] = i
        kind = stage.get("kind", "moe" if "experts" in stage else "segment")
        if kind not in ("moe", "segment"):
            ck.add((*path, "kind"), f"must be 'moe' or 'segment', got {kind!r}")
            continue
        parsed = {"id": sid, "kind": kind, "index": i,
                  "part": stages[-1]["part"] if stages else "encoder"}
        part = stage.get("part")
        if part is not None:
            if top.get("kind", "encoder-decoder") != "encoder-decoder":
                ck.add((*path, "part"), "'part' is only allowed in an encoder-decoder pipeline")
            elif part not in schema.PARTS:
                ck.add((*path, "part"), f"must be encoder or decoder, got {part!r}")
            else:
                parsed["part"] = part
        if kind == "moe":
            if not _check_moe(ck, stage, path, parsed):
                continue
        else:
            for key in ("experts", "top_k", "overrides"):
                if key in stage:
                    ck.add((*path, key), f"{key!r} is only allowed on an MoE stage")
        node_fields = {k: v for k, v in stage.items() if k in schema.NODE_KEYS}
        parsed["fields"] = schema.check_node_fields(ck, node_fields, path)
        after = stage.get("after")
        if after is not None:
            if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
                ck.add((*path, "after"), "must be a list of stage ids")
                continue
            if not after:
                ck.add((*path, "after"), "must name at least one stage (omit it to follow "
                                         "the previous stage)")
        parsed["after"] = after
        stages.append(parsed)
    ids = {s["id"] for s in stages}
    for s in stages:
        for a in s["after"] or ():
            if a not in ids:
                ck.add(("stages", s["index"], "after"), f"unknown stage {a!r}")
            elif a == s["id"]:
                ck.add(("stages", s["index"], "after"), "a stage cannot follow itself")
    return stages


def _check_moe(ck: Checker, stage: Mapping[str, Any], path: tuple, parsed: dict) -> bool:
    if "experts" not in stage:
        ck.add(path, "missing required key 'experts' for an MoE stage")
        return False
    if not ck.scalar(stage["experts"], (*path, "experts"), schema._Field("int", schema._positive)):
        return False
    experts = int(stage["experts"])
    if experts < 1:
        return False
    top_k = stage.get("top_k", min(schema.DEFAULT_TOP_K, experts))
    if not ck.scalar(top_k, (*path, "top_k"), schema._Field("int", schema._positive)):
        return False
    if ck.validate and top_k > experts:
        ck.add((*path, "top_k"), f"top_k {top_k} is above the {experts} experts of the stage")
    parsed.update(experts=experts, top_k=int(top_k), overrides={})
    overrides = stage.get("overrides", {})
    if not isinstance(overrides, Mapping):
        ck.add((*path, "overrides"), "must be a mapping from expert index to fields")
        return False
    for key, value in overrides.items():
        if isinstance(key, bool) or not isinstance(key, int):
            ck.add((*path, "overrides", key), f"expert index must be an integer, got {key!r}")
            continue
        if not 0 <= key < experts:
            ck.add((*path, "overrides", key),
                   f"expert index {key} does not exist (the stage has experts 0..{experts - 1})")
            continue
        parsed["overrides"][key] = schema.check_node_fields(ck, value, (*path, "overrides", key))
    return True


def _build(ck: Checker, top: Mapping[str, Any], stages: list[dict[str, Any]], *,
           attach_metadata: bool) -> tuple[nx.DiGraph, dict[str, tuple[str, ...]], tuple]:
    total = sum(s.get("experts", 1) + 1 for s in stages)
    if total > schema.MAX_NODES:
        ck.add(("stages",), f"pipeline has about {total} nodes; the limit is {schema.MAX_NODES}")
        return nx.DiGraph(), {}, ()
    graph = nx.DiGraph()
    by_id = {s["id"]: s for s in stages}
    entries: dict[str, list[str]] = {}
    exits: dict[str, list[str]] = {}
    after: dict[str, tuple[str, ...]] = {}
    functions: dict[str, tuple] = {}
    for pos, s in enumerate(stages):
        preds = tuple(s["after"]) if s["after"] is not None else (
            (stages[pos - 1]["id"],) if pos else ())
        after[s["id"]] = preds
        path = ("stages", s["index"])
        if s["kind"] == "segment":
            spec = _resolve(ck, top, s, "segment", None, path, attach_metadata, functions)
            graph.add_node(s["id"], kind="segment", stage=s["id"], **spec)
            entries[s["id"]] = exits[s["id"]] = [s["id"]]
            continue
        nodes = [f"{s['id']}/e{i}" for i in range(s["experts"])]
        for i, node in enumerate(nodes):
            spec = _resolve(ck, top, s, "expert", i, path, attach_metadata, functions)
            graph.add_node(node, kind="expert", stage=s["id"], **spec)
        entries[s["id"]] = exits[s["id"]] = nodes
        if any(by_id[p]["kind"] == "moe" for p in preds if p in by_id):
            join = f"{s['id']}/join"
            attrs = {"spec": NodeSpec(id=join, kind="join", stage=s["id"])} \
                if attach_metadata else {}
            graph.add_node(join, kind="join", stage=s["id"], **attrs)
            graph.add_edges_from((join, n) for n in nodes)
            entries[s["id"]] = [join]
    for s in stages:
        for p in after[s["id"]]:
            graph.add_edges_from((u, v) for u in exits[p] for v in entries[s["id"]])
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        loop = [graph.nodes[u]["stage"] for u, _ in cycle]
        loop = list(dict.fromkeys(loop))
        first = by_id[loop[0]]
        ck.add(("stages", first["index"], "after"),
               f"cycle through 'after': {' -> '.join([*loop, loop[0]])}")
    moe = tuple(s["id"] for s in stages if s["kind"] == "moe")
    return graph, after, moe


def _resolve(ck: Checker, top: Mapping[str, Any], stage: Mapping[str, Any], kind: str,
             index: int | None, path: tuple, attach_metadata: bool,
             functions: dict[str, tuple]) -> dict[str, Any]:
    """Merge built-in defaults, pipeline defaults, stage fields and the override of one node."""
    if not attach_metadata and not ck.validate:
        return {}
    fields = schema.merge(top["defaults"][kind], stage["fields"])
    where = path
    if index is not None and index in stage.get("overrides", {}):
        fields = schema.merge(fields, stage["overrides"][index])
        where = (*path, "overrides", index)
    schema.check_resolved(ck, fields, where)
    if ck.validate and not fields["profile"] and not fields["shape"].get("d_model"):
        ck.add((*where, "profile"), f"a {kind} needs a profile (base_ms/per_token_ms or a "
                                    f"measured curve) or an expert shape")
    names = {"pipeline": top.get("name", ""), "stage": stage["id"]}
    if kind == "expert":
        names["index"] = index
    template_at = (*where, "function")  # where the template came from, for the error
    overridden = where != path and "function" in stage["overrides"][index]
    if not overridden and "function" not in stage["fields"] and kind in top["templates_given"]:
        template_at = ("defaults", kind, "function")
    function = schema.format_function(ck, fields["function"], template_at, **names)
    if function is not None and ck.validate:
        limit = schema.EXPERT_FUNCTION_MAX if kind == "expert" else schema.FUNCTION_MAX
        before = len(ck.problems)
        ck.dns_label(function, (*where, "function"), limit, "function name")
        if len(ck.problems) == before and function in functions:
            ck.add((*where, "function"), f"function name {function!r} is also used by "
                                         f"{functions[function][0]}")
        functions.setdefault(function, (ck.where(where),))
    if not attach_metadata:
        return {}
    node_id = stage["id"] if index is None else f"{stage['id']}/e{index}"
    return {"spec": NodeSpec(
        id=node_id, kind=kind, stage=stage["id"], index=index, function=function,
        cpu=float(fields["cpu"]), memory_mb=int(fields["memory_mb"]),
        gpu_share=float(fields["gpu_share"]), concurrency=int(fields["concurrency"]),
        parallelism=int(fields["parallelism"]), max_batch=int(fields["max_batch"]),
        replicas_min=int(fields["replicas"]["min"]),
        replicas_max=int(fields["replicas"]["max"]), weights_mb=float(fields["weights_mb"]),
        gpu_memory_mb=int(fields["gpu_memory_mb"]), **_service_fields(fields),
        top_k=stage.get("top_k"), layer_size=stage.get("experts"), part=stage["part"])}


def _service_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The NodeSpec fields of a node's service model: shape, handler and profile."""
    prof, shape, handler = fields["profile"], fields["shape"], fields["handler"]
    kind = "curve" if "tokens" in prof else "linear" if prof else "none"
    return {"profile_kind": kind, "base_ms": float(prof.get("base_ms", 0.0)),
            "per_token_ms": float(prof.get("per_token_ms", 0.0)),
            "profile_tokens": tuple(prof.get("tokens", ())),
            "profile_ms": tuple(prof.get("ms", ())),
            "d_model": int(shape.get("d_model", 0)), "d_ff": int(shape.get("d_ff", 0)),
            "matrices": int(shape.get("matrices", 2)), "dtype": shape.get("dtype", "bf16"),
            "handler_ms": handler.get("call_ms"),
            "serialise_ms_per_kb": handler.get("serialise_ms_per_kb")}
