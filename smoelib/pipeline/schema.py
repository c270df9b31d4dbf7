"""The ``pipeline.yml`` contract: built-in defaults, field rules, and the checks behind them.

Pure: no I/O. :mod:`smoelib.pipeline.topology` reads a
:class:`~smoelib.pipeline.yamlsrc.Source`, calls :func:`check_pipeline` to collect every
problem at once, and builds the DAG from the result.
Structural problems (a wrong type, an unknown ``after``) are reported even with
``validate=False``, since the graph cannot be built without them; semantic ones (ranges, names,
bounds) only when validating.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from smoelib.errors import Problem
from smoelib.pipeline.yamlsrc import Path_, Source, render_path

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PIPELINE_NAME_MAX = 24
"""Pipeline names feed function, metric and ScaledObject names: at most 24 characters."""
STAGE_ID_MAX = 16
EXPERT_FUNCTION_MAX = 54
"""An expert's ScaledObject takes its function's name; its HPA ``keda-hpa-<name>`` must fit 63."""
FUNCTION_MAX = 63
MAX_NODES = 100_000
"""Largest DAG accepted; deepseek-v3 scale is about 15,000 nodes."""

TOP_KEYS = {"name", "namespace", "kind", "slo", "slo_ms", "max_seq_tokens", "decode_cap",
            "prefill_chunk", "accelerator", "rate_scale", "description", "defaults", "stages"}
STAGE_KEYS = {"id", "kind", "experts", "top_k", "after", "overrides", "part"}
NODE_KEYS = {"function", "cpu", "memory_mb", "gpu_share", "concurrency", "parallelism",
             "replicas", "weights_mb", "gpu_memory_mb", "profile", "shape", "handler",
             "max_batch"}
REPLICA_KEYS = {"min", "max"}
PROFILE_KEYS = {"base_ms", "per_token_ms", "tokens", "ms"}
SHAPE_KEYS = {"d_model", "d_ff", "matrices", "dtype"}
HANDLER_KEYS = {"call_ms", "serialise_ms_per_kb"}
SLO_KEYS = {"ttft_ms", "tpot_ms", "attainment"}
PIPELINE_KINDS = ("encoder", "decoder", "encoder-decoder")
PARTS = ("encoder", "decoder")
ACCELERATORS = ("h100", "h800", "a100", "l4", "cpu")
"""Names a pipeline's ``accelerator`` may take; their figures are settings
(``simulator.accelerators``)."""
DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
"""Bytes per parameter of each expert weight dtype."""

BUILTIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "expert": {
        "function": "{pipeline}-{stage}-e{index}",
        "cpu": 1.0,
        "memory_mb": 2048,
        "gpu_share": 0.25,
        "concurrency": 4,
        "parallelism": 1,
        "max_batch": 0,
        "replicas": {"min": 0, "max": 16},
        "weights_mb": 9.0,
        "gpu_memory_mb": 0,
        "shape": {"d_model": 768, "d_ff": 3072, "matrices": 2, "dtype": "bf16"},
        "handler": {},
        "profile": {},
    },
    "segment": {
        "function": "{pipeline}-{stage}",
        "cpu": 1.0,
        "memory_mb": 2048,
        "gpu_share": 0.25,
        "concurrency": 8,
        "parallelism": 1,
        "max_batch": 0,
        "replicas": {"min": 1, "max": 16},
        "weights_mb": 30.0,
        "gpu_memory_mb": 0,
        "shape": {},
        "handler": {},
        "profile": {"base_ms": 2.0, "per_token_ms": 0.004},
    },
}
"""Every node field has a built-in default (documented in the README). An expert's FFN time
comes from its ``shape`` on the pipeline's accelerator unless a ``profile`` (a measured curve)
overrides it; a segment (attention, embeddings) has no shape and runs on its profile."""
PIPELINE_DEFAULTS = {"namespace": "openfaas-fn", "max_seq_tokens": 512, "decode_cap": 1024,
                     "prefill_chunk": 0, "accelerator": "h100", "rate_scale": 1.0}
DEFAULT_TOP_K = 2


@dataclass(frozen=True)
class _Field:
    kind: str  # "int" | "number" | "str"
    check: Callable[[Any], str | None] | None = None


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _unit_interval(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be within [0, 1]"


NODE_FIELDS: dict[str, _Field] = {
    "function": _Field("str"),
    "cpu": _Field("number", _positive),
    "memory_mb": _Field("int", _positive),
    "gpu_share": _Field("number", _unit_interval),
    "concurrency": _Field("int", _positive),
    "parallelism": _Field("int", _positive),
    "max_batch": _Field("int", _non_negative),
    "weights_mb": _Field("number", _positive),
    "gpu_memory_mb": _Field("int", _non_negative),
}
PROFILE_FIELDS = {"base_ms": _Field("number", _non_negative),
                  "per_token_ms": _Field("number", _non_negative)}
SHAPE_FIELDS = {"d_model": _Field("int", _positive), "d_ff": _Field("int", _positive),
                "matrices": _Field("int", lambda v: None if v in (2, 3) else
                                   "must be 2 (up, down) or 3 (gate, up, down)"),
                "dtype": _Field("str", lambda v: None if v in DTYPES else
                                f"must be one of {', '.join(DTYPES)}")}
HANDLER_FIELDS = {"call_ms": _Field("number", _non_negative),
                  "serialise_ms_per_kb": _Field("number", _non_negative)}
SLO_FIELDS = {"ttft_ms": _Field("number", _positive), "tpot_ms": _Field("number", _positive),
              "attainment": _Field("number", lambda v: None if 0 < v <= 1 else
                                   "must be within (0, 1]")}
REPLICA_FIELDS = {"min": _Field("int", _non_negative), "max": _Field("int", _positive)}


def type_problem(value: Any, kind: str) -> str | None:
    """Why ``value`` is not of ``kind`` (booleans are never numbers), or None."""
    if kind == "str":
        return None if isinstance(value, str) else f"must be a string, got {_typename(value)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        want = "an integer" if kind == "int" else "a number"
        return f"must be {want}, got {_typename(value)}"
    if kind == "int" and not float(value).is_integer():
        return f"must be an integer, got {value!r}"
    if not math.isfinite(value):
        return f"must be finite, got {value!r}"
    return None


def _typename(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


class Checker:
    """Collects problems with the YAML line of each, and the stage they belong to."""

    def __init__(self, source: Source, *, validate: bool):
        self.source = source
        self.validate = validate
        self.problems: list[Problem] = []
        self._seen: set[Problem] = set()
        self.stage_names: dict[int, str] = {}

    def where(self, path: Path_) -> str:
        if len(path) >= 2 and path[0] == "stages" and isinstance(path[1], int):
            stage = self.stage_names.get(path[1])
            head = f"stage {stage!r}" if stage else f"stages[{path[1]}]"
            rest = render_path(path[2:])
            return f"{head}{'.' if rest and not rest.startswith('[') else ''}{rest}"
        return render_path(path)

    def add(self, path: Path_, message: str) -> None:
        problem = Problem(self.where(path), message, self.source.line(path))
        if problem not in self._seen:  # a stage-level field is checked once per expert
            self._seen.add(problem)
            self.problems.append(problem)

    def mapping(self, value: Any, path: Path_, allowed: set[str]) -> dict[str, Any] | None:
        """``value`` as a mapping with only ``allowed`` keys (unknown keys are reported)."""
        if not isinstance(value, Mapping):
            self.add(path, f"must be a mapping, got {_typename(value)}")
            return None
        for key in value:
            if key not in allowed:
                self.add((*path, key), f"unknown key {key!r}; expected one of "
                                       f"{', '.join(sorted(allowed))}")
        return {k: v for k, v in value.items() if k in allowed}

    def scalar(self, value: Any, path: Path_, spec: _Field) -> bool:
        problem = type_problem(value, spec.kind)
        if problem:
            self.add(path, problem)
            return False
        if self.validate and spec.check is not None:
            semantic = spec.check(value)
            if semantic:
                self.add(path, f"{semantic}, got {value!r}")
        return True

    def dns_label(self, value: str, path: Path_, limit: int, what: str) -> None:
        if not self.validate:
            return
        if not DNS_LABEL.match(value):
            self.add(path, f"{what} {value!r} is not a DNS label "
                           "(lowercase letters, digits and '-', starting and ending alphanumeric)")
        elif len(value) > limit:
            self.add(path, f"{what} {value!r} is {len(value)} characters; the limit is {limit}")


def check_node_fields(ck: Checker, raw: Any, path: Path_) -> dict[str, Any]:
    """Check a partial node spec (defaults, stage-level fields or one override)."""
    fields = ck.mapping(raw, path, NODE_KEYS)
    if fields is None:
        return {}
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "replicas":
            sub = ck.mapping(value, (*path, key), REPLICA_KEYS)
            if sub is not None:
                out[key] = {k: v for k, v in sub.items()
                            if ck.scalar(v, (*path, key, k), REPLICA_FIELDS[k])}
        elif key == "profile":
            sub = check_profile(ck, value, (*path, key))
            if sub is not None:
                out[key] = sub
        elif key in ("shape", "handler"):
            table = SHAPE_FIELDS if key == "shape" else HANDLER_FIELDS
            sub = ck.mapping(value, (*path, key), set(table))
            if sub is not None:
                out[key] = {k: v for k, v in sub.items()
                            if ck.scalar(v, (*path, key, k), table[k])}
        elif ck.scalar(value, (*path, key), NODE_FIELDS[key]):
            out[key] = value
    return out


def check_profile(ck: Checker, value: Any, path: Path_) -> dict[str, Any] | None:
    """A ``profile``: linear (``base_ms``, ``per_token_ms``) or a measured curve (``tokens``,
    ``ms``: the FFN time of a batch of that many tokens, at GPU share 1 or on one core)."""
    sub = ck.mapping(value, path, PROFILE_KEYS)
    if sub is None:
        return None
    linear = {k for k in sub if k in PROFILE_FIELDS}
    curve = {k for k in sub if k in ("tokens", "ms")}
    if linear and curve:
        ck.add(path, "give either base_ms/per_token_ms or a measured curve tokens/ms, not both")
        return None
    if not curve:
        return {k: v for k, v in sub.items() if ck.scalar(v, (*path, k), PROFILE_FIELDS[k])}
    if curve != {"tokens", "ms"}:
        ck.add(path, f"a measured curve needs both 'tokens' and 'ms' (missing "
                     f"{sorted({'tokens', 'ms'} - curve)[0]!r})")
        return None
    tokens, ms = sub["tokens"], sub["ms"]
    for key, seq in (("tokens", tokens), ("ms", ms)):
        if not isinstance(seq, list):
            ck.add((*path, key), f"must be a list of numbers, got {_typename(seq)}")
            return None
        if len(seq) < 2:
            ck.add((*path, key), f"must list at least 2 values, got {len(seq)}")
            return None
        for i, v in enumerate(seq):
            if not ck.scalar(v, (*path, key, i), _Field("int" if key == "tokens" else "number",
                                                        _positive if key == "tokens"
                                                        else _non_negative)):
                return None
    if len(tokens) != len(ms):
        ck.add((*path, "ms"), f"has {len(ms)} values for {len(tokens)} batch sizes in 'tokens'")
        return None
    if any(b <= a for a, b in zip(tokens, tokens[1:], strict=False)):
        ck.add((*path, "tokens"), "batch sizes must be strictly increasing")
        return None
    return {"tokens": [int(t) for t in tokens], "ms": [float(v) for v in ms]}


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Node fields of ``over`` on top of ``base``; ``replicas``, ``shape`` and ``handler``
    merge by key, a ``profile`` replaces the one below it whole (a curve and a line do not
    mix)."""
    out = dict(base)
    for key, value in over.items():
        if key == "profile" and ("tokens" in value or "tokens" in base.get(key, {})):
            out[key] = dict(value)
        elif key in ("replicas", "shape", "handler", "profile"):
            out[key] = {**base.get(key, {}), **value}
        else:
            out[key] = value
    return out


def check_resolved(ck: Checker, spec: Mapping[str, Any], path: Path_) -> None:
    """Cross-field rules on a fully merged node spec."""
    if not ck.validate:
        return
    lo, hi = spec["replicas"]["min"], spec["replicas"]["max"]
    if lo > hi:
        ck.add((*path, "replicas"), f"min replicas {lo} is above max replicas {hi}")
    if spec["parallelism"] > spec["concurrency"]:
        ck.add((*path, "parallelism"), f"parallelism {spec['parallelism']} is above "
                                       f"concurrency {spec['concurrency']}")


def format_function(ck: Checker, template: str, path: Path_, **names: Any) -> str | None:
    """Fill a function-name template; unknown placeholders are reported."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        unknown = fields - set(names)
        if unknown:
            ck.add(path, f"unknown placeholder {{{sorted(unknown)[0]}}} in {template!r}; "
                         f"use {', '.join('{' + n + '}' for n in names)}")
            return None
        return template.format(**names)
    except (ValueError, IndexError, KeyError) as e:
        ck.add(path, f"bad function name template {template!r}: {e}")
        return None
