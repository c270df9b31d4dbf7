"""The decider registry and the static decider."""

from __future__ import annotations

import pytest

from smoelib.core.decisions import PipelineDecision
from smoelib.errors import ConfigError
from smoelib.policy.base import Decider, available, get_decider
from smoelib.settings import load_settings
from smoelib.topology import build_dag


def test_static_is_registered_and_decides_every_expert_at_its_defaults():
    dag = build_dag("examples/pipelines/bert-moe.yml")
    assert "static" in available()
    d = get_decider("static", dag=dag, settings=load_settings(None))
    assert isinstance(d, Decider)
    d.reset(1)
    dec = d.decide(None)
    assert isinstance(dec, PipelineDecision) and set(dec.experts) == set(dag.experts)
    e = dec.experts["moe1/e0"]
    spec = dag.spec("moe1/e0")
    assert (e.replicas, e.cpu, e.gpu_share, e.concurrency) == (
        max(1, spec.replicas_min), spec.cpu, spec.gpu_share, spec.concurrency)


def test_unknown_policy_lists_the_known_ones():
    dag = build_dag("examples/pipelines/bert-moe.yml")
    with pytest.raises(ConfigError, match="static"):
        get_decider("nope", dag=dag, settings=load_settings(None))
