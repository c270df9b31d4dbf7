"""A seconds-long ``smoe tune`` and its refusal of evaluation data."""

from __future__ import annotations

import yaml

from smoelib.cli import main
from smoelib.settings import load_settings


def test_tune_prints_trials_and_writes_a_loadable_block(tmp_path, capsys):
    out = tmp_path / "best.yaml"
    code = main(["tune", "--policy", "openfaas", "--pipeline", "examples/pipelines/bert-moe.yml",
                 "--traces", "conv-train", "--seeds", "1", "--duration", "15", "--budget", "2",
                 "--write", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    # two draws and the settings in force (unless a draw is them)
    assert text.count("cost ") in (2, 3) and "best (" in text
    current = load_settings(None).baselines.openfaas
    assert f"{{'mode': '{current.mode}', 'target': {current.target}," in text
    block = yaml.safe_load(out.read_text())
    assert set(block["baselines"]["openfaas"]) >= {"mode", "target"}
    load_settings(block)  # the block is a valid config.yaml


def test_tune_refuses_evaluation_data(capsys):
    code = main(["tune", "--policy", "hpa", "--pipeline", "examples/pipelines/bert-moe.yml",
                 "--traces", "conv-eval", "--seeds", "1000", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "conv-eval" in err and "seed 1000" in err


def test_tune_per_pipeline_writes_each_pick_under_its_name_and_merges(tmp_path, capsys):
    out = tmp_path / "tuned.yaml"
    out.write_text("# picks\nbaselines:\n  hpa:\n    target: 2.0\n")  # the merge adds to it
    code = main(["tune", "--policy", "openfaas", "--pipeline",
                 "examples/pipelines/bert-moe.yml,examples/pipelines/gpt2-moe.yml",
                 "--traces", "conv-train", "--seeds", "1", "--duration", "10", "--budget", "1",
                 "--per-pipeline", "--write", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "best for bert-moe (" in text and "best for gpt2-moe (" in text
    assert out.read_text().startswith("# picks\n")
    block = yaml.safe_load(out.read_text())
    assert block["baselines"]["hpa"] == {"target": 2.0}
    assert set(block["baselines"]["per_pipeline"]) == {"bert-moe", "gpt2-moe"}
    settings = load_settings(block)
    picked = block["baselines"]["per_pipeline"]["gpt2-moe"]["openfaas"]["target"]
    assert settings.for_pipeline("gpt2-moe").baselines.openfaas.target == picked
