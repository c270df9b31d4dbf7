"""The settings tree: defaults, strict loading, every problem reported at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from smoelib.errors import ConfigError
from smoelib.settings import EXPERIMENT, OPERATOR, Settings, load_settings, render_example

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_without_a_file():
    s = load_settings(None)
    assert s == Settings()
    assert s.control.interval_s == 5.0
    assert s.gpu_sharing.mode == "mps-env"


def test_tree_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().control.interval_s = 1  # type: ignore[misc]


def test_every_field_has_a_docstring():
    def walk(obj, path=""):
        for f in dataclasses.fields(obj):
            assert f.metadata.get("doc"), f"{path}{f.name} has no docstring"
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{path}{f.name}.")
    walk(Settings())


@pytest.mark.parametrize("part, name", [("operator", "config.yaml"),
                                        ("experiment", "experiment.yaml")])
def test_example_files_show_every_field_and_match_the_defaults(part, name):
    text = (ROOT / "examples" / name).read_text()
    assert text == render_example(part=part), "regenerate with: make examples"
    assert load_settings(ROOT / "examples" / name) == Settings()


def test_the_operator_file_holds_only_operator_sections_and_together_they_cover_the_tree():
    assert set(OPERATOR).isdisjoint(EXPERIMENT)
    assert set(OPERATOR) | set(EXPERIMENT) == {f.name for f in dataclasses.fields(Settings)}
    operator = yaml.safe_load((ROOT / "examples" / "config.yaml").read_text())
    assert set(operator) == set(OPERATOR)


def test_the_header_names_only_commands_that_exist():
    makefile = (ROOT / "Makefile").read_text()
    for part in ("operator", "experiment"):
        assert "`make examples`" in render_example(part=part)
    assert "\nexamples:" in makefile


def test_partial_file_merges_over_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("control:\n  interval_s: 2\nactions:\n  cpu: [1, 2]\n")
    s = load_settings(path)
    assert s.control.interval_s == 2.0 and s.actions.cpu == (1.0, 2.0)
    assert s.guards == Settings().guards


def test_every_problem_reported_with_file_field_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "gpu_sharing": {"mode": "mig"},
        "bogus": 1,
        "actions": {"cpu": [0, 1]},
        "guards": {"max_step_up": 1.5},
        "prices": {"gpu_hour": -1},
        "cluster": {"in_place_resize": "yes"},
    }, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.lines() == [
        f"{path}:2: gpu_sharing.mode: must be one of 'mps-env', 'mps-device-plugin', 'none', "
        "got 'mig'",
        f"{path}:3: bogus: unknown key 'bogus'; expected one of gpu_sharing, actions, cluster, "
        "prices, control, guards, metrics, scaler, vertical, policy, manifests, simulator, "
        "baselines",
        f"{path}:5: actions.cpu: every item must be > 0 (got 0.0), got [0, 1]",
        f"{path}:9: guards.max_step_up: must be an integer, got 1.5",
        f"{path}:11: prices.gpu_hour: must be >= 0, got -1",
        f"{path}:13: cluster.in_place_resize: must be true or false, got 'yes'",
    ]


def test_a_pipelines_baseline_overlay_is_checked_with_lines_and_laid_over_its_run(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("baselines:\n  hpa:\n    target: 4\n  per_pipeline:\n    gpt2-moe:\n"
                    "      hpa:\n        target: 2\n        vertical: {gpu_share: 0.5}\n")
    s = load_settings(path)
    gpt2 = s.for_pipeline("gpt2-moe").baselines
    assert gpt2.hpa.target == 2.0 and isinstance(gpt2.hpa.target, float)
    assert gpt2.hpa.vertical.gpu_share == 0.5
    assert gpt2.hpa.vertical.cpu == s.baselines.hpa.vertical.cpu
    assert gpt2.per_pipeline == {}  # applied once: a later override is not undone
    assert s.for_pipeline("bert-moe").baselines.hpa == s.baselines.hpa  # others keep the base
    path.write_text("baselines:\n  per_pipeline:\n    gpt2-moe:\n      hpa:\n"
                    "        targt: 2\n      per_pipeline: {}\n    bert-moe: 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.lines() == [
        f"{path}:5: baselines.per_pipeline.gpt2-moe.hpa.targt: unknown key 'targt'; expected "
        "one of metric, target, vertical",
        f"{path}:6: baselines.per_pipeline.gpt2-moe.per_pipeline: 'per_pipeline' cannot be "
        "nested in an overlay",
        f"{path}:7: baselines.per_pipeline.bert-moe: must be a mapping, got int",
    ]


@pytest.mark.parametrize("text, expected", [
    ("", None),
    ("- 1\n", "{f}: must be a mapping, got list"),
    ("control: [\n", "{f}:2: YAML syntax error: expected the node content, but found "
                     "'<stream end>'"),
    ("metrics:\n  queries: {calls: 3}\n", "{f}:2: metrics.queries: entry 'calls': must be a "
                                          "string, got 3"),
])
def test_malformed_configs(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    if expected is None:
        assert load_settings(path) == Settings()
        return
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.lines() == [expected.replace("{f}", str(path))]


def test_the_packaged_per_pipeline_picks_are_checked_and_name_example_pipelines(
        tmp_path, monkeypatch):
    from smoelib.pipeline.topology import build_dag
    from smoelib.settings import experiment

    names = {build_dag(p).name for p in (ROOT / "examples" / "pipelines").glob("*.yml")}
    assert set(Settings().baselines.per_pipeline) <= names
    bad = tmp_path / "tuned.yaml"
    bad.write_text("baselines:\n  hpa: {}\n  per_pipeline:\n    x:\n      hpa: {target: -1}\n")
    monkeypatch.setattr(experiment, "TUNED", bad)
    with pytest.raises(ConfigError) as info:
        experiment.tuned_defaults.__wrapped__()
    assert info.value.lines() == [
        f"{bad}:2: baselines.hpa: only baselines.per_pipeline belongs here",
        f"{bad}:5: baselines.per_pipeline.x.hpa.target: must be > 0, got -1"]
