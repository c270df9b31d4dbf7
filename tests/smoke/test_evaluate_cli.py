"""A seconds-long ``smoe evaluate`` and its bad-input path."""

from __future__ import annotations

import json

from smoelib.cli import main


def test_evaluate_writes_results_table_and_plots(tmp_path, capsys):
    code = main(["evaluate", "--pipelines", "examples/pipelines/bert-moe.yml", "--traces",
                 "spike", "--policies", "hpa,queueing,floor", "--seeds", "1,2", "--duration",
                 "20", "--out", str(tmp_path), "--jobs", "2", "--no-progress"])
    assert code == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert len(runs) == 6 and {r["policy"] for r in runs} == {"hpa", "queueing", "floor"}
    table = (tmp_path / "results.md").read_text()
    assert "| hpa | physical | 1.000 ± 0.000 |" in table and "Acceptance checks" in table
    for png in ("cost_vs_p95.png", "attainment_over_time.png", "hottest_replicas.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_evaluate_unknown_policy_exits_2(tmp_path, capsys):
    code = main(["evaluate", "--pipelines", "examples/pipelines/bert-moe.yml", "--traces",
                 "spike", "--policies", "nope", "--seeds", "1", "--duration", "10", "--out",
                 str(tmp_path), "--no-progress"])
    assert code == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
