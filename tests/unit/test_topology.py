"""PipelineDAG on the examples and on small hand-written pipelines."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from smoelib.errors import PipelineError
from smoelib.topology import build_dag

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pipelines"


def small(**extra):
    return {"name": "p", "slo_ms": 50, **extra}


@pytest.mark.parametrize("name, experts, moe_layers",
                         [("bert-moe", 72, 12), ("gpt2-moe", 72, 12),
                          ("bert2bert-moe", 144, 24)])
def test_examples_build(name, experts, moe_layers):
    dag = build_dag(config=str(EXAMPLES / f"{name}.yml"), validate=True, attach_metadata=True)
    assert len(dag.experts) == experts
    assert len(dag.moe_layers) == moe_layers
    assert nx.is_directed_acyclic_graph(dag.graph)
    assert all(dag.function_name(e) for e in dag.experts)
    assert len(set(dag.function_of.values())) == len(dag.function_of)


def test_bert2bert_encoder_output_feeds_every_decoder_attention():
    dag = build_dag(config=str(EXAMPLES / "bert2bert-moe.yml"))
    cross = [n for n in dag.segments if n.startswith("dec-attn")]
    assert len(cross) == 12
    assert all("enc-out" in dag.predecessors(n) for n in cross)


def test_deepseek_scale():
    dag = build_dag(config=str(EXAMPLES / "deepseek-v3.yml"))
    assert len(dag.experts) == 58 * 256
    assert 14_000 < dag.graph.number_of_nodes() < 16_000
    layer = dag.moe_layers["moe4"]
    assert all(dag.spec(e).top_k == 8 for e in layer)


def test_summary_is_readable():
    text = str(build_dag(config=str(EXAMPLES / "bert-moe.yml")))
    assert text.splitlines()[0].startswith("pipeline bert-moe (encoder, namespace openfaas-fn, "
                                           "SLO TTFT ")
    assert "72 experts" in text and "depth: 26 levels" in text


def test_expansion_edges_and_order():
    dag = build_dag(small(stages=[{"id": "embed"}, {"id": "m", "experts": 3, "top_k": 1},
                                  {"id": "head"}]))
    assert dag.nodes == ("embed", "m/e0", "m/e1", "m/e2", "head")
    assert dag.experts == ("m/e0", "m/e1", "m/e2")
    assert dag.segments == ("embed", "head")
    assert dag.predecessors("m/e1") == ("embed",)
    assert dag.successors("m/e1") == ("head",)
    assert dag.depth_levels == (("embed",), ("m/e0", "m/e1", "m/e2"), ("head",))
    assert dag.function_name("m/e2") == "p-m-e2"
    assert dag.function_name("embed") == "p-embed"


def test_join_between_adjacent_moe_stages_keeps_edges_linear():
    dag = build_dag(small(stages=[{"id": "a", "experts": 4}, {"id": "b", "experts": 5}]))
    assert "b/join" in dag.joins
    assert dag.graph.number_of_edges() == 4 + 5
    assert dag.predecessors("b/e3") == ("b/join",)
    assert dag.function_name("b/join") is None
    assert dag.spec("b/join").kind == "join"


def test_defaults_stage_fields_and_overrides_merge():
    dag = build_dag(small(
        defaults={"expert": {"cpu": 2, "replicas": {"max": 4}}},
        stages=[{"id": "m", "experts": 3, "gpu_share": 0.5,
                 "overrides": {1: {"gpu_share": 1.0, "replicas": {"min": 1}}}}]))
    e0, e1 = dag.spec("m/e0"), dag.spec("m/e1")
    assert (e0.cpu, e0.gpu_share, e0.replicas_min, e0.replicas_max) == (2.0, 0.5, 0, 4)
    assert (e1.cpu, e1.gpu_share, e1.replicas_min, e1.replicas_max) == (2.0, 1.0, 1, 4)
    assert e0.memory_mb == 2048 and e0.concurrency == 4  # built-in defaults


def test_critical_path_follows_the_slowest_expert():
    dag = build_dag(small(stages=[{"id": "a"}, {"id": "m", "experts": 3}, {"id": "z"}]))
    weights = {"a": 1.0, "m/e0": 2.0, "m/e1": 7.0, "m/e2": 3.0, "z": 1.0}
    assert dag.critical_path(weights) == (9.0, ("a", "m/e1", "z"))
    assert dag.critical_path(lambda n: 1.0)[0] == 3.0


def test_explicit_after_builds_a_fork():
    dag = build_dag(small(stages=[{"id": "attn"}, {"id": "m", "experts": 2},
                                  {"id": "shared", "after": ["attn"]},
                                  {"id": "next", "after": ["m", "shared"]}]))
    assert set(dag.predecessors("next")) == {"m/e0", "m/e1", "shared"}
    assert dag.depth["shared"] == dag.depth["m/e0"] == 1


def test_bare_graph_without_metadata():
    dag = build_dag(small(stages=[{"id": "m", "experts": 2}]), attach_metadata=False)
    assert dag.experts == ("m/e0", "m/e1")
    assert set(dag.graph.nodes["m/e0"]) == {"kind", "stage"}
    with pytest.raises(PipelineError):
        dag.spec("m/e0")


def test_round_trip_through_to_config():
    dag = build_dag(config=str(EXAMPLES / "bert2bert-moe.yml"))
    again = build_dag(dag.to_config())
    assert again.nodes == dag.nodes
    assert set(again.graph.edges) == set(dag.graph.edges)
    assert all(again.spec(n) == dag.spec(n) for n in dag.nodes)


def test_mapping_and_path_give_the_same_dag(tmp_path):
    import yaml

    path = tmp_path / "p.yml"
    data = small(stages=[{"id": "m", "experts": 2}])
    path.write_text(yaml.safe_dump(data))
    assert build_dag(str(path)).nodes == build_dag(data).nodes
    assert build_dag(path).source == str(path)
