"""Property-based tests: valid pipelines build and round-trip; garbage only raises PipelineError."""

from __future__ import annotations

import tempfile
from pathlib import Path

import networkx as nx
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smoelib.errors import PipelineError
from smoelib.topology import build_dag

labels = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)


@st.composite
def pipelines(draw):
    ids = draw(st.lists(labels, min_size=1, max_size=8, unique=True))
    stages = []
    for i, sid in enumerate(ids):
        stage: dict = {"id": sid}
        if draw(st.booleans()):
            experts = draw(st.integers(1, 6))
            stage.update(kind="moe", experts=experts, top_k=draw(st.integers(1, experts)))
            if draw(st.booleans()):
                stage["overrides"] = {draw(st.integers(0, experts - 1)):
                                      {"gpu_share": draw(st.sampled_from([0.0, 0.5, 1.0]))}}
        else:
            stage["kind"] = "segment"
        if i and draw(st.booleans()):
            stage["after"] = draw(st.lists(st.sampled_from(ids[:i]), min_size=1, max_size=3,
                                           unique=True))
        stages.append(stage)
    return {"name": draw(labels), "slo_ms": draw(st.integers(1, 500)), "stages": stages}


@settings(max_examples=60, deadline=None)
@given(pipelines())
def test_random_valid_pipelines_build_and_round_trip(data):
    dag = build_dag(data)
    assert nx.is_directed_acyclic_graph(dag.graph)
    n_experts = sum(s.get("experts", 0) for s in data["stages"])
    assert len(dag.experts) == n_experts
    flat = [n for level in dag.depth_levels for n in level]
    assert sorted(flat) == sorted(dag.nodes)
    again = build_dag(dag.to_config())
    assert again.nodes == dag.nodes
    assert set(again.graph.edges) == set(dag.graph.edges)
    assert all(again.spec(n) == dag.spec(n) for n in dag.nodes)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "slo_ms", "stages", "id", "kind", "experts", "top_k", "after",
                         "overrides", "cpu", "replicas", "min", "max", "defaults", "expert",
                         "x", 0, 1]), inner, max_size=5),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_random_mappings_only_raise_pipeline_error(data):
    try:
        build_dag({"name": "p", "slo_ms": 5, "stages": data} if isinstance(data, list)
                  else data if isinstance(data, dict) else {"stages": data})
    except PipelineError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_pipeline_error(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yml"
        path.write_bytes(blob)
        try:
            build_dag(config=str(path))
        except PipelineError:
            pass


@settings(max_examples=80, deadline=None)
@given(pipelines(), st.integers(0, 400), st.sampled_from(["x", "[", ":", "{", "- ", "\t", "&a"]))
def test_corrupted_yaml_only_raises_pipeline_error(data, cut, junk):
    text = yaml.safe_dump(data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yml"
        path.write_text(text[:cut] + junk + text[cut:])
        try:
            build_dag(config=str(path))
        except PipelineError:
            pass
