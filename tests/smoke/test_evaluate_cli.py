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


def test_evaluate_runs_a_random_pipeline_it_names_by_seed(tmp_path, capsys):
    code = main(["evaluate", "--pipelines", "random:1001", "--traces", "conv-eval",
                 "--policies", "queueing,smoe", "--seeds", "1000", "--duration", "20", "--out",
                 str(tmp_path), "--no-progress"])
    assert code == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert {r["pipeline"] for r in runs} == {"random-1001"} and len(runs) == 2
    assert all(r["requests"] > 0 for r in runs)


def test_evaluate_bad_random_pipeline_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["evaluate", "--pipelines", "random:x", "--traces", "conv-eval", "--policies",
                 "hpa", "--seeds", "1", "--duration", "10", "--out", str(tmp_path),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "random:SEED" in err[0]
