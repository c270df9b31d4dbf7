"""Decision files: parse, check against a pipeline, serialise, write atomically."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smoelib.core.decisions import (
    ExpertDecision,
    PipelineDecision,
    check_decision,
    decision_to_json,
    load_decision,
    parse_decision,
    write_decision,
)
from smoelib.errors import ConfigError

KNOBS = {"replicas": 2, "cpu": 1.5, "memory_mb": 2048, "gpu_share": 0.25, "concurrency": 4}


def doc(**experts):
    return {"pipeline": "bert-moe", "updated_at": 1_800_000_000.5,
            "experts": experts or {"moe1/e0": dict(KNOBS)}}


def test_parse_gives_typed_frozen_decision():
    d = parse_decision(doc())
    assert d.pipeline == "bert-moe" and d.updated_at == 1_800_000_000.5
    assert d.experts["moe1/e0"] == ExpertDecision(2, 1.5, 2048, 0.25, 4)
    with pytest.raises(AttributeError):
        d.updated_at = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        d.experts["moe1/e1"] = d.experts["moe1/e0"]  # type: ignore[index]


@pytest.mark.parametrize("field,value,needle", [
    ("replicas", -1, "experts.moe1/e0.replicas: must be >= 0"),
    ("replicas", math.nan, "experts.moe1/e0.replicas: required: an integer (got nan)"),
    ("replicas", 1.5, "experts.moe1/e0.replicas: required: an integer"),
    ("replicas", "3", "experts.moe1/e0.replicas: required: an integer (got '3')"),
    ("replicas", True, "experts.moe1/e0.replicas: required: an integer"),
    ("gpu_share", 1.5, "experts.moe1/e0.gpu_share: must be within [0, 1]"),
    ("cpu", 0, "experts.moe1/e0.cpu: must be > 0"),
])
def test_bad_knob_is_named(field, value, needle):
    data = doc(**{"moe1/e0": {**KNOBS, field: value}})
    with pytest.raises(ConfigError) as e:
        parse_decision(data, source="d.json")
    assert any(line.startswith("d.json: ") and needle in line for line in e.value.lines()), \
        e.value.lines()


def test_every_problem_reported_at_once():
    data = {"pipeline": "", "updated_at": -1, "experts": {"moe1/e0": {"replicas": -2}},
            "extra": 1}
    with pytest.raises(ConfigError) as e:
        parse_decision(data, source="d.json")
    text = "\n".join(e.value.lines())
    for where in ("extra", "pipeline", "updated_at", "experts.moe1/e0.cpu"):
        assert f"d.json: {where}:" in text


def test_foreign_decision_is_refused_with_file_and_field():
    d = parse_decision({**doc(), "pipeline": "gpt2-moe"})
    with pytest.raises(ConfigError) as e:
        check_decision(d, pipeline="bert-moe", experts=["moe1/e0"], source="d.json")
    assert e.value.lines() == ["d.json: pipeline: is 'gpt2-moe': this file belongs to another "
                               "pipeline than 'bert-moe'"]
    d = parse_decision(doc(**{"moe9/e7": KNOBS}))
    with pytest.raises(ConfigError, match=r"d.json: experts.moe9/e7: not an expert"):
        check_decision(d, pipeline="bert-moe", experts=["moe1/e0"], source="d.json")


def test_missing_experts_are_fine_for_the_check():
    d = parse_decision(doc())
    check_decision(d, pipeline="bert-moe", experts=["moe1/e0", "moe1/e1"])


def test_not_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"pipeline": "bert-moe",\n  oops}')
    with pytest.raises(ConfigError) as e:
        load_decision(path)
    assert e.value.lines()[0].startswith(f"{path}:2: ")


def test_write_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "bert-moe.json"
    d = parse_decision(doc())
    write_decision(path, d)
    assert load_decision(path) == d
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert-moe.json"]  # no temp left
    assert json.loads(path.read_text())["experts"]["moe1/e0"]["replicas"] == 2


def test_write_failure_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "bert-moe.json"
    write_decision(path, parse_decision(doc()))
    before = path.read_bytes()
    broken = PipelineDecision("bert-moe", math.inf, {})  # not representable in JSON
    with pytest.raises(ValueError):
        write_decision(path, broken)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert-moe.json"]


knobs = st.fixed_dictionaries({
    "replicas": st.integers(0, 10_000), "cpu": st.floats(0.01, 256),
    "memory_mb": st.integers(1, 1 << 20), "gpu_share": st.floats(0, 1),
    "concurrency": st.integers(1, 1024)})


@given(st.dictionaries(st.from_regex(r"moe[1-9]/e[0-9]{1,2}", fullmatch=True), knobs,
                       max_size=8),
       st.floats(0, 4e9))
def test_json_text_round_trips(experts, updated_at):
    d = parse_decision({"pipeline": "p", "updated_at": updated_at, "experts": experts})
    assert parse_decision(json.loads(decision_to_json(d))) == d


@given(st.sets(st.sampled_from(sorted(KNOBS))), st.integers(0, 3))
def test_with_knobs_is_replace(names, value):
    """``with_knobs`` changes exactly the knobs it is given, zeros included, as
    ``dataclasses.replace`` does."""
    e = ExpertDecision(**KNOBS)
    changes = {n: value for n in names}
    assert e.with_knobs(**changes) == dataclasses.replace(e, **changes)


def test_an_expert_table_is_the_mapping_of_its_rows():
    """The columns the decider and the guards share read as ``node -> ExpertDecision``, the
    integer knobs as ints, equal to the dict of the same decisions, pickled whole."""
    import pickle

    import numpy as np

    from smoelib.core.decisions import ExpertTable

    plain = {"moe1/e0": ExpertDecision(2, 1.5, 2048, 0.25, 4),
             "moe1/e1": ExpertDecision(0, 0.5, 4096, 0.0, 1)}
    table = ExpertTable.of(plain)
    assert list(table) == list(plain) and len(table) == 2 and "moe1/e1" in table
    assert table == plain and plain == table and dict(table.items()) == plain
    assert [type(v) for v in dataclasses.astuple(table["moe1/e0"])] == [int, float, int,
                                                                         float, int]
    assert table.get("moe9/e0") is None and "moe9/e0" not in table
    assert pickle.loads(pickle.dumps(table)) == table
    assert parse_decision(json.loads(decision_to_json(
        PipelineDecision("p", 1.0, table)))).experts == plain
    with pytest.raises(ValueError):
        table.knobs[0, 0] = 9  # read-only: a decision does not change under its readers
    aligned = table.aligned(["moe1/e1", "moe2/e0"])
    assert aligned[0].tolist() == [0, 0.5, 4096, 0.0, 1] and np.isnan(aligned[1]).all()
    assert table.replaced(np.zeros((2, 5)))["moe1/e1"] == ExpertDecision(0, 0.0, 0, 0.0, 0)
